"""awsiotsdk under its real endpoint name and default ports, for ``iot-harness sandbox``.

An unmodified device app hard-codes ``<prefix>-ats.iot.<region>.amazonaws.com`` and
leaves the ports to the SDK (443 for WebSockets and ALPN ``mqtt``, 8883 for X.509), and
awscrt resolves that name and fetches Cognito credentials from
``cognito-identity.<region>.amazonaws.com:443`` in C (aws-iot.md §3, §6). Only the
sandbox's private network and hosts file can serve those, so this runs every connection
of :mod:`client_awsiotsdk` with ``--real-name``: SigV4 with awscrt's Cognito provider,
the custom authorizer over ALPN ``mqtt`` and over WSS, and mTLS with the sandbox's thing
on 443 (ALPN ``x-amzn-mqtt-ca``) and on 8883::

    iot-harness sandbox --scenario scenarios/client-awsiotsdk.yaml -- \\
        python scenarios/clients/client_awsiotsdk_real_name.py
"""

from __future__ import annotations

import sys

from client_awsiotsdk import AUTHS, main

if __name__ == "__main__":
    sys.exit(main(["--real-name", *AUTHS]))
