"""The simulated Dyson device, its local broker, its cloud link and the fake Dyson cloud.

The reference is ``../shared/specs/dyson.md``; every module cites the section it implements.
"""
