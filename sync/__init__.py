"""Uplinks to the central platform: store-and-forward telemetry, one outbox, a cursor each.

`base` defines what every transport implements (`Sender`) and what it is handed
(`OutboxBatch`, `UplinkContext`); `runner` moves batches from the store's outbox to a sender
and acks them; `mqtt` and `influx` are the two transports.
"""
