"""Scenario files used by the loader and expectation tests.

``README_EXAMPLE`` is the loader and expectation tests' version of the "Done when" scenario of
issue [scenarios] (the README shows scenarios/sigv4-credential-expiry.yaml itself): temporary
credentials live 2 s, the client must get new ones and reconnect within 5 s, and may not
storm the gateway with upgrades. ``EVERY_FIELD`` sets every section and most fields, so
a round trip covers the whole format.
"""

from __future__ import annotations

README_EXAMPLE = """\
# Temporary credentials that expire quickly (field-bugs.md FB-23): a correct client
# fetches new ones from Cognito and signs a new URL before it reconnects.
name: sigv4-credential-expiry
purpose: Cognito credentials live 2 s; after a drop the client refreshes and reconnects within 5 s

world:
  gateway:
    region: eu-west-1
    sni: require                  # AWS refuses connections without SNI
    limits:
      websocket_lifetime: 30      # AWS closes WebSockets after 24 h; here after 30 s
  identity_pools:
    - name: player
      allow_unauthenticated: true
      credential_lifetime: 2      # AWS: 1 h
      policies: [allow-all]

client:
  kind: app
  app: browser-player
  options:
    identity_pool: player
  known_failure:
    reason: reuses the URL signed with its first credentials after they expired
    ref: FB-23

faults:
  - name: cut
    at: 3                         # after the credentials expired
    action: drop-connection

expectations:
  - name: connected
    happens: {kind: mqtt.out, packet: CONNACK, return_code: 0}
    within: 2
  - name: refreshed
    after: cut
    happens: {kind: cognito.call, operation: GetCredentialsForIdentity, ok: true}
    within: 5
  - name: reconnected
    after: refreshed
    sequence:
      - {kind: ws.upgrade, status: 101}
      - {kind: mqtt.out, packet: CONNACK, return_code: 0}
    within: 5
  - never: {kind: auth.verdict, reason: token-expired}
    why: a client that signs with expired credentials loops on 403 (FB-23)
  - rate: ws.upgrade
    max: 3
    per: 1

timeout: 15
"""

EVERY_FIELD = """\
name: every-field
purpose: exercises every section of the format
world:
  gateway:
    region: eu-west-1
    endpoint_prefix: a1b2c3d4e5
    account_id: "210987654321"
    sni: require
    max_skew: 299.5
    accept_signed_token: true
    strict: true
    handshake_timeout: 2.5
    engine: mqtt://127.0.0.1:1883
    certificate: missing-intermediate
    limits:
      base: unlimited
      websocket_lifetime: 0.5
      keepalive_min: 1
      keepalive_max: null
      max_payload: 1024
  cognito: {enabled: true, certificate: expired}
  newcomer_defaults: false
  clock_offset: -301
  policies:
    subscribe-only: |
      {"Version": "2012-10-17",
       "Statement": [{"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "*"}]}
    connect-only:
      Version: "2012-10-17"
      Statement:
        - {Effect: Allow, Action: iot:Connect, Resource: "*"}
  identity_pools:
    - name: player
      pool_id: "eu-west-1:0a1b2c3d-0000-4000-8000-000000000001"
      allow_unauthenticated: false
      credential_lifetime: 0.75
      policies: [allow-all, subscribe-only]
      rate_limit: 5
      login_providers: [accounts.google.com]
    - name: empty
      policies: []
  authorizers:
    - name: cld-iot-credentials-lambda-authorizer
      token_key: token
      signing: true
      default: true
      status: ACTIVE
      decision: allow
      principal: dysonClient
      policies:
        - connect-only
        - {"Version": "2012-10-17",
           "Statement": [{"Effect": "Deny", "Action": "iot:*", "Resource": "*"}]}
      disconnect_after: 3
      refresh_after: null
    - {name: broken, signing: false, token_key: null, status: INACTIVE, decision: bad-response}
  things:
    - {name: fan-438m, certificate: good, policies: [connect-only]}
    - {name: old-device, certificate: expired}
  dyson:
    cloud:
      enabled: true
      certificate: wrong-host
      credential_lifetime: 2
      client_id_per_call: false
      require_version_call: true
      rate_limit: 10
      otp_min_interval: 30
    devices:
      - serial: 9RJ-US-UAA8845A
        product_type: 438M
        name: Bedroom fan
        local: true
        cloud: true
        env_with_state: true
        quirks:
          stale_session_rst: {window: 1.5}
          session_cap: {max_sessions: 2}
          foreign_subscribe_drop: true
          hash_wildcard: {mode: refuse}
          syn_fragile: false
          mute: true
        manifest:
          connectedConfiguration: {mqtt: {remoteBrokerType: mqtts}}
      - serial: NK6-EU-MHA0000A
        product_type: 527
        root_topic: 527K
clients:
  - name: reference
    kind: app
    app: dyson-app
    options: {device: 9RJ-US-UAA8845A, authorizer: cld-iot-credentials-lambda-authorizer}
  - name: old-paho
    kind: paho
    requires: ["paho-mqtt<2"]
    options: {identity_pool: player, transport: websockets, keepalive: 30}
    known_failure: {reason: "sends Host with :443 (FB-28)"}
  - kind: command
    argv: [node, client.js, --verbose]
    env: {DEBUG: "mqtt*", RETRIES: "3"}
faults:
  - {name: refuse, at: 0, action: refuse-upgrade, status: 403, count: 2}
  - {on: {kind: mqtt.in, packet: CONNECT}, nth: 2, action: delay-connack, delay: 0.25, count: null}
  - {at: 1.5, action: rotate-certificate, certificate: untrusted-ca, target: dyson-api, duration: 2}
  - {at: 2, action: latency, latency: 0.1, jitter: 0.02, direction: both, toxicity: 0.5,
     target: "device:9RJ-US-UAA8845A", duration: null}
  - {at: 2, action: timeout, target: cognito, duration: 5}
  - {at: 3, action: clock-offset, seconds: -400}
  - {at: 3, action: cognito-error, error: TooManyRequestsException, operation: GetId}
  - {name: deny, on: fault.fired, action: authorizer-deny, authorizer: broken}
  - {at: 4, action: legacy-tls-only, max_version: TLSv1}
  - {at: 4, action: dyson-api-error, status: 503, path: /v3/manifest}
expectations:
  - name: first-connack
    happens: {kind: mqtt.out, packet: CONNACK, return_code: {in: [0, 5]}}
    within: 5
    why: the client must connect at all
  - happens: {kind: ws.upgrade, status: {ge: 400, lt: 500}, conn: {exists: true}}
    after: refuse
    times: 2
  - happens: {kind: "auth.*", reason: {regex: "^signature-", ne: signature-missing}}
    at_least: 0
    at_most: 3
  - name: steps
    after: {kind: fault.fired, fault: refuse-upgrade}
    sequence:
      - ws.upgrade
      - {kind: mqtt., packet: {not_in: [PINGREQ, PINGRESP]}}
    within: 10
  - never: {kind: rule.violation, explain: {contains: QoS 2}, reason: null}
    after: first-connack
  - rate: {kind: cognito.call, t: {gt: 1}}
    max: 2
    per: 0.5
    after: deny
    within: 30
timeout: 60
"""
