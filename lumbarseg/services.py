"""Local server processes (tritonserver, Orthanc, MONAI Label): the readiness wait they share."""

from __future__ import annotations

import time
from pathlib import Path


def log_tail(path: Path | None, chars: int = 3000) -> str:
    """The end of a server's log file, on a new line, for an error message ("" without one)."""
    if path is None or not Path(path).is_file():
        return ""
    return "\n" + Path(path).read_text(errors="replace")[-chars:]


def await_ready(name: str, server, *, timeout: float, poll: float, error: type[Exception],
                log: Path | None = None) -> None:
    """Wait until ``server.ready()``. ``server`` has ``process`` (a Popen), ``url``, ``ready()``
    and ``stop()``. Raises ``error`` with the tail of ``log`` if the process exits first, or when
    ``timeout`` passes (stopping the server then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise error(f"{name} exited with code {server.process.returncode} while starting{log_tail(log)}")
        if server.ready():
            return
        time.sleep(poll)
    server.stop()
    raise error(f"{name} not ready on {server.url} after {timeout:.0f} s{log_tail(log)}")
