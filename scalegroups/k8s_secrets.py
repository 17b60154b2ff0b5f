"""`scalegroups k8s-secrets`: the Secrets the k8s/ stack needs, with fresh random values.

k8s/ holds no credential: every value is made here, on the user's machine, and goes straight to
the cluster (`scalegroups k8s-secrets | kubectl apply -f -`). Each program reads its Secret as
files (a mounted Secret volume), never as environment variables:

- `postgres-credentials` (`password`): PostgreSQL, through `POSTGRES_PASSWORD_FILE`;
- `prefect-server-settings` (`profiles.toml`): the Prefect server, through `PREFECT_PROFILES_PATH`
  (database password, `PREFECT_SERVER_API_AUTH_STRING`);
- `prefect-client-settings` (`profiles.toml`): Jobs, Dask and Ray workers (`PREFECT_API_AUTH_STRING`);
- `ray-auth` (`token`): Ray head, workers and Jobs, through `RAY_AUTH_TOKEN_PATH`;
- `dask-{scheduler,worker,client}-tls` (`tls.crt`, `tls.key`, `ca.crt`): Dask's `--tls-*` options
  and, for clients, `DASK_DISTRIBUTED__COMM__TLS__*`.

The Dask certificates come from a CA made for this one run; its private key is never written
anywhere, so nobody can issue another certificate the cluster trusts. Running the command again
makes a new set of everything: see the README for replacing one credential.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
import sys
from typing import Any

import yaml

NAMESPACE = "scalegroups"
#: basic-auth user of the Prefect API (the password part is random)
API_USER = "scalegroups"
#: the Prefect profile inside the generated profiles.toml files
PROFILE_NAME = "scalegroups"
DEFAULT_DAYS = 365
LABELS = {"app.kubernetes.io/part-of": "scalegroups"}

# role -> (extended key usages, DNS names besides the role's own name)
_DASK_ROLES = {
    "scheduler": ("server+client", ["dask-scheduler"]),
    "worker": ("server+client", ["dask-worker"]),
    "client": ("client", []),
}


def _toml_string(value: str) -> str:
    """A TOML basic string. JSON's escapes for an ASCII string are valid TOML escapes."""
    return json.dumps(value, ensure_ascii=True)


def _profiles_toml(settings: dict[str, str], purpose: str) -> str:
    lines = [
        f"# Prefect settings for {purpose}, read through PREFECT_PROFILES_PATH.",
        "# Made by `scalegroups k8s-secrets`; environment variables still win over these values.",
        f"active = {_toml_string(PROFILE_NAME)}",
        "",
        f"[profiles.{PROFILE_NAME}]",
    ]
    lines += [f"{key} = {_toml_string(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def namespace_manifest(namespace: str = NAMESPACE) -> dict[str, Any]:
    """The namespace, as k8s/00-namespace.yaml has it (first in the output, so that the Secrets can be
    applied to a fresh cluster); its labels make the API server enforce the "restricted" Pod
    Security Standard."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": namespace,
            "labels": {
                **LABELS,
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
                "pod-security.kubernetes.io/warn": "restricted",
                "pod-security.kubernetes.io/audit": "restricted",
            },
        },
    }


def _secret(name: str, namespace: str, data: dict[str, str], type_: str = "Opaque") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(LABELS)},
        "type": type_,
        "stringData": data,
    }


def _service_names(service: str, namespace: str) -> list[str]:
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


def dask_certificates(namespace: str = NAMESPACE, days: int = DEFAULT_DAYS) -> dict[str, dict[str, str]]:
    """PEM certificate, key and CA certificate for each Dask role, signed by a throw-away CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)  # 5 min: clock skew

    def name(common_name: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "scalegroups"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name(f"scalegroups Dask CA ({namespace})")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode()

    issued: dict[str, dict[str, str]] = {}
    for role, (usage, services) in _DASK_ROLES.items():
        key = ec.generate_private_key(ec.SECP256R1())
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if usage == "server+client":
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        dns = [n for service in services for n in _service_names(service, namespace)] or [f"dask-{role}"]
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(f"dask-{role}"))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        issued[role] = {
            "tls.crt": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "tls.key": key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
            "ca.crt": ca_pem,
        }
    return issued


def generate(namespace: str = NAMESPACE, days: int = DEFAULT_DAYS) -> list[dict[str, Any]]:
    """Every Secret the k8s/ stack reads, with fresh random values."""
    db_password = secrets.token_urlsafe(32)
    auth_string = f"{API_USER}:{secrets.token_urlsafe(32)}"
    manifests = [
        _secret("postgres-credentials", namespace, {"password": db_password}),
        _secret(
            "prefect-server-settings",
            namespace,
            {
                "profiles.toml": _profiles_toml(
                    {
                        "PREFECT_SERVER_DATABASE_PASSWORD": db_password,
                        "PREFECT_SERVER_API_AUTH_STRING": auth_string,
                        # the server's own background services use the API like any client
                        "PREFECT_API_AUTH_STRING": auth_string,
                    },
                    "the Prefect server",
                )
            },
        ),
        _secret(
            "prefect-client-settings",
            namespace,
            {"profiles.toml": _profiles_toml({"PREFECT_API_AUTH_STRING": auth_string}, "Prefect API clients")},
        ),
        _secret("ray-auth", namespace, {"token": secrets.token_hex(32)}),
    ]
    for role, files in dask_certificates(namespace, days).items():
        manifests.append(_secret(f"dask-{role}-tls", namespace, files, "kubernetes.io/tls"))
    return manifests


def _literal_blocks(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(str, _literal_blocks)


def render(manifests: list[dict[str, Any]]) -> str:
    """Multi-document YAML that `kubectl apply -f -` reads."""
    return yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False)


def cmd_k8s_secrets(args: argparse.Namespace) -> int:
    """Print the namespace and the Secret manifests of the k8s/ stack with fresh random values."""
    manifests = generate(args.namespace, args.days)
    sys.stdout.write(
        "# The namespace and the Secrets of the scalegroups k8s/ stack, made by `scalegroups k8s-secrets`.\n"
    )
    sys.stdout.write(render([namespace_manifest(args.namespace), *manifests]))
    print(
        f"scalegroups: {len(manifests)} Secrets for namespace {args.namespace!r} (Dask certificates valid "
        f"{args.days} days). Apply them once: applying a new set replaces every credential, and PostgreSQL "
        "keeps the password its database was created with (README: replacing a credential).",
        file=sys.stderr,
    )
    return 0


def add_command(commands: Any) -> None:
    """Register `k8s-secrets` on the `scalegroups` command's subparsers."""
    parser = commands.add_parser("k8s-secrets", help="print the k8s/ stack's Secrets with fresh random values")
    parser.add_argument("--namespace", default=NAMESPACE, help=f"namespace of the Secrets (default {NAMESPACE})")
    parser.add_argument(
        "--days", type=int, default=DEFAULT_DAYS, help=f"validity of the Dask certificates (default {DEFAULT_DAYS})"
    )
    parser.set_defaults(handler=cmd_k8s_secrets)
