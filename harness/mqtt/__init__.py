"""MQTT wire format (codec) and AWS IoT's MQTT semantics (rules). I/O-free."""
