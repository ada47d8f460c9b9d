"""Encoders, heads, prompts and model bundles. Imports nothing from ``stream`` or ``training``."""
