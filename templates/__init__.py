"""Jinja templates for generated per-device modules."""
