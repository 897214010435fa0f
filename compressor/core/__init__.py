"""The bottom layer: errors, registries, typed config specs and atomic file IO.

Nothing here imports anything else of ``compressor``; every other package may import it.
"""
