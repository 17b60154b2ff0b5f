"""Static checks of k8s/ (no cluster needed): the real folder passes, broken copies fail clearly."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from helpers import REPO
from k8s_checks import check_folder

K8S = REPO / "k8s"
PROFILE = REPO / "clusters" / "k8s.yaml"


def test_k8s_folder_passes_every_check():
    assert check_folder(K8S, PROFILE) == []


def test_checker_command_line():
    out = subprocess.run(
        [sys.executable, str(REPO / "tests" / "k8s_checks.py"), str(K8S)], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("0 problems"), out.stdout


@pytest.fixture
def broken(tmp_path):
    """A copy of k8s/ and a function that edits one file in it."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)

    def edit(file_name: str, old: str, new: str):
        path = copy / file_name
        text = path.read_text()
        assert old in text, f"{old!r} not in {file_name}"
        path.write_text(text.replace(old, new, 1))
        return check_folder(copy, PROFILE)

    return edit


@pytest.mark.parametrize(
    "file_name, old, new, expected",
    [
        (
            "40-dask.yaml",
            "  selector: {app.kubernetes.io/name: dask-scheduler}",
            "  selector: {app.kubernetes.io/name: dask-schedular}",
            "40-dask.yaml: Service/dask-scheduler: spec.selector: {'app.kubernetes.io/name': 'dask-schedular'} "
            "matches no pod template",
        ),
        (
            "30-prefect-server.yaml",
            "key: POSTGRES_PASSWORD}",
            "key: POSTGRES_PASSWD}",
            "30-prefect-server.yaml: Deployment/prefect-server: spec.template.spec.containers[0](prefect-server)"
            ".env.POSTGRES_PASSWORD: key 'POSTGRES_PASSWD' not in Secret 'postgres-credentials'",
        ),
        (
            "40-dask.yaml",
            "    - {name: comm, port: 8786, targetPort: comm}",
            "    - {name: comm, port: 8786, targetPort: 8788}",
            "40-dask.yaml: Service/dask-scheduler: spec.ports[0].targetPort: 8788 is not a port declared",
        ),
        (
            "10-config.yaml",
            "\n  SCALEGROUPS_RUNNER: dask",
            "\n  SCALEGROUPS_RUNER: dask",
            "10-config.yaml: ConfigMap/scalegroups-config: data.SCALEGROUPS_RUNER: no such variable",
        ),
        (
            "10-config.yaml",
            "http://prefect-server:4200/api",
            "http://prefect-server:4300/api",
            "10-config.yaml: ConfigMap/scalegroups-config: data.PREFECT_API_URL: 'http://prefect-server:4300/api': "
            "Service prefect-server has no port 4300",
        ),
        (
            "40-dask.yaml",
            "    matchLabels: {app.kubernetes.io/name: dask-worker}",
            "    matchLabels: {app.kubernetes.io/name: dask-workers}",
            "40-dask.yaml: Deployment/dask-worker: spec.selector.matchLabels:",
        ),
        (
            "50-ray.yaml",
            "          command:\n            - ray\n            - start\n            - --address",
            "          args:\n            - ray\n            - start\n            - --address",
            "50-ray.yaml: Deployment/ray-worker: spec.template.spec.containers[0](worker).command: missing",
        ),
        (
            "30-prefect-server.yaml",
            "            periodSeconds: 3",
            "            periodSecond: 3",
            "30-prefect-server.yaml: Deployment/prefect-server: spec.template.spec.containers.0.readinessProbe: "
            "schema 1.32",
        ),
    ],
    ids=[
        "selector-typo",
        "missing-secret-key",
        "wrong-port",
        "unknown-variable",
        "wrong-service-port",
        "workload-selector",
        "no-command",
        "schema",
    ],
)
def test_broken_manifest_is_named(broken, file_name, old, new, expected):
    problems = broken(file_name, old, new)
    assert any(p.startswith(expected) for p in problems), problems
