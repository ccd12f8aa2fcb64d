"""Experiment entry points (CLI sub-apps) built on the library."""
