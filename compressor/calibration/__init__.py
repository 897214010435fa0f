"""Calibration: activation statistics in one pass, histograms in at most one more, clipping methods,
and Distiller's stats YAML format."""
