"""Command-line applications' shared code (the scripts in apps/ are thin wrappers)."""
