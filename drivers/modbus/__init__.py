"""Modbus TCP and RTU: a pure codec, pure request planning, and one driver per connection."""
