"""Test helpers for users who extend evo: a scripted task that runs in milliseconds and needs no
model, and (:mod:`evo.testing.conformance`) the checks every optimizer must pass."""
