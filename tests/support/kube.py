"""Fixtures: see tests/conftest.py (to be filled by its owner)."""
