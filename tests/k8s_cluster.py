"""Drive a real Kubernetes cluster (whatever KUBECONFIG names) with kubectl, for the e2e test.

`prepare()` copies k8s/ for the cluster at hand, changing only what the cluster cannot serve:
objects whose apiVersion the API server does not offer are left out (e.g. autoscaling/v2 on the
1.20 test lab); without a default StorageClass, volume claim templates become emptyDir volumes;
on the k8s-lab (SCALEGROUPS_K8S_LAB=1), which runs container commands on the host and ignores
images, the postgres image's entrypoint is replaced by tests/lab_postgres.sh. Every other object
and command is applied exactly as k8s/ has it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "scalegroups"


def kubectl(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run kubectl; on failure raise with its stderr."""
    proc = subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json").stdout)


def served_api_versions() -> set[str]:
    return set(kubectl("api-versions").stdout.split())


def has_default_storage_class() -> bool:
    classes = kubectl_json("get", "storageclass").get("items", [])
    return any(
        c["metadata"].get("annotations", {}).get("storageclass.kubernetes.io/is-default-class") == "true"
        for c in classes
    )


def _claims_to_empty_dirs(doc: dict[str, Any]) -> None:
    templates = doc["spec"].pop("volumeClaimTemplates", [])
    volumes = doc["spec"]["template"]["spec"].setdefault("volumes", [])
    volumes.extend({"name": t["metadata"]["name"], "emptyDir": {}} for t in templates)


def _lab_postgres(doc: dict[str, Any]) -> None:
    for container in doc["spec"]["template"]["spec"]["containers"]:
        if container.get("command") == ["docker-entrypoint.sh", "postgres"]:
            container["command"] = ["sh", str(REPO / "tests" / "lab_postgres.sh")]


def prepare(target: Path, runner: str, image: str | None = None) -> list[str]:
    """Write the cluster's copy of k8s/ into `target`; return what was changed, for the log."""
    served = served_api_versions()
    storage = has_default_storage_class()
    lab = os.environ.get("SCALEGROUPS_K8S_LAB") == "1"
    changes: list[str] = []
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted((REPO / "k8s").glob("*.y*ml")):
        kept = []
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            where = f"{doc['kind']}/{doc['metadata']['name']}"
            if doc["apiVersion"] not in served:
                changes.append(f"left out {where}: {doc['apiVersion']} not served by this cluster")
                continue
            if doc["kind"] == "StatefulSet" and not storage and doc["spec"].get("volumeClaimTemplates"):
                _claims_to_empty_dirs(doc)
                changes.append(f"{where}: no default StorageClass, volume claims -> emptyDir")
            if doc["kind"] == "StatefulSet" and lab:
                _lab_postgres(doc)
                changes.append(f"{where}: lab runs no images, postgres entrypoint -> tests/lab_postgres.sh")
            if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "scalegroups-config":
                doc["data"]["SCALEGROUPS_RUNNER"] = runner
            if image:
                for container in _all_containers(doc):
                    if container.get("image", "").startswith("scalegroups:"):
                        container["image"] = image
            kept.append(doc)
        if kept:
            (target / path.name).write_text(yaml.safe_dump_all(kept, sort_keys=False))
    return changes


def _all_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def wait_rollouts(timeout: float) -> None:
    for kind in ("deployment", "statefulset"):
        for item in kubectl_json("-n", NAMESPACE, "get", kind)["items"]:
            name = item["metadata"]["name"]
            kubectl(
                "-n",
                NAMESPACE,
                "rollout",
                "status",
                f"{kind}/{name}",
                f"--timeout={int(timeout)}s",
                timeout=timeout + 30,
            )


def services_without_endpoints(timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        missing = []
        for service in kubectl_json("-n", NAMESPACE, "get", "services")["items"]:
            if not service["spec"].get("selector"):
                continue
            name = service["metadata"]["name"]
            endpoints = kubectl_json("-n", NAMESPACE, "get", "endpoints", name)
            if not any(subset.get("addresses") for subset in endpoints.get("subsets") or []):
                missing.append(name)
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(1)


def job_outcome(name: str, timeout: float) -> str:
    """'Complete' or 'Failed' (or 'Timeout') for a Job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = kubectl_json("-n", NAMESPACE, "get", "job", name).get("status", {})
        for condition in status.get("conditions") or []:
            if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
                return condition["type"]
        time.sleep(2)
    return "Timeout"


def pod_logs(selector: str, tail: int = 60) -> str:
    """Logs of the selected pods' containers (kubectl logs, or the k8s-lab's log files)."""
    chunks = []
    lab_logs = Path(os.environ.get("K8S_LAB_RUN", "/tmp/k8s-lab")) / "pod-logs"
    for pod in kubectl_json("-n", NAMESPACE, "get", "pods", "-l", selector)["items"]:
        pod_name = pod["metadata"]["name"]
        spec = pod["spec"]
        for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
            proc = kubectl("-n", NAMESPACE, "logs", pod_name, "-c", container["name"], f"--tail={tail}", check=False)
            text = proc.stdout
            lab_file = lab_logs / f"{NAMESPACE}_{pod_name}_{container['name']}.log"
            if proc.returncode != 0 and lab_file.exists():
                text = "\n".join(lab_file.read_text(errors="replace").splitlines()[-tail:])
            chunks.append(f"--- {pod_name}/{container['name']}\n{text}")
    return "\n".join(chunks)
