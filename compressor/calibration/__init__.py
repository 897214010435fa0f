"""Calibration: activation statistics and histograms in one pass, clipping methods,
and Distiller's stats YAML format."""
