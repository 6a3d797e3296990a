"""Bridges to other frameworks. Each integration may use any layer below :mod:`evo.api`; nothing
in evo's core imports an integration."""
