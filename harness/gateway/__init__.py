"""The fake AWS IoT Core device gateway (WSS + SigV4 / custom auth, MQTT over mTLS)."""

from harness.gateway.server import Gateway, GatewayConfig, Thing

__all__ = ["Gateway", "GatewayConfig", "Thing"]
