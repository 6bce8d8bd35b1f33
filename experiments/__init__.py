"""Experiment scripts: one file each, run as ``python -m experiments.NAME``."""
