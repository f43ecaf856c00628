"""Test tools that are not fixtures: the fault-injecting TCP proxy (`faultproxy`)."""
