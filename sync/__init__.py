"""Uplinks that read the store's outbox and forward to the central platform (issue 5 onwards)."""
