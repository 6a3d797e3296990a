"""The optimization service (`evo serve`): REST + WebSocket API, dashboard, keys, audit.

- :mod:`evo.service.store`: API keys (hashed) and roles, the append-only audit log, the tenant
  job index, rate limits.
- :mod:`evo.service.specs` and :mod:`evo.service.jobs`: the request bodies and what the routes
  call (jobs on the :class:`~evo.agents.manager.OptimizationManager`, which survive a restart).
- :mod:`evo.service.app`: :class:`~evo.service.app.Service` and
  :func:`~evo.service.app.create_app` (FastAPI); :mod:`evo.service.server`: ``serve`` and
  ``running`` (uvicorn).

From a shell::

    evo serve --home ./svc --model openai/gpt-4o-mini     # prints an admin key on first start
    curl -H "Authorization: Bearer $KEY" http://127.0.0.1:8000/api/v1/optimizations

The store needs only the standard library; the app needs the ``service`` extra (fastapi,
uvicorn), loaded when :class:`Service`, :class:`ServiceConfig`, :func:`create_app`,
:func:`serve` or :func:`running` is first used from here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Service", "ServiceConfig", "create_app", "running", "serve"]

_FROM = {"Service": "app", "ServiceConfig": "app", "create_app": "app", "running": "server",
         "serve": "server"}


def __getattr__(name: str) -> Any:
    if name not in _FROM:
        raise AttributeError(f"module 'evo.service' has no attribute {name!r}")
    import importlib

    # deferred: heavy optional dependency (fastapi, uvicorn: the `service` extra)
    module = importlib.import_module(f"evo.service.{_FROM[name]}")
    return getattr(module, name)
