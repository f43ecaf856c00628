"""Store-and-forward uplinks to the central platform: one outbox, one cursor per uplink.

`base` defines what every transport implements (`Sender`) and what it is handed
(`OutboxBatch`, `UplinkContext`); `runner` moves batches from the store's outbox to a sender
and acks them; `mqtt` and `influx` are the two transports.
"""
