"""Simulated devices and reference client apps that live in the harness's world."""
