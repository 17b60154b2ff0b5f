"""End to end on a real Kubernetes cluster: `kubectl apply -f k8s/`, then the example Job on Dask and Ray.

Opt-in, because it changes a cluster: set SCALEGROUPS_K8S_E2E=1 and KUBECONFIG (kind, minikube, a
real cluster, or the k8s-lab that .ci/run starts). Optional: SCALEGROUPS_K8S_IMAGE (the image to
run instead of scalegroups:0.1.0), SCALEGROUPS_K8S_TIMEOUT (seconds per wait, default 300).
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("SCALEGROUPS_K8S_E2E") != "1" or not shutil.which("kubectl"),
        reason="Kubernetes e2e is opt-in: set SCALEGROUPS_K8S_E2E=1 and KUBECONFIG (and have kubectl)",
    ),
    pytest.mark.timeout(1200),
]

TIMEOUT = float(os.environ.get("SCALEGROUPS_K8S_TIMEOUT", "300"))
JOB = "scalegroups-example"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from k8s_cluster import NAMESPACE, kubectl, prepare, wait_rollouts

    folder = tmp_path_factory.mktemp("k8s")
    started = time.monotonic()
    for change in prepare(folder, runner="dask", image=os.environ.get("SCALEGROUPS_K8S_IMAGE")):
        print(f"[k8s] {change}")
    kubectl("apply", "-f", str(folder / "00-namespace.yaml"))
    kubectl("apply", "--dry-run=server", "-f", str(folder))  # the API server accepts every object
    print(f"[k8s] server-side dry run accepted {folder}")
    kubectl("apply", "-f", str(folder))
    try:
        wait_rollouts(TIMEOUT)
        print(f"[k8s] workloads rolled out in {time.monotonic() - started:.0f} s")
        yield folder
    finally:
        kubectl(
            "delete", "-f", str(folder), "--ignore-not-found", "--wait=true", "--timeout=120s", check=False, timeout=180
        )
        kubectl(
            "delete",
            "namespace",
            NAMESPACE,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=120s",
            check=False,
            timeout=180,
        )


def test_every_service_has_endpoints(stack):
    from k8s_cluster import services_without_endpoints

    assert services_without_endpoints(60) == []


@pytest.mark.parametrize("runner", ["dask", "ray"])
def test_example_job_completes(stack, runner):
    """Switching engines is one ConfigMap value: SCALEGROUPS_RUNNER."""
    from k8s_cluster import NAMESPACE, job_outcome, kubectl, pod_logs

    kubectl(
        "-n",
        NAMESPACE,
        "patch",
        "configmap",
        "scalegroups-config",
        "--type=merge",
        "-p",
        f'{{"data": {{"SCALEGROUPS_RUNNER": "{runner}"}}}}',
    )
    kubectl("-n", NAMESPACE, "delete", "job", JOB, "--ignore-not-found", "--wait=true", "--timeout=120s", timeout=180)
    kubectl("apply", "-f", str(stack / "60-example-job.yaml"))
    started = time.monotonic()
    outcome = job_outcome(JOB, TIMEOUT)
    logs = pod_logs(f"job-name={JOB}")
    print(f"[k8s] Job on {runner}: {outcome} in {time.monotonic() - started:.0f} s")
    assert outcome == "Complete", f"Job {JOB} on {runner}: {outcome}\n{logs}"
    assert f"running examples/primes.py:count_primes on {runner}" in logs
    assert "primes below 180000" in logs
