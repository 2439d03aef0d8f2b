"""iot-harness: test MQTT clients of AWS IoT Core offline.

The pure core (``harness.auth``, ``harness.mqtt``) decides what AWS IoT would accept; the
asyncio shells (``harness.gateway``, ``harness.cognito``) move bytes on loopback.
"""

__version__ = "0.1.0"
