"""Authentication and authorization as AWS IoT does it: SigV4, custom authorizers, policies.

Everything here is I/O-free: inputs are strings, bytes and an explicit ``now``.
"""
