"""Recipes: safe YAML loading with line numbers, validation, and building the scheduler."""
