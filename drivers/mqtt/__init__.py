"""MQTT southbound: pure payload/topic parsing (`parse`), pydantic config (`config`), and one
paho-based driver per broker connection (`driver`, the only module importing paho)."""
