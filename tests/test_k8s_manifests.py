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
    """A copy of k8s/ (with the Dockerfile and profiles it is checked against) and a function that
    applies edits to it: (file, old, new) replaces the first `old`; old None appends `new`."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    shutil.copytree(REPO / "clusters", tmp_path / "clusters")
    shutil.copy(REPO / "Dockerfile", tmp_path / "Dockerfile")

    def edit(*edits: tuple[str, str | None, str]):
        for file_name, old, new in edits:
            path = copy / file_name
            text = path.read_text() if path.exists() else ""
            if old is None:
                text += new
            else:
                assert old in text, f"{old!r} not in {file_name}"
                text = text.replace(old, new, 1)
            path.write_text(text)
        return check_folder(copy, tmp_path / "clusters" / "k8s.yaml")

    return edit


def test_an_untouched_copy_passes(broken):
    """The copy itself is clean: each case below fails because of its edit alone."""
    assert broken() == []


DNS_RULE = """    - to:
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
          podSelector: {matchLabels: {k8s-app: kube-dns}}
      ports:
        - {port: 53, protocol: UDP}
        - {port: 53, protocol: TCP}
"""
ALLOW_ALL = """---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: scalegroups}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{}]
  egress: [{}]
"""
COMMITTED_SECRET = """apiVersion: v1
kind: Secret
metadata: {name: ray-auth, namespace: scalegroups}
stringData: {token: 5c8a0e6bd0f34a1f9d1c3e7a2b6f4d80change-me}
"""
CASES = {
    # references and schemas
    "selector-typo": (
        [
            (
                "40-dask.yaml",
                "  selector: {app.kubernetes.io/name: dask-scheduler}",
                "  selector: {app.kubernetes.io/name: dask-schedular}",
            )
        ],
        "40-dask.yaml: Service/dask-scheduler: spec.selector: {'app.kubernetes.io/name': 'dask-schedular'} "
        "matches no pod template",
    ),
    "missing-secret-key": (
        [
            (
                "30-prefect-server.yaml",
                "value: /etc/scalegroups/prefect/profiles.toml}",
                "value: /etc/scalegroups/prefect/profile.toml}",
            )
        ],
        "30-prefect-server.yaml: Deployment/prefect-server: spec.template.spec.containers[0](prefect-server)"
        ".env.PREFECT_PROFILES_PATH: '/etc/scalegroups/prefect/profile.toml': Secret 'prefect-server-settings' "
        "has no key 'profile.toml'",
    ),
    "wrong-port": (
        [
            (
                "40-dask.yaml",
                "    - {name: comm, port: 8786, targetPort: comm}",
                "    - {name: comm, port: 8786, targetPort: 8788}",
            )
        ],
        "40-dask.yaml: Service/dask-scheduler: spec.ports[0].targetPort: 8788 is not a port declared",
    ),
    "unknown-variable": (
        [("10-config.yaml", "\n  SCALEGROUPS_RUNNER: dask", "\n  SCALEGROUPS_RUNER: dask")],
        "10-config.yaml: ConfigMap/scalegroups-config: data.SCALEGROUPS_RUNER: no such variable",
    ),
    "wrong-service-port": (
        [("10-config.yaml", "http://prefect-server:4200/api", "http://prefect-server:4300/api")],
        "10-config.yaml: ConfigMap/prefect-api: data.PREFECT_API_URL: 'http://prefect-server:4300/api': "
        "Service prefect-server has no port 4300",
    ),
    "workload-selector": (
        [
            (
                "40-dask.yaml",
                "    matchLabels: {app.kubernetes.io/name: dask-worker}",
                "    matchLabels: {app.kubernetes.io/name: dask-workers}",
            )
        ],
        "40-dask.yaml: Deployment/dask-worker: spec.selector.matchLabels:",
    ),
    "no-command": (
        [
            (
                "50-ray.yaml",
                "          command:\n            - ray\n            - start\n            - --address",
                "          args:\n            - ray\n            - start\n            - --address",
            )
        ],
        "50-ray.yaml: Deployment/ray-worker: spec.template.spec.containers[0](worker).command: missing",
    ),
    "schema": (
        [("30-prefect-server.yaml", "            periodSeconds: 3", "            periodSecond: 3")],
        "30-prefect-server.yaml: Deployment/prefect-server: spec.template.spec.containers.0.readinessProbe: "
        "schema 1.32",
    ),
    # pod security
    "no-seccomp": (
        [("40-dask.yaml", "        seccompProfile: {type: RuntimeDefault}\n", "")],
        "40-dask.yaml: Deployment/dask-scheduler: spec.template.spec.containers[0](scheduler).securityContext"
        ".seccompProfile: missing",
    ),
    "low-uid": (
        [("50-ray.yaml", "runAsUser: 10001", "runAsUser: 1000")],
        "50-ray.yaml: Deployment/ray-head: spec.template.spec.containers[0](head).securityContext.runAsUser: "
        "1000: run as a uid >= 10000",
    ),
    "not-the-image-uid": (
        [("30-prefect-server.yaml", "runAsUser: 10001", "runAsUser: 10002")],
        "30-prefect-server.yaml: Deployment/prefect-server: spec.template.spec.containers[0](prefect-server)"
        ".securityContext.runAsUser: 10002: the scalegroups image's user is uid 10001",
    ),
    "writable-root": (
        [("60-example-job.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false")],
        "60-example-job.yaml: Job/scalegroups-example: spec.template.spec.initContainers[0](wait-for-stack)"
        ".securityContext.readOnlyRootFilesystem: must be true",
    ),
    "privilege-escalation": (
        [("20-postgres.yaml", "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true")],
        "20-postgres.yaml: StatefulSet/postgres: spec.template.spec.containers[0](postgres).securityContext"
        ".allowPrivilegeEscalation: must be false",
    ),
    "capabilities": (
        [("40-dask.yaml", "capabilities: {drop: [ALL]}", "capabilities: {drop: [NET_RAW]}")],
        "40-dask.yaml: Deployment/dask-scheduler: spec.template.spec.containers[0](scheduler).securityContext"
        ".capabilities.drop: must contain ALL",
    ),
    "service-account-token": (
        [("30-prefect-server.yaml", "automountServiceAccountToken: false", "automountServiceAccountToken: true")],
        "30-prefect-server.yaml: Deployment/prefect-server: spec.template.spec.automountServiceAccountToken: "
        "must be false",
    ),
    "namespace-not-restricted": (
        [
            (
                "00-namespace.yaml",
                "pod-security.kubernetes.io/enforce: restricted",
                "pod-security.kubernetes.io/enforce: baseline",
            )
        ],
        "00-namespace.yaml: Namespace/scalegroups: metadata.labels: pod-security.kubernetes.io/enforce must be "
        "'restricted'",
    ),
    "prefect-home-read-only": (
        [
            (
                "40-dask.yaml",
                "{name: PREFECT_HOME, value: /var/lib/prefect}",
                "{name: PREFECT_HOME, value: /home/app/.prefect}",
            )
        ],
        "40-dask.yaml: Deployment/dask-worker: spec.template.spec.containers[0](worker).env.PREFECT_HOME: "
        "'/home/app/.prefect' is not in a writable volume",
    ),
    "no-writable-tmp": (
        [("30-prefect-server.yaml", "            - {name: tmp, mountPath: /tmp}\n", "")],
        "30-prefect-server.yaml: Deployment/prefect-server: spec.template.spec.containers[0](prefect-server)"
        ".volumeMounts: no writable volume at /tmp",
    ),
    "no-ray-tmpdir": (
        [("50-ray.yaml", "            - {name: RAY_TMPDIR, value: /var/lib/ray}\n", "")],
        "50-ray.yaml: Deployment/ray-head: spec.template.spec.containers[0](head).env.RAY_TMPDIR: missing",
    ),
    "pgdata-is-the-volume": (
        [("20-postgres.yaml", "value: /var/lib/postgresql/data/pgdata}", "value: /var/lib/postgresql/data}")],
        "20-postgres.yaml: StatefulSet/postgres: spec.template.spec.containers[0](postgres).env.PGDATA: "
        "'/var/lib/postgresql/data' must be a subdirectory of the data volume",
    ),
    "fsgroup-recursive": (
        [("20-postgres.yaml", "        fsGroupChangePolicy: OnRootMismatch\n", "")],
        "20-postgres.yaml: StatefulSet/postgres: spec.template.spec.securityContext.fsGroupChangePolicy: must be "
        "OnRootMismatch",
    ),
    "secret-world-readable": (
        [("20-postgres.yaml", "defaultMode: 0440}", "defaultMode: 0444}")],
        "20-postgres.yaml: StatefulSet/postgres: spec.template.spec.volumes.credentials.secret.defaultMode: "
        "0o444: readable by others",
    ),
    # credentials
    "committed-secret": (
        [("11-secrets.yaml", None, COMMITTED_SECRET)],
        "11-secrets.yaml: Secret/ray-auth: data: credentials do not belong in the repository",
    ),
    "secret-as-env": (
        [
            (
                "60-example-job.yaml",
                "            - {name: RAY_AUTH_MODE, value: token}",
                "            - name: RAY_AUTH_TOKEN\n"
                "              valueFrom: {secretKeyRef: {name: ray-auth, key: token}}\n"
                "            - {name: RAY_AUTH_MODE, value: token}",
            )
        ],
        "60-example-job.yaml: Job/scalegroups-example: spec.template.spec.containers[0](example).env.RAY_AUTH_TOKEN: "
        "a Secret as an environment variable",
    ),
    "credential-in-manifest": (
        [
            (
                "40-dask.yaml",
                "            - {name: PREFECT_HOME, value: /var/lib/prefect}",
                "            - {name: PREFECT_HOME, value: /var/lib/prefect}\n"
                "            - {name: PREFECT_API_AUTH_STRING, value: 'admin:admin'}",
            )
        ],
        "40-dask.yaml: Deployment/dask-worker: spec.template.spec.containers[0](worker).env.PREFECT_API_AUTH_STRING: "
        "a credential written in the manifest",
    ),
    "server-secret-in-a-worker": (
        [("40-dask.yaml", "secretName: prefect-client-settings", "secretName: prefect-server-settings")],
        "40-dask.yaml: Deployment/dask-worker: spec.template.spec.containers[0](worker).volumeMounts."
        "/etc/scalegroups/prefect: Secret 'prefect-server-settings' is only for ['prefect-server']",
    ),
    # authentication
    "dask-scheduler-plain": (
        [("40-dask.yaml", "            - --protocol\n            - tls\n", "")],
        "40-dask.yaml: Deployment/dask-scheduler: spec.template.spec.containers[0](scheduler).command: the "
        "scheduler must listen with --protocol tls",
    ),
    "dask-worker-plain": (
        [("40-dask.yaml", "- tls://dask-scheduler:8786", "- tcp://dask-scheduler:8786")],
        "40-dask.yaml: Deployment/dask-worker: spec.template.spec.containers[0](worker).command: the worker must "
        "reach the scheduler at a tls:// address",
    ),
    "dask-client-without-key": (
        [
            (
                "60-example-job.yaml",
                "            - {name: DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY, "
                "value: /etc/scalegroups/dask-tls/tls.key}\n",
                "",
            )
        ],
        "60-example-job.yaml: Job/scalegroups-example: spec.template.spec.containers[0](example).env."
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY: must name a file of mounted Secret dask-client-tls",
    ),
    "ray-without-token": (
        [("50-ray.yaml", "{name: RAY_AUTH_MODE, value: token}", "{name: RAY_AUTH_MODE, value: disabled}")],
        "50-ray.yaml: Deployment/ray-head: spec.template.spec.containers[0](head).env.RAY_AUTH_MODE: must be token",
    ),
    "authenticated-probe": (
        [
            (
                "30-prefect-server.yaml",
                "httpGet: {path: /api/ready, port: http}",
                "httpGet: {path: /api/flows, port: http}",
            )
        ],
        "30-prefect-server.yaml: Deployment/prefect-server: spec.template.spec.containers[0](prefect-server)"
        ".readinessProbe.httpGet.path: '/api/flows' needs credentials",
    ),
    "client-without-auth-string": (
        [
            (
                "50-ray.yaml",
                "            - {name: PREFECT_PROFILES_PATH, value: /etc/scalegroups/prefect/profiles.toml}\n",
                "",
            )
        ],
        "50-ray.yaml: Deployment/ray-worker: spec.template.spec.containers[0](worker).env.PREFECT_PROFILES_PATH: a "
        "Prefect API client needs PREFECT_API_AUTH_STRING",
    ),
    # probes, replicas, checkov skips
    "no-liveness": (
        [
            (
                "50-ray.yaml",
                "          livenessProbe:\n            httpGet: {path: /api/local_raylet_healthz",
                "          startupProbe:\n            httpGet: {path: /api/local_raylet_healthz",
            )
        ],
        "50-ray.yaml: Deployment/ray-worker: spec.template.spec.containers[0](worker).livenessProbe: missing",
    ),
    "liveness-copies-readiness": (
        [
            (
                "40-dask.yaml",
                "          livenessProbe:\n            httpGet: {path: /health, port: dashboard}\n"
                "            initialDelaySeconds: 15\n            periodSeconds: 15",
                "          livenessProbe:\n            httpGet: {path: /health, port: dashboard}\n"
                "            periodSeconds: 3",
            )
        ],
        "40-dask.yaml: Deployment/dask-scheduler: spec.template.spec.containers[0](scheduler).livenessProbe: a copy "
        "of the readiness probe",
    ),
    "replicas-under-hpa": (
        [
            (
                "40-dask.yaml",
                "  selector:\n    matchLabels: {app.kubernetes.io/name: dask-worker}",
                "  replicas: 2\n  selector:\n    matchLabels: {app.kubernetes.io/name: dask-worker}",
            )
        ],
        "40-dask.yaml: Deployment/dask-worker: spec.replicas: set, but a HorizontalPodAutoscaler owns the count",
    ),
    "checkov-skip-not-allowed": (
        [("30-prefect-server.yaml", "checkov.io/skip2: CKV_K8S_15=", "checkov.io/skip2: CKV_K8S_40=")],
        "30-prefect-server.yaml: Deployment/prefect-server: metadata.annotations.checkov.io/skip2: CKV_K8S_40: only",
    ),
    "checkov-skip-without-reason": (
        [
            (
                "60-example-job.yaml",
                "checkov.io/skip2: CKV_K8S_15=IfNotPresent lets",
                "checkov.io/skip2: CKV_K8S_15\n    x: IfNotPresent lets",
            )
        ],
        "60-example-job.yaml: Job/scalegroups-example: metadata.annotations.checkov.io/skip2: give a one-line reason",
    ),
    # network
    "worker-cannot-reach-scheduler": (
        [
            (
                "70-network-policy.yaml",
                "    - to:\n        - podSelector: {matchLabels: {app.kubernetes.io/name: dask-scheduler}}\n"
                "      ports:\n        - {port: 8786, protocol: TCP}\n",
                "",
            )
        ],
        "40-dask.yaml: Deployment/dask-worker: network: connects to Deployment/dask-scheduler on 8786 (command) but "
        "the NetworkPolicies block it",
    ),
    "no-dns": (
        [("70-network-policy.yaml", DNS_RULE, "")],
        "30-prefect-server.yaml: Deployment/prefect-server: network: connects to kube-system/kube-dns on 53, 53/UDP "
        "(name lookups) but the NetworkPolicies block it",
    ),
    "job-without-flow-label": (
        [
            (
                "60-example-job.yaml",
                "        app.kubernetes.io/component: flow\n",
                "        app.kubernetes.io/component: batch\n",
            )
        ],
        "60-example-job.yaml: Job/scalegroups-example: network: connects to Deployment/prefect-server on 4200 "
        "($PREFECT_API_URL) but the NetworkPolicies block it",
    ),
    "allow-all": (
        [("70-network-policy.yaml", None, ALLOW_ALL)],
        "60-example-job.yaml: Job/scalegroups-example: network: NetworkPolicies (NetworkPolicy/allow-all) allow "
        "connections to StatefulSet/postgres on every port, which the stack does not use",
    ),
    "ip-block": (
        [
            (
                "70-network-policy.yaml",
                None,
                ALLOW_ALL.replace("egress: [{}]", "egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0}}]}]"),
            )
        ],
        "70-network-policy.yaml: NetworkPolicy/allow-all: spec.egress[0].to: ipBlock",
    ),
    "pod-without-policy": (
        [
            (
                "60-example-job.yaml",
                "        app.kubernetes.io/component: flow\n",
                "        app.kubernetes.io/component: batch\n",
            ),
            (
                "70-network-policy.yaml",
                "  podSelector: {}   # every pod",
                "  podSelector: {matchLabels: {x: y}}   # no pod",
            ),
        ],
        "60-example-job.yaml: Job/scalegroups-example: network: no NetworkPolicy selects this pod for ingress",
    ),
}


@pytest.mark.parametrize("edits, expected", list(CASES.values()), ids=list(CASES))
def test_broken_manifest_is_named(broken, edits, expected):
    problems = broken(*edits)
    assert any(p.startswith(expected) for p in problems), problems
