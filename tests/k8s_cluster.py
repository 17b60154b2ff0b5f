"""Drive a real Kubernetes cluster (whatever KUBECONFIG names) with kubectl, for the e2e test.

`prepare()` copies k8s/ for the cluster at hand, changing only what the cluster cannot serve:
objects whose apiVersion the API server does not offer are left out (e.g. autoscaling/v2 on the
1.20 test lab); without a default StorageClass, volume claim templates become emptyDir volumes;
on the k8s-lab (SCALEGROUPS_K8S_LAB=1), which runs container commands on the host, ignores images
and materialises no volumes: the postgres image's entrypoint is replaced by tests/lab_postgres.sh;
each mounted Secret is written to a folder on the host and its mount path replaced by that folder
in the container's environment and command; variables pointing into an emptyDir (PREFECT_HOME,
RAY_TMPDIR) are dropped, so the programs use the pod's own HOME and TMPDIR that the lab gives.
Every other object, command and argument is applied exactly as k8s/ has it.
"""

from __future__ import annotations

import base64
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


def _replace_paths(value: Any, old: str, new: str) -> Any:
    """`old` -> `new` where it is a whole path or a path prefix in a string (or list of strings)."""
    if isinstance(value, list):
        return [_replace_paths(v, old, new) for v in value]
    if isinstance(value, str) and (value == old or old + "/" in value):
        return value.replace(old, new)
    return value


def _pod_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def _lab_volumes(doc: dict[str, Any], volumes_dir: Path) -> list[str]:
    """Materialise Secret volumes as host folders, drop env vars pointing into emptyDirs."""
    where = f"{doc['kind']}/{doc['metadata']['name']}"
    spec = doc["spec"]["template"]["spec"]
    namespace = doc["metadata"].get("namespace", NAMESPACE)
    changes = []
    for volume in spec.get("volumes") or []:
        mounts = [
            (container, mount)
            for container in _pod_containers(spec)
            for mount in container.get("volumeMounts") or []
            if mount["name"] == volume["name"]
        ]
        if "secret" in volume:
            secret = kubectl_json("-n", namespace, "get", "secret", volume["secret"]["secretName"])
            folder = volumes_dir / f"{doc['metadata']['name']}-{volume['name']}"
            folder.mkdir(parents=True, exist_ok=True)
            for key, value in (secret.get("data") or {}).items():
                (folder / key).write_bytes(base64.b64decode(value))
                (folder / key).chmod(0o600)
            for container, mount in mounts:
                for field in ("command", "args"):
                    if field in container:
                        container[field] = _replace_paths(container[field], mount["mountPath"], str(folder))
                for env in container.get("env") or []:
                    if "value" in env:
                        env["value"] = _replace_paths(env["value"], mount["mountPath"], str(folder))
            changes.append(
                f"{where}: lab mounts no volumes: Secret {volume['secret']['secretName']} written to {folder}, "
                f"used there instead of {sorted({m['mountPath'] for _, m in mounts})}"
            )
        elif "emptyDir" in volume:
            for container, mount in mounts:
                path = mount["mountPath"]
                kept = []
                for env in container.get("env") or []:
                    value = env.get("value")
                    if isinstance(value, str) and (value == path or value.startswith(path + "/")):
                        changes.append(
                            f"{where}: lab mounts no volumes: {env['name']}={value} (emptyDir) dropped in "
                            f"{container['name']}, the lab's per-pod HOME/TMPDIR are used"
                        )
                        continue
                    kept.append(env)
                if "env" in container:
                    container["env"] = kept
    return changes


def prepare(target: Path, runner: str, image: str | None = None) -> list[str]:
    """Write the cluster's copy of k8s/ into `target`; return what was changed, for the log.

    On the lab the Secrets the manifests mount must exist already (`scalegroups k8s-secrets`).
    """
    served = served_api_versions()
    storage = has_default_storage_class()
    lab = os.environ.get("SCALEGROUPS_K8S_LAB") == "1"
    changes: list[str] = []
    target.mkdir(parents=True, exist_ok=True)
    volumes_dir = target.parent / f"{target.name}-lab-volumes"
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
            if lab and doc.get("spec", {}).get("template", {}).get("spec"):
                changes.extend(_lab_volumes(doc, volumes_dir))
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
    return _pod_containers(doc.get("spec", {}).get("template", {}).get("spec", {}))


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


def apply_secrets() -> list[str]:
    """`scalegroups k8s-secrets | kubectl apply -f -`, as the README's quick start does it."""
    import sys

    made = subprocess.run(
        [sys.executable, "-m", "scalegroups.cli", "k8s-secrets"], capture_output=True, text=True, timeout=120
    )
    if made.returncode != 0:
        raise RuntimeError(f"scalegroups k8s-secrets failed: {made.stderr}")
    applied = subprocess.run(
        ["kubectl", "apply", "-f", "-"], input=made.stdout, capture_output=True, text=True, timeout=120
    )
    if applied.returncode != 0:
        raise RuntimeError(f"kubectl apply of the Secrets failed: {applied.stderr}")
    return applied.stdout.splitlines()


def secrets_snapshot() -> dict[str, tuple[str, dict[str, str]]]:
    """Every Secret of the namespace: resourceVersion and data."""
    return {
        item["metadata"]["name"]: (item["metadata"]["resourceVersion"], item.get("data") or {})
        for item in kubectl_json("-n", NAMESPACE, "get", "secrets")["items"]
        if item.get("type") != "kubernetes.io/service-account-token"
    }


# Run in a flow Job's pod (its labels, Secrets and settings): what may a client without credentials do?
PROBE = r"""
import base64, json, os, socket, ssl, urllib.error, urllib.request
from prefect.settings import get_current_settings

api = os.environ["PREFECT_API_URL"].rstrip("/")

def create_flow(auth):
    request = urllib.request.Request(api + "/flows/", data=json.dumps({"name": "scalegroups-auth-probe"}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code

print("probe: unauthenticated write ->", create_flow(None), flush=True)
auth_string = get_current_settings().api.auth_string.get_secret_value()
print("probe: authenticated write ->", create_flow(auth_string), flush=True)
context = ssl.create_default_context(cafile=os.environ["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"])
context.check_hostname = False
try:
    with socket.create_connection(("dask-scheduler", 8786), 15) as raw, context.wrap_socket(raw) as tls:
        tls.sendall(b"\0" * 8)
        outcome = "accepted" if tls.recv(1) else "refused (closed)"
except (ssl.SSLError, OSError) as error:
    outcome = f"refused ({type(error).__name__})"
print("probe: dask scheduler without a client certificate ->", outcome, flush=True)
try:
    with socket.create_connection(("dask-scheduler", 8786), 15) as raw:
        raw.sendall(b"\0" * 64)
        outcome = "accepted" if raw.recv(1) else "refused (closed)"
except OSError as error:
    outcome = f"refused ({type(error).__name__})"
print("probe: dask scheduler over plain TCP ->", outcome, flush=True)
"""


def probe_job(example_job: Path, name: str = "scalegroups-auth-probe") -> dict[str, Any]:
    """A Job like the (prepared) example Job whose main container runs PROBE instead of the flow."""
    job = yaml.safe_load(example_job.read_text())
    job["metadata"]["name"] = name
    job["metadata"]["labels"]["app.kubernetes.io/name"] = name
    template = job["spec"]["template"]
    template["metadata"]["labels"]["app.kubernetes.io/name"] = name
    template["spec"].pop("initContainers", None)  # the stack is up: no need to wait for it
    container = template["spec"]["containers"][0]
    container["name"] = "probe"
    container["command"] = ["python", "-c", PROBE]
    return job
