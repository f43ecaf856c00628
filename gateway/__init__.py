"""Millrace: an edge gateway for factory and farm equipment."""

__version__ = "0.1.0"
