"""Benchmarks of the harness against reference brokers, measured side by side (issue [bench]).

``python -m bench.run [--quick]`` runs all five measurements in one invocation and writes
``bench/results/latest.json`` and ``latest.md``. :mod:`bench.loadgen` is the load generator
(WSS with SigV4 or custom auth, MQTT over mTLS, plain TCP/WS for the references);
:mod:`bench.gateway_proc` hosts the server under test in its own process, so its memory
and CPU are its own. Nothing here is a timed assertion: tests only smoke-run the load
generator.
"""
