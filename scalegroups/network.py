"""Fast reachability checks, so a wrong address fails in seconds instead of hanging.

Every check is bounded: a malformed address or URL is a `ConfigurationError` before anything is
tried; a host name lookup gets `CONNECT_TIMEOUT_S` like the connection itself (the system
resolver has no timeout of its own, so the lookup runs in a daemon thread that is given up on).
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from urllib.parse import SplitResult, urlsplit

from scalegroups.errors import ConfigurationError, UnreachableClusterError

CONNECT_TIMEOUT_S = 5.0
#: schemes a Dask scheduler or Ray cluster address may have (none means tcp)
CLUSTER_SCHEMES = frozenset({"tcp", "tls", "ray", "ws", "wss", "ucx"})
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return len(host) <= 253 and _HOST_NAME.fullmatch(host) is not None


def _split(text: str, shown: str) -> tuple[SplitResult, int | None]:
    try:
        parts = urlsplit(text)
        return parts, parts.port
    except ValueError as exc:
        raise ConfigurationError(f"cannot parse address {shown!r}: {exc}") from None


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    """Split `tcp://host:port`, `tls://...`, `ray://host:port` or `host:port` into host and port.

    Raises `ConfigurationError` for anything that is not such an address (unknown scheme, a path,
    spaces, a port out of range), so that it is reported at once rather than waited for.
    """
    text = address if "://" in address else f"tcp://{address}"
    parts, port = _split(text, address)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ConfigurationError(
            f"address {address!r} has scheme {parts.scheme!r}; expected one of "
            + ", ".join(sorted(CLUSTER_SCHEMES))
            + " (or host:port)"
        )
    host = parts.hostname
    if not host:
        raise ConfigurationError(f"address {address!r} has no host name")
    if not _valid_host(host):
        raise ConfigurationError(f"address {address!r}: {host!r} is not a host name or IP address")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError(f"address {address!r} must be [scheme://]host:port, without a path or user")
    return host, port or default_port


def parse_http_url(url: str, what: str = "URL") -> SplitResult:
    """Check that `url` is an absolute http(s) URL with a valid host and port, and return its parts."""
    parts, _ = _split(url, url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{what} {url!r} is not an http(s) URL; expected e.g. http://prefect-server:4200/api")
    if not parts.hostname or not _valid_host(parts.hostname):
        raise ConfigurationError(f"{what} {url!r} has no valid host name")
    return parts


def is_loopback(address: str) -> bool:
    """True if the address names this machine's loopback interface."""
    host, _ = split_host_port(address, 0)
    return is_loopback_host(host)


def is_loopback_host(host: str | None) -> bool:
    """True for `localhost` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def resolve(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> list[tuple]:
    """`socket.getaddrinfo` for TCP, given up after `timeout` seconds (raises `TimeoutError`)."""
    result: dict[str, object] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            result["value"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            result["error"] = exc
        finally:
            done.set()

    threading.Thread(target=lookup, name=f"scalegroups-lookup-{host}", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"the lookup of host name {host!r} did not answer within {timeout:.0f} s")
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]


def connect(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> socket.socket:
    """A TCP connection to `host:port`; name lookup and connection share one `timeout`."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in resolve(host, port, timeout):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock = socket.socket(family, kind, proto)
        sock.settimeout(remaining)
        try:
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or TimeoutError(f"no answer within {timeout:.0f} s")


def check_reachable(address: str, what: str, default_port: int, source: str) -> None:
    """Open and close one TCP connection to `address`, or raise `UnreachableClusterError`."""
    host, port = split_host_port(address, default_port)
    try:
        connect(host, port).close()
        return
    except socket.gaierror as exc:
        reason = f"host name {host!r} does not resolve ({exc.strerror})"
    except TimeoutError as exc:
        reason = str(exc) if "lookup" in str(exc) else f"no answer within {CONNECT_TIMEOUT_S:.0f} s"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    raise UnreachableClusterError(
        f"cannot reach the {what} at {address!r} (from {source}): {reason}. "
        f"Check that the {what} is running and the address is right, or unset it to start a "
        "local cluster."
    )


def wait_until(check: Callable[[], None], what: str, timeout: float, interval: float = 2.0) -> None:
    """Call `check` until it stops raising or `timeout` seconds pass (then raise the last error).

    A `ConfigurationError` from `check` is not waited on: it is raised at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except (OSError, UnreachableClusterError) as exc:
            if time.monotonic() >= deadline:
                raise UnreachableClusterError(f"{what} not ready after {timeout:.0f} s: {exc}") from None
        time.sleep(interval)


def api_ssl_context(cert_file: str | None = None, insecure_skip_verify: bool = False) -> ssl.SSLContext:
    """The TLS context Prefect's client uses: `PREFECT_API_SSL_CERT_FILE` (else certifi's bundle),
    or no verification at all with `PREFECT_API_TLS_INSECURE_SKIP_VERIFY`."""
    if insecure_skip_verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if not cert_file:
        import certifi

        cert_file = certifi.where()
    return ssl.create_default_context(cafile=cert_file)


def http_get(
    url: str,
    *,
    auth_string: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = CONNECT_TIMEOUT_S,
) -> int:
    """GET `url` within `timeout` seconds (name lookup included) and return the HTTP status.

    `auth_string` (`user:password`) is sent as HTTP basic authentication, like Prefect's
    `PREFECT_API_AUTH_STRING`. A certificate the context does not trust is a `ConfigurationError`.
    """
    parts = parse_http_url(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    sock = connect(parts.hostname or "", port, timeout)
    try:
        if parts.scheme == "https":
            context = ssl_context or api_ssl_context()
            try:
                sock = context.wrap_socket(sock, server_hostname=parts.hostname)
            except ssl.SSLCertVerificationError as exc:
                raise ConfigurationError(
                    f"the TLS certificate of {parts.scheme}://{parts.netloc} is not trusted ({exc.verify_message}); "
                    "set PREFECT_API_SSL_CERT_FILE to its CA certificate (or, for tests only, "
                    "PREFECT_API_TLS_INSECURE_SKIP_VERIFY=true)"
                ) from None
        connection = http.client.HTTPConnection(parts.hostname or "", port, timeout=timeout)
        connection.sock = sock
        headers = {"Accept": "application/json"}
        if auth_string:
            headers["Authorization"] = "Basic " + base64.b64encode(auth_string.encode()).decode()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        sock.close()


def check_http_ok(url: str, **kwargs: object) -> None:
    """GET `url` and raise `OSError` unless it answers 2xx (keyword arguments as `http_get`)."""
    status = http_get(url, **kwargs)  # type: ignore[arg-type]
    if not 200 <= status < 300:
        raise OSError(f"{url} answered HTTP {status}")


def check_api_credentials(api_url: str, auth_string: str | None, ssl_context: ssl.SSLContext | None) -> None:
    """Raise `ConfigurationError` if the Prefect API refuses our credentials (a read that needs them)."""
    status = http_get(api_url.rstrip("/") + "/admin/version", auth_string=auth_string, ssl_context=ssl_context)
    if status in (401, 403):
        if not auth_string:
            raise ConfigurationError(
                f"the Prefect API at {api_url} requires authentication (HTTP {status}): set "
                "PREFECT_API_AUTH_STRING to the server's user:password"
            )
        raise ConfigurationError(
            f"the Prefect API at {api_url} refused PREFECT_API_AUTH_STRING (HTTP {status}): it differs from "
            "the server's PREFECT_SERVER_API_AUTH_STRING"
        )
    if not 200 <= status < 300:
        raise OSError(f"{api_url}/admin/version answered HTTP {status}")
