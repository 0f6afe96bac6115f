"""Network guards: nothing in cnnvit may hang on a machine without network.

One place answers "is the network off by request?" and "does this host answer within N
seconds?". The second needs a thread: ``getaddrinfo`` ignores socket timeouts and can block for
long on a machine without DNS, so resolution and connection run in a daemon thread that is
simply abandoned when the time is up.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlsplit

OFFLINE_VARIABLES = ("CNNVIT_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = {"1", "on", "yes", "true"}


def offline_reason() -> str | None:
    """The environment variable that forbids network access, or None when it is allowed."""
    for var in OFFLINE_VARIABLES:
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return var
    return None


def unreachable(url: str, timeout: float) -> OSError | None:
    """None if ``url``'s host accepts a TCP connection within ``timeout`` s, else the error."""
    parts = urlsplit(url)
    if not parts.hostname:
        return OSError(f"no host in {url!r}")
    port = parts.port or (80 if parts.scheme == "http" else 443)
    outcome: list[OSError | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((parts.hostname, port), timeout=timeout):
                outcome.append(None)
        except OSError as err:
            outcome.append(err)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return TimeoutError(f"{parts.hostname} did not answer within {timeout:.1f} s")
    return outcome[0]
