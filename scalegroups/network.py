"""Fast reachability checks, so a wrong address fails in seconds instead of hanging."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

from scalegroups.errors import ConfigurationError, UnreachableClusterError

CONNECT_TIMEOUT_S = 5.0


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    """Split `tcp://host:port`, `ray://host:port` or `host:port` into host and port."""
    text = address if "://" in address else f"tcp://{address}"
    try:
        parts = urlsplit(text)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigurationError(f"cannot parse address {address!r}: {exc}") from None
    if not host:
        raise ConfigurationError(f"address {address!r} has no host name")
    return host, port or default_port


def is_loopback(address: str) -> bool:
    """True if the address names this machine's loopback interface."""
    host, _ = split_host_port(address, 0)
    return host in {"localhost", "::1"} or host.startswith("127.")


def check_reachable(address: str, what: str, default_port: int, source: str) -> None:
    """Open and close one TCP connection to `address`, or raise `UnreachableClusterError`."""
    host, port = split_host_port(address, default_port)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return
    except socket.gaierror as exc:
        reason = f"host name {host!r} does not resolve ({exc.strerror})"
    except TimeoutError:
        reason = f"no answer within {CONNECT_TIMEOUT_S:.0f} s"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    raise UnreachableClusterError(
        f"cannot reach the {what} at {address!r} (from {source}): {reason}. "
        f"Check that the {what} is running and the address is right, or unset it to start a "
        "local cluster."
    )


def wait_until(check: Callable[[], None], what: str, timeout: float, interval: float = 2.0) -> None:
    """Call `check` until it stops raising or `timeout` seconds pass (then raise the last error)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except (OSError, UnreachableClusterError) as exc:
            if time.monotonic() >= deadline:
                raise UnreachableClusterError(f"{what} not ready after {timeout:.0f} s: {exc}") from None
        time.sleep(interval)


def check_http_ok(url: str) -> None:
    """GET `url` and raise `OSError` unless it answers 2xx."""
    with urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT_S) as response:
        if not 200 <= response.status < 300:
            raise OSError(f"{url} answered HTTP {response.status}")
