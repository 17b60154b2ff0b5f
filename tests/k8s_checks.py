"""Static checks of k8s/: strict schemas at a current Kubernetes version, plus cross-references.

    python tests/k8s_checks.py k8s/          # prints one line per problem, exit 1 if any

Each problem names the file, the object (Kind/name) and the field. Cross-references checked:
workload selectors vs their pod labels; Service selectors vs pod templates, and targetPorts vs
declared container ports; ConfigMap/Secret references and keys (env, envFrom); every container
has an explicit command; ConfigMap keys are variables scalegroups or Prefect actually read; and
the service addresses in ConfigMaps and in clusters/k8s.yaml name a Service and one of its ports.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

KUBERNETES_VERSION = "1.32"
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
        for doc in yaml.safe_load_all(path.read_text()):
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


def check_folder(folder: Path, profile: Path | None = None) -> list[str]:
    """All problems found in a manifests folder (and the profile that points into it)."""
    manifests = load(folder)
    report = Report()
    check_schemas(manifests, report)
    check_references(manifests, report)
    check_services(manifests, report)
    check_addresses(manifests, report, profile)
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
