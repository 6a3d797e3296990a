"""Running the service: :func:`serve` (uvicorn in the foreground, what ``evo serve`` calls) and
:func:`running` (uvicorn in a background thread on a free loopback port, for tests and
benchmarks).

Shutdown is graceful: on SIGTERM or SIGINT uvicorn stops accepting, the WebSocket streams end,
then the job workers stop (a running job goes back to the queue and resumes from its journal at
the next start) and the stores close. A SIGKILL loses nothing either: the next start recovers
the jobs whose lease nobody holds.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from evo.service.app import Service, ServiceConfig, create_app

__all__ = ["Running", "RedactKeys", "running", "serve"]

GRACE_S = 5.0  # how long a shutdown waits for open requests and streams
# An idle keep-alive connection is closed after this long. uvicorn's 5 s made a loaded server
# (1,000 submissions from 200 pooled connections) close connections a client had just written
# a request on (ReadError at the client after ~5 s); 75 s is nginx's default.
KEEP_ALIVE_S = 75


class RedactKeys(logging.Filter):
    """Hides API key secrets in log lines (a browser's WebSocket sends its key as ``?key=``,
    which uvicorn would log with the path)."""

    _pattern = re.compile(r"(key=)[^&\s\"']+|evo_k-[0-9a-f]{12}_[A-Za-z0-9_-]{43}")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(self._redact(a) if isinstance(a, str) else a
                                for a in (record.args if isinstance(record.args, tuple)
                                          else (record.args,)))
        if isinstance(record.msg, str):
            record.msg = self._redact(record.msg)
        return True

    def _redact(self, text: str) -> str:
        return self._pattern.sub(lambda m: (m.group(1) or "") + "***", text)


def _redact_logs() -> None:
    for name in ("uvicorn.access", "uvicorn.error", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in logger.filters):
            logger.addFilter(RedactKeys())


class _Server(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM / SIGINT ends :meth:`run` normally once the
    server has shut down (uvicorn raises the signal again, which for SIGTERM ends the process
    before the workers are stopped and the stores closed)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        before = {sig: signal.signal(sig, self.handle_exit)
                  for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)


def _uvicorn(service: Service, *, host: str, port: int, log_level: str = "info",
             access_log: bool = True) -> uvicorn.Server:
    _redact_logs()
    config = uvicorn.Config(create_app(service), host=host, port=port, log_level=log_level,
                            access_log=access_log, lifespan="on", ws="websockets-sansio",
                            timeout_graceful_shutdown=GRACE_S, timeout_keep_alive=KEEP_ALIVE_S)
    return _Server(config)


def serve(config: ServiceConfig, lm: Any, *, reflection_lm: Any = None, cache: Any = True,
          log_level: str = "info") -> None:
    """Serve until SIGTERM or SIGINT, then stop the workers and close the stores."""
    service = Service(config, lm=lm, reflection_lm=reflection_lm, cache=cache)
    try:
        _uvicorn(service, host=config.host, port=config.port, log_level=log_level).run()
    finally:
        service.close()


@dataclass
class Running:
    """A service running in a background thread: its base URL and its :class:`Service`."""

    url: str
    service: Service
    server: uvicorn.Server


@contextmanager
def running(service: Service, *, timeout: float = 20.0, log_level: str = "warning"
            ) -> Iterator[Running]:
    """Serve ``service`` on a free 127.0.0.1 port in a daemon thread for the block; then stop
    the server (the service itself is the caller's to close)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _uvicorn(service, host="127.0.0.1", port=port, log_level=log_level,
                      access_log=False)
    server.config.timeout_graceful_shutdown = 2.0
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="evo-service", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the service did not start on 127.0.0.1:{port} in {timeout} s")
        time.sleep(0.01)
    try:
        yield Running(f"http://127.0.0.1:{port}", service, server)
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)
        sock.close()
