"""Pytest plugin: placeholder until its owner fills it in."""
