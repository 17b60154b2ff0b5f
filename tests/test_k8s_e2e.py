"""End to end on a real Kubernetes cluster: the README's quick start (`scalegroups k8s-secrets |
kubectl apply -f -`, then `kubectl apply -f k8s/`), then the example Job on Dask and Ray.

Opt-in, because it changes a cluster: set SCALEGROUPS_K8S_E2E=1 and KUBECONFIG (kind, minikube, a
real cluster, or the k8s-lab that .ci/run starts). Optional: SCALEGROUPS_K8S_IMAGE (the image to
run instead of scalegroups:0.1.0), SCALEGROUPS_K8S_TIMEOUT (seconds per wait, default 300).
"""

from __future__ import annotations

import os
import re
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
    from k8s_cluster import NAMESPACE, apply_secrets, kubectl, prepare, wait_rollouts

    folder = tmp_path_factory.mktemp("k8s")
    started = time.monotonic()
    for line in apply_secrets():  # the quick start's first command (the namespace comes with it)
        print(f"[k8s] {line}")
    for change in prepare(folder, runner="dask", image=os.environ.get("SCALEGROUPS_K8S_IMAGE")):
        print(f"[k8s] {change}")
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


def test_reapplying_k8s_changes_no_credential(stack):
    """k8s/ holds no Secret: applying it again (an upgrade, a changed setting) leaves every credential."""
    from k8s_cluster import kubectl, secrets_snapshot

    before = secrets_snapshot()
    assert len(before) >= 7, sorted(before)
    out = kubectl("apply", "-f", str(stack)).stdout
    assert "secret/" not in out, out
    assert secrets_snapshot() == before


def test_the_stack_refuses_clients_without_credentials(stack, tmp_path):
    """From a flow Job's pod: an unauthenticated write to the Prefect API is refused (401), the same
    write with the auth string is accepted, and the Dask scheduler refuses TLS without a client
    certificate and plain TCP."""
    import yaml
    from k8s_cluster import job_outcome, kubectl, pod_logs, probe_job

    name = "scalegroups-auth-probe"
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(probe_job(stack / "60-example-job.yaml", name), sort_keys=False))
    kubectl("apply", "-f", str(path))
    outcome = job_outcome(name, TIMEOUT)
    logs = pod_logs(f"job-name={name}")
    print(f"[k8s] probe: {outcome}\n{logs}")
    assert outcome == "Complete", logs
    assert "probe: unauthenticated write -> 401" in logs
    assert re.search(r"probe: authenticated write -> 20[01]\b", logs)
    assert "probe: dask scheduler without a client certificate -> refused" in logs
    assert "probe: dask scheduler over plain TCP -> refused" in logs


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
