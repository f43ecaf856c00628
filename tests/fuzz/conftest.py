"""The fuzz suite's input counts are printed by the top-level tests/conftest.py, which is
the one conftest a pytest-xdist controller loads (it collects nothing itself)."""
