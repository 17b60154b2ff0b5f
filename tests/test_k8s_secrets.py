"""`scalegroups k8s-secrets`: fresh values each run, consistent between the Secrets that share one,
readable by the programs that use them, and Dask certificates that make mutual TLS work."""

from __future__ import annotations

import socket
import ssl
import threading
import tomllib

import yaml
from helpers import REPO, run_python

from scalegroups import k8s_secrets

EXPECTED = {
    "postgres-credentials",
    "prefect-server-settings",
    "prefect-client-settings",
    "ray-auth",
    "dask-scheduler-tls",
    "dask-worker-tls",
    "dask-client-tls",
}


def _by_name(manifests):
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Secret"}


def _profile(secret):
    data = tomllib.loads(secret["stringData"]["profiles.toml"])
    return data["profiles"][data["active"]]


def test_command_prints_every_secret_with_fresh_values():
    first, _ = run_python(["-m", "scalegroups.cli", "k8s-secrets"])
    second, _ = run_python(["-m", "scalegroups.cli", "k8s-secrets", "--namespace", "other"])
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "Apply them once" in first.stderr
    one = _by_name(yaml.safe_load_all(first.stdout))
    two = _by_name(yaml.safe_load_all(second.stdout))
    assert set(one) == set(two) == EXPECTED
    assert {m["metadata"]["namespace"] for m in one.values()} == {"scalegroups"}
    assert {m["metadata"]["namespace"] for m in two.values()} == {"other"}
    first_doc = next(yaml.safe_load_all(first.stdout))
    assert first_doc["kind"] == "Namespace" and first_doc["metadata"]["name"] == "scalegroups"
    for name in EXPECTED:
        for key, value in one[name]["stringData"].items():
            if key != "ca.crt" or name == "dask-client-tls":
                assert value != two[name]["stringData"][key], f"{name}/{key} repeated between runs"


def test_the_namespace_is_the_one_k8s_defines():
    """`k8s-secrets | kubectl apply` creates the namespace on a fresh cluster: the same as k8s/'s."""
    defined = yaml.safe_load((REPO / "k8s" / "00-namespace.yaml").read_text())
    assert k8s_secrets.namespace_manifest() == defined


def test_shared_values_agree_and_are_strong():
    secrets = _by_name(k8s_secrets.generate())
    server, client = _profile(secrets["prefect-server-settings"]), _profile(secrets["prefect-client-settings"])
    password = secrets["postgres-credentials"]["stringData"]["password"]
    assert server["PREFECT_SERVER_DATABASE_PASSWORD"] == password and len(password) >= 40
    assert server["PREFECT_SERVER_API_AUTH_STRING"] == server["PREFECT_API_AUTH_STRING"]
    assert client == {"PREFECT_API_AUTH_STRING": server["PREFECT_SERVER_API_AUTH_STRING"]}
    user, _, secret_part = client["PREFECT_API_AUTH_STRING"].partition(":")
    assert user == "scalegroups" and len(secret_part) >= 40
    assert len(secrets["ray-auth"]["stringData"]["token"]) == 64
    for role in ("scheduler", "worker", "client"):
        tls = secrets[f"dask-{role}-tls"]
        assert tls["type"] == "kubernetes.io/tls" and set(tls["stringData"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert "PREFECT_SERVER_DATABASE_PASSWORD" not in client  # a client never sees the database password


def test_prefect_reads_the_generated_profiles(tmp_path):
    secrets = _by_name(k8s_secrets.generate())
    path = tmp_path / "profiles.toml"
    path.write_text(secrets["prefect-server-settings"]["stringData"]["profiles.toml"])
    path.chmod(0o440)  # like the mounted Secret: read-only
    code = (
        "from prefect.settings import get_current_settings as g; s = g(); "
        "print(s.api.auth_string.get_secret_value()); print(s.server.api.auth_string.get_secret_value()); "
        "print(s.server.database.connection_url.get_secret_value())"
    )
    out, _ = run_python(
        ["-c", code],
        env={
            "PREFECT_PROFILES_PATH": str(path),
            "PREFECT_SERVER_DATABASE_DRIVER": "postgresql+asyncpg",
            "PREFECT_SERVER_DATABASE_HOST": "postgres",
            "PREFECT_SERVER_DATABASE_PORT": "5432",
            "PREFECT_SERVER_DATABASE_USER": "prefect",
            "PREFECT_SERVER_DATABASE_NAME": "prefect",
        },
    )
    assert out.returncode == 0, out.stderr
    auth = _profile(secrets["prefect-server-settings"])["PREFECT_API_AUTH_STRING"]
    password = secrets["postgres-credentials"]["stringData"]["password"]
    assert out.stdout.splitlines() == [auth, auth, f"postgresql+asyncpg://prefect:{password}@postgres:5432/prefect"]


def _files(folder, files):
    for key, value in files.items():
        (folder / key).write_text(value)
    return folder


def _handshake(server_files, client_files) -> str:
    """Mutual TLS as Dask does it (certificates required both ways, no host name check)."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(server_files / "ca.crt"))
    server.load_cert_chain(server_files / "tls.crt", server_files / "tls.key")
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(client_files / "ca.crt"))
    client.check_hostname = False
    if (client_files / "tls.crt").exists():
        client.load_cert_chain(client_files / "tls.crt", client_files / "tls.key")
    left, right = socket.socketpair()
    outcome: dict[str, str] = {}

    def serve():
        try:
            with server.wrap_socket(left, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            outcome["server"] = type(exc).__name__

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(right) as tls:
            received = tls.recv(2)
            return received.decode() if received else "closed"
    except (ssl.SSLError, OSError) as exc:
        return f"refused ({type(exc).__name__})"
    finally:
        thread.join(10)


def test_dask_certificates_allow_mutual_tls_only_within_one_set(tmp_path):
    one = k8s_secrets.dask_certificates()
    other = k8s_secrets.dask_certificates()
    folders = {}
    for label, issued in (("one", one), ("other", other)):
        for role, files in issued.items():
            folder = tmp_path / label / role
            folder.mkdir(parents=True)
            folders[label, role] = _files(folder, files)
    assert _handshake(folders["one", "scheduler"], folders["one", "client"]) == "ok"
    assert _handshake(folders["one", "worker"], folders["one", "scheduler"]) == "ok"
    assert _handshake(folders["one", "scheduler"], folders["one", "worker"]) == "ok"
    assert _handshake(folders["one", "scheduler"], folders["other", "client"]).startswith(("refused", "closed"))
    no_cert = tmp_path / "no-cert"
    no_cert.mkdir()
    (no_cert / "ca.crt").write_text(one["client"]["ca.crt"])
    assert _handshake(folders["one", "scheduler"], no_cert).startswith(("refused", "closed"))
    # the client certificate is for clients only: it cannot serve as a scheduler
    assert _handshake(folders["one", "client"], folders["one", "worker"]).startswith("refused")
