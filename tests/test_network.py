"""Address checks and `scalegroups wait`: malformed input fails at once, every wait is bounded,
and the Prefect API's authentication and TLS settings are honoured."""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import socket
import ssl
import threading
import time

import pytest
from helpers import closed_port, run_python

from scalegroups import ConfigurationError, UnreachableClusterError, network

# A configuration error must not wait: measured 2-3 s on a quiet machine (the CLI's imports), 7-9 s
# with the 2 cores at load 12. The bound is far below any --timeout these tests give.
NO_WAIT_S = 20


def wait_cli(env: dict[str, str], timeout: float = 600):
    started = time.monotonic()
    out, _ = run_python(["-m", "scalegroups.cli", "wait", "--timeout", str(timeout)], env=env, timeout=120)
    return out, time.monotonic() - started


@pytest.mark.parametrize(
    "env, message",
    [
        (
            {"PREFECT_API_URL": "prefect-server:4200/api"},
            "PREFECT_API_URL 'prefect-server:4200/api' is not an http(s) URL",
        ),
        ({"PREFECT_API_URL": "http://prefect server:4200/api"}, "has no valid host name"),
        ({"PREFECT_API_URL": "http://prefect-server:99999/api"}, "Port out of range"),
        (
            {"SCALEGROUPS_RUNNER": "dask", "SCALEGROUPS_ADDRESS": "http://dask-scheduler:8786"},
            "address 'http://dask-scheduler:8786' has scheme 'http'",
        ),
        (
            {"SCALEGROUPS_RUNNER": "dask", "SCALEGROUPS_ADDRESS": "dask scheduler:8786"},
            "'dask scheduler' is not a host name",
        ),
        (
            {"SCALEGROUPS_RUNNER": "ray", "SCALEGROUPS_ADDRESS": "ray//ray-head:10001"},
            "must be [scheme://]host:port",
        ),
    ],
    ids=["no-scheme", "space-in-host", "port-range", "dask-http", "dask-space", "ray-path"],
)
def test_wait_reports_a_malformed_url_or_address_at_once(env, message):
    out, took = wait_cli(env)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scalegroups: error: ") and message in lines[0], out.stderr
    assert took < NO_WAIT_S


def test_host_name_lookup_is_bounded(monkeypatch):
    """A resolver that never answers costs CONNECT_TIMEOUT_S, not forever."""
    release = threading.Event()
    real = socket.getaddrinfo

    def hanging(host, *args, **kwargs):
        if host == "hangs.example":
            release.wait(120)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    monkeypatch.setattr(network, "CONNECT_TIMEOUT_S", 1.0)
    try:
        started = time.monotonic()
        with pytest.raises(UnreachableClusterError, match="lookup of host name 'hangs.example' did not answer"):
            network.check_reachable("tcp://hangs.example:8786", "Dask scheduler", 8786, "test")
        with pytest.raises(TimeoutError, match="did not answer"):
            network.http_get("http://hangs.example:4200/api/ready", timeout=1.0)
        assert time.monotonic() - started < 10
    finally:
        release.set()


def test_address_syntax():
    assert network.split_host_port("tls://dask-scheduler:8786", 1) == ("dask-scheduler", 8786)
    assert network.split_host_port("ray-head", 6379) == ("ray-head", 6379)
    assert network.split_host_port("[::1]:8786", 1) == ("::1", 8786)
    for bad in ("tcp://:8786", "tcp://user@h:1", "h:1?x=2", "inproc://h"):
        with pytest.raises(ConfigurationError):
            network.split_host_port(bad, 1)


def test_loopback_addresses_are_told_from_others():
    for address in ("127.0.0.1:8786", "tcp://localhost:8786", "[::1]:8786", "127.3.2.1"):
        assert network.is_loopback(address), address
    for address in ("10.0.0.5:8786", "tcp://dask-scheduler:8786", "127.example.com:1", "[::2]:1"):
        assert not network.is_loopback(address), address
    assert not network.is_loopback_host(None)


class FakeApi(http.server.BaseHTTPRequestHandler):
    """/api/ready answers without credentials (like Prefect's probes); everything else wants basic auth."""

    auth_string = "scalegroups:s3cret"
    seen: list[str | None] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        FakeApi.seen.append(self.headers.get("Authorization"))
        expected = "Basic " + base64.b64encode(self.auth_string.encode()).decode()
        ok = self.path == "/api/ready" or self.headers.get("Authorization") == expected
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeApi.seen = []
    yield server
    server.shutdown()
    server.server_close()


def test_wait_sends_the_auth_string_and_reports_a_refusal(fake_api):
    url = f"http://127.0.0.1:{fake_api.server_address[1]}/api"
    out, took = wait_cli({"PREFECT_API_URL": url})
    assert out.returncode == 2 and "requires authentication (HTTP 401)" in out.stderr, out.stderr
    assert took < NO_WAIT_S
    out, _ = wait_cli({"PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": "scalegroups:wrong"})
    assert out.returncode == 2 and "refused PREFECT_API_AUTH_STRING (HTTP 401)" in out.stderr, out.stderr
    FakeApi.seen = []
    out, _ = wait_cli({"PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": FakeApi.auth_string})
    assert out.returncode == 0, out.stderr
    assert f"Prefect API {url} ready (authenticated)" in out.stderr
    assert FakeApi.seen[-1] == "Basic " + base64.b64encode(FakeApi.auth_string.encode()).decode()


def _localhost_certificate(folder):
    """A CA and a certificate for 127.0.0.1 signed by it, as PEM files in `folder`."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return folder / "ca.pem"


def test_wait_honours_prefect_tls_settings(fake_api, tmp_path):
    ca = _localhost_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    fake_api.socket = context.wrap_socket(fake_api.socket, server_side=True)
    url = f"https://127.0.0.1:{fake_api.server_address[1]}/api"
    auth = {"PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": FakeApi.auth_string}

    out, took = wait_cli(auth)
    assert out.returncode == 2 and "is not trusted" in out.stderr and "PREFECT_API_SSL_CERT_FILE" in out.stderr
    assert took < NO_WAIT_S
    out, _ = wait_cli({**auth, "PREFECT_API_SSL_CERT_FILE": str(ca)})
    assert out.returncode == 0, out.stderr
    out, _ = wait_cli({**auth, "PREFECT_API_TLS_INSECURE_SKIP_VERIFY": "true"})
    assert out.returncode == 0, out.stderr


def test_wait_gives_up_on_a_silent_cluster_after_its_timeout():
    out, took = wait_cli({"SCALEGROUPS_RUNNER": "dask", "SCALEGROUPS_ADDRESS": f"tls://127.0.0.1:{closed_port()}"}, 3)
    assert out.returncode == 2 and "not ready after 3 s" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
