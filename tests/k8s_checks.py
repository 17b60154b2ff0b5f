"""Static checks of k8s/: strict schemas at a current Kubernetes version, cross-references, and the
security review's rules.

    python tests/k8s_checks.py k8s/          # prints one line per problem, exit 1 if any

Each problem names the file, the object (Kind/name) and the field. Checked:

- references: workload selectors vs their pod labels; Service selectors vs pod templates, and
  targetPorts vs declared container ports; ConfigMap/Secret references and keys (the Secrets are
  those `scalegroups k8s-secrets` makes); every container has an explicit command; ConfigMap keys
  are variables scalegroups or Prefect read; service addresses in ConfigMaps and in
  clusters/k8s.yaml name a Service and one of its ports;
- pod security: the namespace enforces the "restricted" Pod Security Standard; every container
  and init container runs with seccomp RuntimeDefault, a uid >= 10000 (the image's user for the
  scalegroups image; for postgres the conditions under which its image runs as any uid), no
  privilege escalation, all capabilities dropped, a read-only root filesystem with writable
  volumes where the programs write (/tmp, PREFECT_HOME, RAY_TMPDIR, PostgreSQL's run directory);
  no service account token unless the pod has its own bound ServiceAccount;
- credentials: no Secret values in the folder, no Secret as environment variables, no literal
  credential; mounted Secrets exist with the keys used, and the server-only ones are mounted by
  their component only;
- authentication: the Prefect server reads its auth string from its Secret and probes only the
  unauthenticated health endpoints; every Prefect client has the client auth string; Dask is
  mutual TLS everywhere; every Ray process and Ray client uses token authentication;
- probes: readiness and a distinct liveness probe on every long-running container; no replicas
  where a HorizontalPodAutoscaler owns the count; checkov skips only for CKV_K8S_43/15, with a reason;
- network: the NetworkPolicies, evaluated as a cluster enforces them, allow exactly the
  connections the stack makes (addresses in env, ConfigMaps, commands and the profile, plus the
  engines' internal paths in ENGINE_PATHS) and DNS for pods that connect anywhere; nothing else.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

KUBERNETES_VERSION = "1.32"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster than the pure-Python loader
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


@dataclass
class Manifest:
    path: Path
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.doc.get("kind", "?")

    @property
    def name(self) -> str:
        return self.doc.get("metadata", {}).get("name", "?")

    @property
    def namespace(self) -> str:
        return self.doc.get("metadata", {}).get("namespace", "default")

    def where(self) -> str:
        return f"{self.path.name}: {self.kind}/{self.name}"


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)

    def add(self, manifest: Manifest, field_path: str, message: str) -> None:
        self.problems.append(f"{manifest.where()}: {field_path}: {message}")


def load(folder: Path) -> list[Manifest]:
    """Every YAML document of the folder's top level (what `kubectl apply -f folder` reads)."""
    manifests = []
    for path in sorted(folder.glob("*.y*ml")):
        for doc in yaml.load_all(path.read_text(), Loader=_LOADER):
            if doc:
                manifests.append(Manifest(path, doc))
    return manifests


def pod_spec(manifest: Manifest) -> dict[str, Any] | None:
    spec = manifest.doc.get("spec", {})
    if manifest.kind in WORKLOADS:
        return spec.get("template", {}).get("spec")
    return spec if manifest.kind == "Pod" else None


def pod_labels(manifest: Manifest) -> dict[str, str]:
    return manifest.doc.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {}) or {}


def containers(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group) or []):
            found.append((f"spec.template.spec.{group}[{index}]({container.get('name')})", container))
    return found


def check_schemas(manifests: list[Manifest], report: Report) -> None:
    import kubernetes_validate

    for manifest in manifests:
        try:
            kubernetes_validate.validate(manifest.doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path) or "(top level)"
            report.add(manifest, path, f"schema {KUBERNETES_VERSION}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            report.add(manifest, "apiVersion", f"no {KUBERNETES_VERSION} schema for {manifest.doc.get('apiVersion')}")


def _keys(manifest: Manifest) -> set[str]:
    return set(manifest.doc.get("data") or {}) | set(manifest.doc.get("stringData") or {})


def check_references(manifests: list[Manifest], report: Report) -> None:
    by_kind: dict[tuple[str, str, str], Manifest] = {(m.kind, m.namespace, m.name): m for m in manifests}
    namespaces = {m.namespace for m in manifests if pod_spec(m) is not None}
    for name, data in generated_secrets().items():  # the Secrets `scalegroups k8s-secrets` makes
        for namespace in namespaces:
            secret = {"kind": "Secret", "metadata": {"name": name, "namespace": namespace}, "stringData": data}
            by_kind.setdefault(("Secret", namespace, name), Manifest(Path("k8s-secrets"), secret))
    for manifest in manifests:
        spec = pod_spec(manifest)
        if spec is None:
            continue
        if manifest.kind != "Job":
            selector = manifest.doc["spec"].get("selector", {}).get("matchLabels", {})
            labels = pod_labels(manifest)
            if any(labels.get(k) != v for k, v in selector.items()):
                report.add(manifest, "spec.selector.matchLabels", f"{selector} does not match the pod labels {labels}")
        for where, container in containers(spec):
            if not container.get("command"):
                report.add(manifest, f"{where}.command", "missing: every container needs an explicit command")
            for index, source in enumerate(container.get("envFrom") or []):
                for kind, ref_key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    ref = source.get(ref_key)
                    if ref and (kind, manifest.namespace, ref.get("name")) not in by_kind:
                        report.add(manifest, f"{where}.envFrom[{index}]", f"{kind} {ref.get('name')!r} not found")
            for env in container.get("env") or []:
                value_from = env.get("valueFrom") or {}
                for kind, ref_key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    ref = value_from.get(ref_key)
                    if not ref:
                        continue
                    target = by_kind.get((kind, manifest.namespace, ref.get("name")))
                    if target is None:
                        report.add(manifest, f"{where}.env.{env.get('name')}", f"{kind} {ref.get('name')!r} not found")
                    elif ref.get("key") not in _keys(target):
                        report.add(
                            manifest,
                            f"{where}.env.{env.get('name')}",
                            f"key {ref.get('key')!r} not in {kind} {ref.get('name')!r} (keys: {sorted(_keys(target))})",
                        )


def check_services(manifests: list[Manifest], report: Report) -> None:
    for service in (m for m in manifests if m.kind == "Service"):
        selector = service.doc.get("spec", {}).get("selector") or {}
        if not selector:
            continue
        targets = [
            m
            for m in manifests
            if pod_spec(m) is not None
            and m.namespace == service.namespace
            and all(pod_labels(m).get(k) == v for k, v in selector.items())
        ]
        if not targets:
            report.add(service, "spec.selector", f"{selector} matches no pod template in namespace {service.namespace}")
            continue
        declared = {}
        for target in targets:
            for _, container in containers(pod_spec(target) or {}):
                for port in container.get("ports") or []:
                    declared[port.get("name")] = port.get("containerPort")
                    declared[port.get("containerPort")] = port.get("containerPort")
        for index, port in enumerate(service.doc["spec"].get("ports") or []):
            target_port = port.get("targetPort", port.get("port"))
            if target_port not in declared:
                report.add(
                    service,
                    f"spec.ports[{index}].targetPort",
                    f"{target_port!r} is not a port declared by the selected containers ({sorted(map(str, declared))})",
                )


def known_variables() -> set[str]:
    """Environment variables scalegroups and Prefect read."""
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_valid_setting_names

    from scalegroups.settings import EnvSettings

    ours = {f"SCALEGROUPS_{name.upper()}" for name in EnvSettings.model_fields}
    ours |= {"SCALEGROUPS_CACHE_SETTINGS"}
    return ours | _get_valid_setting_names(Settings)


def _service_ports(manifests: list[Manifest]) -> dict[str, set[int]]:
    ports: dict[str, set[int]] = {}
    for service in (m for m in manifests if m.kind == "Service"):
        ports[service.name] = {int(p["port"]) for p in service.doc["spec"].get("ports") or []}
    return ports


def check_addresses(manifests: list[Manifest], report: Report, profile: Path | None) -> None:
    services = _service_ports(manifests)
    known = known_variables()

    def check(manifest: Manifest, where: str, value: str, default_port: int) -> None:
        text = value if "://" in value else f"tcp://{value}"
        parts = urlsplit(text)
        host = (parts.hostname or "").split(".")[0]
        port = parts.port or default_port
        if host not in services:
            report.add(manifest, where, f"{value!r} names no Service (Services: {sorted(services)})")
        elif port not in services[host]:
            report.add(
                manifest, where, f"{value!r}: Service {host} has no port {port} (ports: {sorted(services[host])})"
            )

    for config in (m for m in manifests if m.kind == "ConfigMap"):
        for key, value in (config.doc.get("data") or {}).items():
            if key.startswith(("SCALEGROUPS_", "PREFECT_")) and key not in known:
                report.add(config, f"data.{key}", "no such variable: scalegroups and Prefect do not read it")
            if key in {"PREFECT_API_URL", "SCALEGROUPS_ADDRESS"}:
                check(config, f"data.{key}", str(value), 80)
    if profile is not None and profile.exists():
        data = yaml.safe_load(profile.read_text()) or {}
        pseudo = Manifest(profile, {"kind": "Profile", "metadata": {"name": profile.stem}})
        for engine, default_port in (("dask", 8786), ("ray", 10001)):
            address = (data.get(engine) or {}).get("address")
            if address and address != "local":
                check(pseudo, f"{engine}.address", address, default_port)


# --------------------------------------------------------------------------------------------
# Pod security: the Pod Security Standard "restricted", plus high UIDs, read-only root
# filesystems with writable emptyDirs where programs write, and no service account tokens.
# --------------------------------------------------------------------------------------------
HIGH_UID = 10000
#: volume types the "restricted" Pod Security Standard allows
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
#: variables naming a directory the program writes to: each must lie in a writable volume
WRITABLE_DIR_VARIABLES = ("PREFECT_HOME", "RAY_TMPDIR", "TMPDIR")
#: uids of the postgres image's own user (alpine, debian)
POSTGRES_IMAGE_UIDS = {70, 999}


def _env(container: dict[str, Any]) -> dict[str, str]:
    """Literal env values of a container (valueFrom entries are left out)."""
    return {e["name"]: str(e["value"]) for e in container.get("env") or [] if "value" in e}


def _config_values(container: dict[str, Any], manifests: list[Manifest], namespace: str) -> dict[str, str]:
    """The variables a container gets from ConfigMaps (envFrom) plus its literal env values."""
    by_name = {m.name: m for m in manifests if m.kind == "ConfigMap" and m.namespace == namespace}
    values: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = (source.get("configMapRef") or {}).get("name")
        if ref in by_name:
            values.update({k: str(v) for k, v in (by_name[ref].doc.get("data") or {}).items()})
    values.update(_env(container))
    return values


def _volumes(spec: dict[str, Any], manifest: Manifest) -> dict[str, dict[str, Any]]:
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for claim in manifest.doc.get("spec", {}).get("volumeClaimTemplates") or []:
        volumes[claim["metadata"]["name"]] = {"name": claim["metadata"]["name"], "persistentVolumeClaim": {}}
    return volumes


def _writable_mounts(container: dict[str, Any], volumes: dict[str, dict[str, Any]]) -> list[str]:
    return [
        m["mountPath"]
        for m in container.get("volumeMounts") or []
        if not m.get("readOnly")
        and any(kind in volumes.get(m["name"], {}) for kind in ("emptyDir", "persistentVolumeClaim", "ephemeral"))
    ]


def _under(path: str, folders: list[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


def _dockerfile_uid(folder: Path) -> int | None:
    dockerfile = folder.parent / "Dockerfile"
    if not dockerfile.exists():
        return None
    found = re.search(r"useradd\b[^\n]*--uid\s+(\d+)", dockerfile.read_text())
    return int(found.group(1)) if found else None


def check_pod_security(manifests: list[Manifest], report: Report, folder: Path) -> None:
    namespaces = {m.name: m for m in manifests if m.kind == "Namespace"}
    image_uid = _dockerfile_uid(folder)
    for manifest in manifests:
        spec = pod_spec(manifest)
        if spec is None:
            continue
        base = "spec.template.spec"
        namespace = namespaces.get(manifest.namespace)
        if namespace is None:
            report.add(manifest, "metadata.namespace", f"namespace {manifest.namespace!r} is not defined in the folder")
        elif (namespace.doc["metadata"].get("labels") or {}).get("pod-security.kubernetes.io/enforce") != "restricted":
            report.add(
                namespace,
                "metadata.labels",
                "pod-security.kubernetes.io/enforce must be 'restricted' (the API server then refuses other pods)",
            )
        if spec.get("automountServiceAccountToken") is not False:
            account = spec.get("serviceAccountName")
            bound = account and any(
                m.kind == "RoleBinding"
                and any(
                    s.get("kind") == "ServiceAccount" and s.get("name") == account for s in m.doc.get("subjects") or []
                )
                for m in manifests
            )
            if not bound:
                report.add(
                    manifest,
                    f"{base}.automountServiceAccountToken",
                    "must be false: the pod does not use the Kubernetes API (or give it its own ServiceAccount "
                    "with a Role)",
                )
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                report.add(manifest, f"{base}.{flag}", "not allowed by the restricted Pod Security Standard")
        pod_context = spec.get("securityContext") or {}
        if pod_context.get("runAsNonRoot") is not True:
            report.add(manifest, f"{base}.securityContext.runAsNonRoot", "must be true")
        pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type")
        if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
            report.add(manifest, f"{base}.securityContext.seccompProfile.type", f"{pod_seccomp!r}: use RuntimeDefault")
        volumes = _volumes(spec, manifest)
        for name, volume in volumes.items():
            kinds = set(volume) - {"name"}
            if not kinds <= RESTRICTED_VOLUMES:
                report.add(manifest, f"{base}.volumes.{name}", f"{sorted(kinds)}: not allowed by restricted")
            mode = (volume.get("secret") or {}).get("defaultMode")
            if mode is not None and mode & 0o007:
                report.add(manifest, f"{base}.volumes.{name}.secret.defaultMode", f"{mode:#o}: readable by others")
        for where, container in containers(spec):
            context = container.get("securityContext") or {}
            uid = context.get("runAsUser", pod_context.get("runAsUser"))
            gid = context.get("runAsGroup", pod_context.get("runAsGroup"))
            if not isinstance(uid, int) or uid < HIGH_UID:
                report.add(manifest, f"{where}.securityContext.runAsUser", f"{uid!r}: run as a uid >= {HIGH_UID}")
            if not isinstance(gid, int) or gid == 0:
                report.add(manifest, f"{where}.securityContext.runAsGroup", f"{gid!r}: set a non-root group")
            if context.get("runAsNonRoot") is False:
                report.add(manifest, f"{where}.securityContext.runAsNonRoot", "must not be false")
            seccomp = (context.get("seccompProfile") or {}).get("type") or pod_seccomp
            if seccomp not in ("RuntimeDefault", "Localhost"):
                report.add(manifest, f"{where}.securityContext.seccompProfile", "missing: use type RuntimeDefault")
            if context.get("allowPrivilegeEscalation") is not False:
                report.add(manifest, f"{where}.securityContext.allowPrivilegeEscalation", "must be false")
            if context.get("privileged"):
                report.add(manifest, f"{where}.securityContext.privileged", "must not be true")
            capabilities = context.get("capabilities") or {}
            if "ALL" not in (capabilities.get("drop") or []):
                report.add(manifest, f"{where}.securityContext.capabilities.drop", "must contain ALL")
            if capabilities.get("add"):
                report.add(manifest, f"{where}.securityContext.capabilities.add", "no capability is needed")
            if context.get("readOnlyRootFilesystem") is not True:
                report.add(manifest, f"{where}.securityContext.readOnlyRootFilesystem", "must be true")
            for index, port in enumerate(container.get("ports") or []):
                if port.get("hostPort"):
                    report.add(manifest, f"{where}.ports[{index}].hostPort", "not allowed by restricted")
            _check_writable_paths(manifest, where, container, volumes, report)
            image = str(container.get("image", ""))
            if image.startswith("scalegroups:") and image_uid is not None and uid != image_uid:
                report.add(
                    manifest,
                    f"{where}.securityContext.runAsUser",
                    f"{uid!r}: the scalegroups image's user is uid {image_uid} (Dockerfile)",
                )
            if image.startswith("postgres:"):
                _check_postgres_user(manifest, where, container, pod_context, volumes, report)


def _check_writable_paths(
    manifest: Manifest, where: str, container: dict[str, Any], volumes: dict[str, dict[str, Any]], report: Report
) -> None:
    writable = _writable_mounts(container, volumes)
    if "/tmp" not in writable:
        report.add(manifest, f"{where}.volumeMounts", "no writable volume at /tmp (the root filesystem is read-only)")
    env = _env(container)
    command = [str(a) for a in container.get("command") or []]
    needed = []
    if command[:1] in (["prefect"], ["scalegroups"]) or "PREFECT_API_URL" in env or container.get("envFrom"):
        needed.append("PREFECT_HOME")  # Prefect writes its home (UI build, local state)
    if command[:2] == ["ray", "start"]:
        needed.append("RAY_TMPDIR")  # Ray's sessions, sockets and spilled objects
    for name in needed:
        if name not in env:
            report.add(manifest, f"{where}.env.{name}", "missing: point it at a writable emptyDir")
    for name in WRITABLE_DIR_VARIABLES:
        if name in env and not _under(env[name], writable):
            report.add(
                manifest, f"{where}.env.{name}", f"{env[name]!r} is not in a writable volume (mounts: {writable})"
            )


def _check_postgres_user(
    manifest: Manifest,
    where: str,
    container: dict[str, Any],
    pod_context: dict[str, Any],
    volumes: dict[str, dict[str, Any]],
    report: Report,
) -> None:
    """The official postgres image runs as an arbitrary uid only under conditions its docs give."""
    uid = (container.get("securityContext") or {}).get("runAsUser", pod_context.get("runAsUser"))
    if uid in POSTGRES_IMAGE_UIDS:
        return
    env = _env(container)
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
    data = next((p for p, n in mounts.items() if "persistentVolumeClaim" in volumes.get(n, {})), None)
    pgdata = env.get("PGDATA", "/var/lib/postgresql/data")
    if data is None or not pgdata.startswith(data.rstrip("/") + "/"):
        report.add(
            manifest,
            f"{where}.env.PGDATA",
            f"{pgdata!r} must be a subdirectory of the data volume ({data}) so that initdb creates it "
            f"owned by uid {uid} with mode 0700",
        )
    if pod_context.get("fsGroup") is None:
        report.add(manifest, "spec.template.spec.securityContext.fsGroup", f"needed: uid {uid} must write the volume")
    if pod_context.get("fsGroupChangePolicy") != "OnRootMismatch":
        report.add(
            manifest,
            "spec.template.spec.securityContext.fsGroupChangePolicy",
            "must be OnRootMismatch: a recursive change makes PGDATA group-writable and PostgreSQL refuses it",
        )
    writable = _writable_mounts(container, volumes)
    if "/var/run/postgresql" not in writable:
        report.add(manifest, f"{where}.volumeMounts", "no writable volume at /var/run/postgresql (socket, lock file)")


# --------------------------------------------------------------------------------------------
# Credentials: no Secret values in the folder, Secrets read as files, each by whom needs it.
# --------------------------------------------------------------------------------------------
CREDENTIAL_NAME = re.compile(r"(PASSWORD|PASSWD|TOKEN|SECRET|AUTH_STRING|API_KEY|PRIVATE_KEY)$")
#: Secrets only one component may mount (the others are for every client of the stack)
SECRET_READERS = {
    "postgres-credentials": {"postgres"},
    "prefect-server-settings": {"prefect-server"},
    "dask-scheduler-tls": {"dask-scheduler"},
    "dask-worker-tls": {"dask-worker"},
}


@cache
def generated_secrets() -> dict[str, dict[str, str]]:
    """Name and data of every Secret `scalegroups k8s-secrets` makes (one sample run)."""
    from scalegroups.k8s_secrets import generate

    return {s["metadata"]["name"]: dict(s["stringData"]) for s in generate()}


def _secret_mounts(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[str, set[str] | None]]:
    """mountPath -> (Secret name, keys projected or None for all) for a container's Secret volumes."""
    secrets_by_volume = {v["name"]: v["secret"] for v in spec.get("volumes") or [] if "secret" in v}
    found = {}
    for mount in container.get("volumeMounts") or []:
        secret = secrets_by_volume.get(mount["name"])
        if secret:
            items = secret.get("items")
            found[mount["mountPath"]] = (secret["secretName"], {i["path"] for i in items} if items else None)
    return found


def check_credentials(manifests: list[Manifest], report: Report) -> None:
    made = generated_secrets()
    for manifest in manifests:
        if manifest.kind == "Secret" and (manifest.doc.get("data") or manifest.doc.get("stringData")):
            report.add(
                manifest,
                "data",
                "credentials do not belong in the repository: `scalegroups k8s-secrets` makes them",
            )
        if manifest.kind == "ConfigMap":
            for key in manifest.doc.get("data") or {}:
                if CREDENTIAL_NAME.search(key):
                    report.add(manifest, f"data.{key}", "looks like a credential: keep it in a Secret, as a file")
        spec = pod_spec(manifest)
        if spec is None:
            continue
        component = pod_labels(manifest).get("app.kubernetes.io/name")
        for where, container in containers(spec):
            for index, source in enumerate(container.get("envFrom") or []):
                if "secretRef" in source:
                    report.add(manifest, f"{where}.envFrom[{index}]", "a Secret as environment variables: mount it")
            for env in container.get("env") or []:
                if "secretKeyRef" in (env.get("valueFrom") or {}):
                    report.add(manifest, f"{where}.env.{env['name']}", "a Secret as an environment variable: mount it")
                elif "value" in env and CREDENTIAL_NAME.search(env["name"]):
                    report.add(manifest, f"{where}.env.{env['name']}", "a credential written in the manifest")
            mounts = _secret_mounts(spec, container)
            for path, (secret, _) in mounts.items():
                if secret not in made:
                    report.add(
                        manifest, f"{where}.volumeMounts.{path}", f"Secret {secret!r} is not made by k8s-secrets"
                    )
                readers = SECRET_READERS.get(secret)
                if readers is not None and component not in readers:
                    report.add(
                        manifest, f"{where}.volumeMounts.{path}", f"Secret {secret!r} is only for {sorted(readers)}"
                    )
            values = [
                *(_env(container).items()),
                *(
                    (f"command[{i}]", str(a))
                    for i, a in enumerate([*(container.get("command") or []), *(container.get("args") or [])])
                ),
            ]
            for name, value in values:
                for path, (secret, items) in mounts.items():
                    if value.startswith(path.rstrip("/") + "/"):
                        key = value[len(path.rstrip("/")) + 1 :]
                        keys = items if items is not None else set(made.get(secret, {}))
                        if key not in keys:
                            report.add(
                                manifest,
                                f"{where}.{'env.' if not name.startswith('command') else ''}{name}",
                                f"{value!r}: Secret {secret!r} has no key {key!r} (keys: {sorted(keys)})",
                            )


# --------------------------------------------------------------------------------------------
# Authentication: every service that runs code or changes state wants credentials, and every
# client has them.
# --------------------------------------------------------------------------------------------
DASK_CLIENT_TLS = (
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT",
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY",
)
UNAUTHENTICATED_PREFECT_PATHS = {"/api/health", "/api/ready"}


def _profile_data(folder: Path, name: str | None) -> dict[str, Any]:
    path = folder.parent / "clusters" / f"{name}.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if name and path.exists() else {}


def _mounted_secret(spec: dict[str, Any], container: dict[str, Any], path: str) -> str | None:
    for mount_path, (secret, _) in _secret_mounts(spec, container).items():
        if path.startswith(mount_path.rstrip("/") + "/"):
            return secret
    return None


def check_authentication(manifests: list[Manifest], report: Report, folder: Path) -> None:
    made = generated_secrets()
    for manifest in manifests:
        spec = pod_spec(manifest)
        if spec is None:
            continue
        for where, container in containers(spec):
            command = [str(a) for a in container.get("command") or []]
            values = _config_values(container, manifests, manifest.namespace)
            env = _env(container)
            if command[:3] == ["prefect", "server", "start"]:
                profile = env.get("PREFECT_PROFILES_PATH", "")
                if _mounted_secret(spec, container, profile) != "prefect-server-settings":
                    report.add(
                        manifest,
                        f"{where}.env.PREFECT_PROFILES_PATH",
                        "the server must read PREFECT_SERVER_API_AUTH_STRING from Secret prefect-server-settings",
                    )
                for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                    path = ((container.get(kind) or {}).get("httpGet") or {}).get("path")
                    if path and path not in UNAUTHENTICATED_PREFECT_PATHS:
                        report.add(
                            manifest,
                            f"{where}.{kind}.httpGet.path",
                            f"{path!r} needs credentials; probes use {sorted(UNAUTHENTICATED_PREFECT_PATHS)}",
                        )
            elif "PREFECT_API_URL" in values:
                profile = env.get("PREFECT_PROFILES_PATH", "")
                if _mounted_secret(spec, container, profile) != "prefect-client-settings":
                    report.add(
                        manifest,
                        f"{where}.env.PREFECT_PROFILES_PATH",
                        "a Prefect API client needs PREFECT_API_AUTH_STRING: point PREFECT_PROFILES_PATH at the "
                        "mounted Secret prefect-client-settings",
                    )
            if command[:2] == ["dask", "scheduler"]:
                protocol = command[command.index("--protocol") + 1] if "--protocol" in command[:-1] else None
                if protocol != "tls":
                    report.add(manifest, f"{where}.command", "the scheduler must listen with --protocol tls")
            if command[:2] in (["dask", "scheduler"], ["dask", "worker"]):
                for option in ("--tls-ca-file", "--tls-cert", "--tls-key"):
                    if option not in command:
                        report.add(manifest, f"{where}.command", f"missing {option}: Dask traffic is mutual TLS")
                if command[1] == "worker" and not any(a.startswith("tls://") for a in command):
                    report.add(manifest, f"{where}.command", "the worker must reach the scheduler at a tls:// address")
            profile_data = _profile_data(folder, values.get("SCALEGROUPS_PROFILE"))
            flow_process = "SCALEGROUPS_PROFILE" in values and command[:2] != ["scalegroups", "wait"]
            ray_address = str((profile_data.get("ray") or {}).get("address") or "local")
            if command[:2] == ["ray", "start"] or (flow_process and ray_address != "local"):
                if env.get("RAY_AUTH_MODE") != "token":
                    report.add(manifest, f"{where}.env.RAY_AUTH_MODE", "must be token (Ray's token authentication)")
                if _mounted_secret(spec, container, env.get("RAY_AUTH_TOKEN_PATH", "")) != "ray-auth":
                    report.add(
                        manifest,
                        f"{where}.env.RAY_AUTH_TOKEN_PATH",
                        "must name the token in mounted Secret ray-auth",
                    )
            if flow_process:
                dask_address = str((profile_data.get("dask") or {}).get("address") or "")
                if dask_address.startswith("tls://"):
                    if str(env.get("DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION", "")).lower() != "true":
                        report.add(manifest, f"{where}.env.DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION", "must be true")
                    for name in DASK_CLIENT_TLS:
                        if _mounted_secret(spec, container, env.get(name, "")) != "dask-client-tls":
                            report.add(
                                manifest, f"{where}.env.{name}", "must name a file of mounted Secret dask-client-tls"
                            )
                elif dask_address:
                    report.add(
                        manifest, f"{where}.env.SCALEGROUPS_PROFILE", f"its dask.address {dask_address!r} is not tls://"
                    )
    server_profile = made.get("prefect-server-settings", {}).get("profiles.toml", "")
    if "PREFECT_SERVER_API_AUTH_STRING" not in server_profile:
        report.problems.append(
            "scalegroups k8s-secrets: prefect-server-settings sets no PREFECT_SERVER_API_AUTH_STRING"
        )


# --------------------------------------------------------------------------------------------
# Probes, replicas and checkov's skip annotations.
# --------------------------------------------------------------------------------------------
ALLOWED_CHECKOV_SKIPS = {"CKV_K8S_43", "CKV_K8S_15"}


def check_probes_and_skips(manifests: list[Manifest], report: Report) -> None:
    scaled = {
        (m.namespace, (m.doc["spec"].get("scaleTargetRef") or {}).get("name"))
        for m in manifests
        if m.kind == "HorizontalPodAutoscaler"
    }
    for manifest in manifests:
        for key, value in ((manifest.doc.get("metadata") or {}).get("annotations") or {}).items():
            if not key.startswith("checkov.io/skip"):
                continue
            check_id, sep, reason = str(value).partition("=")
            if check_id not in ALLOWED_CHECKOV_SKIPS:
                report.add(
                    manifest,
                    f"metadata.annotations.{key}",
                    f"{check_id}: only {sorted(ALLOWED_CHECKOV_SKIPS)} may be skipped",
                )
            if not sep or not reason.strip() or "\n" in reason or "=" in reason:
                report.add(manifest, f"metadata.annotations.{key}", "give a one-line reason: ID=reason (no '=')")
        if manifest.kind in {"Deployment", "StatefulSet"}:
            if (manifest.namespace, manifest.name) in scaled and "replicas" in manifest.doc["spec"]:
                report.add(manifest, "spec.replicas", "set, but a HorizontalPodAutoscaler owns the count")
            for where, container in containers(pod_spec(manifest) or {}):
                if where.split(".")[-1].startswith("initContainers"):
                    continue
                readiness, liveness = container.get("readinessProbe"), container.get("livenessProbe")
                if not readiness:
                    report.add(manifest, f"{where}.readinessProbe", "missing")
                if not liveness:
                    report.add(manifest, f"{where}.livenessProbe", "missing")
                elif liveness == readiness:
                    report.add(
                        manifest,
                        f"{where}.livenessProbe",
                        "a copy of the readiness probe: a restart should need a longer failure than unreadiness",
                    )


# --------------------------------------------------------------------------------------------
# Network: the NetworkPolicies allow exactly the connections the stack makes.
# --------------------------------------------------------------------------------------------
ALL_PORTS = None  # a port set meaning "every port"
TCP = "TCP"
DNS_PORTS = frozenset({(53, "UDP"), (53, "TCP")})
#: connections inside the engines that no manifest names (by app.kubernetes.io/name of both ends)
ENGINE_PATHS = {
    ("dask-scheduler", "dask-worker"): (frozenset({(8790, TCP), (8791, TCP)}), "Dask: scheduler to worker and nanny"),
    ("dask-worker", "dask-worker"): (frozenset({(8790, TCP)}), "Dask: data transfer between workers"),
    ("ray-head", "ray-worker"): (ALL_PORTS, "Ray: head to raylets and worker processes (ports chosen at run time)"),
    ("ray-worker", "ray-head"): (ALL_PORTS, "Ray: workers to GCS, raylet, object manager (ports chosen at run time)"),
    ("ray-worker", "ray-worker"): (ALL_PORTS, "Ray: object transfer and actor calls between workers"),
}
_ADDRESS = re.compile(r"(?:\b[a-z][a-z0-9+.-]*://)?\b([a-z0-9]([a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9.-]+)?:(\d{1,5})\b")
DNS = "kube-system/kube-dns"


@dataclass(frozen=True)
class Pod:
    """A pod template (or the cluster DNS) as the NetworkPolicy evaluation sees it."""

    key: str
    namespace: str
    labels: tuple[tuple[str, str], ...]
    manifest: Manifest | None = None

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def named_ports(manifest: Manifest | None) -> dict[str, int]:
    """Container port names of a workload's pods."""
    spec = pod_spec(manifest) if manifest else None
    return {
        port["name"]: port["containerPort"]
        for _, container in containers(spec or {})
        for port in container.get("ports") or []
        if port.get("name")
    }


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if (
            (operator == "In" and labels.get(key) not in values)
            or (operator == "NotIn" and labels.get(key) in values)
            or (operator == "Exists" and key not in labels)
            or (operator == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def _ports_union(a: frozenset | None, b: frozenset | None) -> frozenset | None:
    return ALL_PORTS if a is ALL_PORTS or b is ALL_PORTS else a | b


def _ports_intersection(a: frozenset | None, b: frozenset | None) -> frozenset | None:
    if a is ALL_PORTS:
        return b
    if b is ALL_PORTS:
        return a
    return a & b


def _ports_text(ports: frozenset | None) -> str:
    if ports is ALL_PORTS:
        return "every port"
    return ", ".join(f"{p}/{proto}" if proto != TCP else str(p) for p, proto in sorted(ports, key=str))


class NetworkModel:
    """Pods, namespaces and policies of a folder; `allowed(src, dst)` as a cluster enforces them."""

    def __init__(self, manifests: list[Manifest], report: Report) -> None:
        self.report = report
        self.namespace_labels = {
            m.name: {**(m.doc["metadata"].get("labels") or {}), "kubernetes.io/metadata.name": m.name}
            for m in manifests
            if m.kind == "Namespace"
        }
        self.namespace_labels.setdefault("kube-system", {"kubernetes.io/metadata.name": "kube-system"})
        self.pods = [
            Pod(f"{m.kind}/{m.name}", m.namespace, tuple(sorted(pod_labels(m).items())), m)
            for m in manifests
            if pod_spec(m) is not None
        ]
        self.dns = Pod(DNS, "kube-system", (("k8s-app", "kube-dns"),))
        self.policies = [m for m in manifests if m.kind == "NetworkPolicy"]
        for policy in self.policies:
            for direction, peers_key in (("ingress", "from"), ("egress", "to")):
                for index, rule in enumerate(policy.doc["spec"].get(direction) or []):
                    for peer in rule.get(peers_key) or []:
                        if "ipBlock" in peer:
                            report.add(
                                policy,
                                f"spec.{direction}[{index}].{peers_key}",
                                "ipBlock: connections go only to the namespace's pods and DNS",
                            )

    def _rule_ports(self, rule: dict[str, Any], destination: Pod) -> frozenset | None:
        if not rule.get("ports"):
            return ALL_PORTS
        named = named_ports(destination.manifest)
        found = set()
        for entry in rule["ports"]:
            port, protocol = entry.get("port"), entry.get("protocol", TCP)
            if port is None:
                return ALL_PORTS
            port = named.get(port, port) if isinstance(port, str) else port
            if isinstance(port, int):
                found.update((p, protocol) for p in range(port, int(entry.get("endPort", port)) + 1))
        return frozenset(found)

    def _peer_matches(self, peer: dict[str, Any], policy: Manifest, pod: Pod) -> bool:
        if "ipBlock" in peer:
            return False
        if "namespaceSelector" in peer:
            if not _selects(peer["namespaceSelector"], self.namespace_labels.get(pod.namespace, {})):
                return False
        elif pod.namespace != policy.namespace:
            return False
        return _selects(peer.get("podSelector", {}), pod.label_map)

    def _policies_for(self, pod: Pod, direction: str) -> list[Manifest]:
        kind = direction.capitalize()
        return [
            p
            for p in self.policies
            if p.namespace == pod.namespace
            and _selects(p.doc["spec"].get("podSelector", {}), pod.label_map)
            and kind in (p.doc["spec"].get("policyTypes") or ["Ingress"])
        ]

    def _side(self, selected: Pod, other: Pod, direction: str, destination: Pod) -> tuple[frozenset | None, list[str]]:
        policies = [] if selected.key == DNS else self._policies_for(selected, direction)
        if not policies:
            return ALL_PORTS, []
        ports: frozenset | None = frozenset()
        by = []
        peers_key = "from" if direction == "ingress" else "to"
        for policy in policies:
            for rule in policy.doc["spec"].get(direction) or []:
                peers = rule.get(peers_key)
                if peers is None or any(self._peer_matches(peer, policy, other) for peer in peers):
                    ports = _ports_union(ports, self._rule_ports(rule, destination))
                    by.append(f"{policy.kind}/{policy.name}")
        return ports, by

    def allowed(self, source: Pod, destination: Pod) -> tuple[frozenset | None, list[str]]:
        egress, by_egress = self._side(source, destination, "egress", destination)
        ingress, by_ingress = self._side(destination, source, "ingress", destination)
        return _ports_intersection(egress, ingress), sorted(set(by_egress + by_ingress))

    def unselected(self) -> list[tuple[Pod, str]]:
        return [(pod, d) for pod in self.pods for d in ("ingress", "egress") if not self._policies_for(pod, d)]


def used_paths(manifests: list[Manifest], folder: Path) -> dict[tuple[str, str], tuple[frozenset | None, list[str]]]:
    """(source pod, destination pod) -> ports and why, from addresses in the manifests and ENGINE_PATHS."""
    services = [m for m in manifests if m.kind == "Service"]
    workloads = [m for m in manifests if pod_spec(m) is not None]
    used: dict[tuple[str, str], tuple[frozenset | None, list[str]]] = {}

    def add(source: Manifest, target: Manifest, ports: frozenset | None, why: str) -> None:
        key = (f"{source.kind}/{source.name}", f"{target.kind}/{target.name}")
        old, reasons = used.get(key, (frozenset(), []))
        used[key] = (_ports_union(old, ports), list(dict.fromkeys([*reasons, why])))

    def address(source: Manifest, host: str, port: int, why: str) -> None:
        for service in services:
            if service.name != host or service.namespace != source.namespace:
                continue
            selector = service.doc["spec"].get("selector") or {}
            for entry in service.doc["spec"].get("ports") or []:
                if int(entry["port"]) != port:
                    continue
                for target in workloads:
                    if (
                        target.namespace == service.namespace
                        and selector
                        and _selects({"matchLabels": selector}, pod_labels(target))
                    ):
                        target_port = entry.get("targetPort", port)
                        if isinstance(target_port, str):
                            target_port = named_ports(target).get(target_port, target_port)
                        add(source, target, frozenset({(target_port, entry.get("protocol", TCP))}), why)

    default_ports = {"http": 80, "https": 443, "ray": 10001, "tls": 8786, "tcp": 8786}
    for source in workloads:
        for _, container in containers(pod_spec(source) or {}):
            values = _config_values(container, manifests, source.namespace)
            texts = [(f"${name}", value) for name, value in values.items()]
            texts += [("command", str(a)) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
            profile = _profile_data(folder, values.get("SCALEGROUPS_PROFILE"))
            for engine, default in (("dask", 8786), ("ray", 10001)):
                engine_address = str((profile.get(engine) or {}).get("address") or "")
                if engine_address and engine_address != "local":
                    if not re.search(r":\d+$", engine_address):
                        engine_address += f":{default}"
                    texts.append((f"profile {values['SCALEGROUPS_PROFILE']} {engine}.address", engine_address))
            if "PREFECT_SERVER_DATABASE_HOST" in values:
                host, port = values["PREFECT_SERVER_DATABASE_HOST"], values.get("PREFECT_SERVER_DATABASE_PORT", "5432")
                texts.append(("$PREFECT_SERVER_DATABASE_HOST/PORT", f"{host}:{port}"))
            for why, text in texts:
                for match in _ADDRESS.finditer(text):
                    address(source, match.group(1), int(match.group(3)), why)
                if text.startswith(("http://", "https://")) and not re.match(r"https?://[^/]+:\d+", text):
                    host = urlsplit(text).hostname or ""
                    address(source, host.split(".")[0], default_ports[text.split(":")[0]], why)
    by_name = {pod_labels(m).get("app.kubernetes.io/name"): m for m in workloads}
    for (source_name, target_name), (ports, why) in ENGINE_PATHS.items():
        if source_name in by_name and target_name in by_name:
            add(by_name[source_name], by_name[target_name], ports, why)
    return used


def check_network(manifests: list[Manifest], report: Report, folder: Path) -> None:
    model = NetworkModel(manifests, report)
    for pod, direction in model.unselected():
        report.add(pod.manifest, "network", f"no NetworkPolicy selects this pod for {direction}: everything is open")
    used = used_paths(manifests, folder)
    senders = {source for (source, _), (ports, _) in used.items() if ports is ALL_PORTS or ports}
    for source in model.pods:
        for destination in [*model.pods, model.dns]:
            if destination is model.dns:
                wanted, why = (DNS_PORTS if source.key in senders else frozenset()), ["name lookups"]
            else:
                wanted, why = used.get((source.key, destination.key), (frozenset(), []))
            allowed, by = model.allowed(source, destination)
            missing = (wanted is not ALL_PORTS and allowed is not ALL_PORTS and wanted - allowed) or (
                wanted is ALL_PORTS and allowed is not ALL_PORTS
            )
            extra = (allowed is ALL_PORTS and wanted is not ALL_PORTS) or (
                allowed is not ALL_PORTS and wanted is not ALL_PORTS and allowed - wanted
            )
            target = destination.key
            if missing:
                blocked = wanted if wanted is ALL_PORTS or allowed is ALL_PORTS else wanted - allowed
                report.add(
                    source.manifest,
                    "network",
                    f"connects to {target} on {_ports_text(blocked)} ({'; '.join(why)}) but the NetworkPolicies "
                    "block it",
                )
            if extra:
                surplus = allowed if allowed is ALL_PORTS or wanted is ALL_PORTS else allowed - wanted
                report.add(
                    source.manifest,
                    "network",
                    f"NetworkPolicies ({', '.join(by) or 'none'}) allow connections to {target} on "
                    f"{_ports_text(surplus)}, which the stack does not use",
                )


def check_folder(folder: Path, profile: Path | None = None) -> list[str]:
    """All problems found in a manifests folder (and the profile that points into it)."""
    manifests = load(folder)
    report = Report()
    check_schemas(manifests, report)
    check_references(manifests, report)
    check_services(manifests, report)
    check_addresses(manifests, report, profile)
    check_pod_security(manifests, report, folder)
    check_credentials(manifests, report)
    check_authentication(manifests, report, folder)
    check_probes_and_skips(manifests, report)
    check_network(manifests, report, folder)
    return report.problems


def main(argv: list[str]) -> int:
    folder = Path(argv[0] if argv else "k8s")
    profile = folder.parent / "clusters" / "k8s.yaml"
    problems = check_folder(folder, profile)
    for problem in problems:
        print(problem)
    print(f"{len(load(folder))} objects, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
