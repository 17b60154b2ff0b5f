"""The operator paths (k8s/operators/, clusters/k8s-operator.yaml), checked without a cluster.

- The DaskCluster that KubeCluster creates (the profile's custom_cluster_spec) is validated against
  the DaskCluster CRD that dask-kubernetes itself ships (its Helm chart's crds/, inside the
  installed wheel), strictly: a field the CRD does not define is an error, as the API server would
  silently prune it (a pruned securityContext field would let the pod fail Pod Security admission).
- KubeRay's RayCluster CRD is in no package this project can install (KubeRay publishes it in its
  Helm chart and GitHub releases only): the RayCluster is checked against the facts of that CRD
  that it relies on (RAYCLUSTER_FACTS) and its pod templates against Kubernetes' own PodTemplateSpec
  schema. With KUBERAY_CRD=<path to ray.io_rayclusters.yaml> the same strict CRD validation as for
  Dask runs on it too.
- Every pod these operators create passes the rules k8s/ passes (tests/k8s_checks.py); the Role
  grants only what KubeCluster calls; the NetworkPolicies admit exactly the operator pods' paths.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from helpers import REPO
from k8s_checks import (
    ALL_PORTS,
    DNS_PORTS,
    Manifest,
    NetworkModel,
    Pod,
    Report,
    check_authentication,
    check_credentials,
    check_pod_security,
    check_schemas,
    load,
)

OPERATORS = REPO / "k8s" / "operators"
PROFILE = REPO / "clusters" / "k8s-operator.yaml"


def dask_crd() -> Path:
    import dask_kubernetes

    return (
        Path(dask_kubernetes.__file__).parent
        / "operator/deployment/helm/dask-kubernetes-operator/crds/daskcluster.yaml"
    )


def strict(schema: Any) -> Any:
    """A CRD's openAPIV3Schema as JSON Schema in which undefined fields are errors (structural
    schemas prune them; `x-kubernetes-preserve-unknown-fields` keeps them)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_errors(crd_path: Path, document: dict[str, Any]) -> list[str]:
    crd = yaml.safe_load(crd_path.read_text())
    kind, group = crd["spec"]["names"]["kind"], crd["spec"]["group"]
    assert document["kind"] == kind, f"{document['kind']} is not {kind}"
    version = document["apiVersion"].split("/")[-1]
    assert document["apiVersion"] == f"{group}/{version}"
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    assert version in served, f"{group}/{version} is not served by the CRD (served: {sorted(served)})"
    schema = strict(served[version]["schema"]["openAPIV3Schema"])
    # the API server adds these three to every root schema
    schema["properties"].update(apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"})
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    ]


def daskcluster() -> dict[str, Any]:
    return yaml.safe_load(PROFILE.read_text())["dask"]["cluster_kwargs"]["custom_cluster_spec"]


def raycluster() -> dict[str, Any]:
    return next(d for d in yaml.safe_load_all((OPERATORS / "kuberay.yaml").read_text()) if d["kind"] == "RayCluster")


# --- DaskCluster ------------------------------------------------------------------------------


def test_daskcluster_matches_the_crd_dask_kubernetes_ships():
    assert crd_errors(dask_crd(), daskcluster()) == []


@pytest.mark.parametrize(
    "path, key, value, expected",
    [
        (["spec", "worker"], "replica", 2, "'replica' was unexpected"),
        (["spec", "worker", "spec", "containers", 0, "securityContext"], "readOnlyRootFileSystem", True, "unexpected"),
        (["spec", "scheduler", "spec", "securityContext", "seccompProfile"], "type", 7, "is not of type 'string'"),
    ],
    ids=["unknown-field", "misspelt-security-field", "wrong-type"],
)
def test_a_broken_daskcluster_fails_the_crd(path, key, value, expected):
    broken = daskcluster()
    target = broken
    for step in path:
        target = target[step]
    target[key] = value
    assert any(expected in problem for problem in crd_errors(dask_crd(), broken))


def test_daskcluster_scheduler_service_selects_its_own_cluster():
    """The template is consistent: scalegroups replaces both names together per flow run."""
    spec = daskcluster()
    service = spec["spec"]["scheduler"]["service"]
    assert service["selector"]["dask.org/cluster-name"] == spec["metadata"]["name"]
    assert {p["name"] for p in service["ports"]} >= {"tcp-comm", "http-dashboard"}  # KubeCluster looks these up


# --- pods made by the operators pass k8s/'s rules ------------------------------------------------


def _pseudo_workload(name: str, template: dict[str, Any]) -> Manifest:
    """A pod template the operator will turn into pods, as a Deployment k8s_checks can check."""
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    doc = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "scalegroups"},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": template["spec"]},
        },
    }
    return Manifest(Path(f"operator:{name}"), doc)


def operator_pods(dask: dict[str, Any] | None = None, ray: dict[str, Any] | None = None) -> list[Manifest]:
    dask, ray = dask or daskcluster(), ray or raycluster()
    return [
        _pseudo_workload("daskcluster-scheduler", dask["spec"]["scheduler"]),
        _pseudo_workload("daskcluster-worker", dask["spec"]["worker"]),
        _pseudo_workload("raycluster-head", ray["spec"]["headGroupSpec"]["template"]),
        *(
            _pseudo_workload(f"raycluster-{group['groupName']}", group["template"])
            for group in ray["spec"]["workerGroupSpecs"]
        ),
    ]


def operator_problems(pods: list[Manifest]) -> list[str]:
    base = [m for m in load(REPO / "k8s") if m.kind in {"Namespace", "ConfigMap"}]
    report = Report()
    check_schemas(pods, report)
    check_pod_security([*base, *pods], report, REPO / "k8s")
    check_credentials([*base, *pods], report)
    check_authentication([*base, *pods], report, REPO / "k8s")
    return report.problems


#: The one rule of k8s/ the operator's Dask cannot follow: KubeCluster builds its scheduler address
#: as tcp://... (dask_kubernetes/operator/networking.py, 2026.3.0), so a TLS scheduler would never
#: answer it. NetworkPolicies limit who reaches that scheduler instead (test below); README says so.
KUBECLUSTER_PLAIN_TCP = [
    "operator:daskcluster-scheduler: Deployment/daskcluster-scheduler: spec.template.spec.containers[0](scheduler)"
    ".command: the scheduler must listen with --protocol tls",
    *(
        f"operator:daskcluster-{role}: Deployment/daskcluster-{role}: spec.template.spec.containers[0]({role})"
        f".command: missing {option}: Dask traffic is mutual TLS"
        for role in ("scheduler", "worker")
        for option in ("--tls-ca-file", "--tls-cert", "--tls-key")
    ),
    "operator:daskcluster-worker: Deployment/daskcluster-worker: spec.template.spec.containers[0](worker).command: "
    "the worker must reach the scheduler at a tls:// address",
]


def test_operator_pods_pass_the_rules_of_k8s_but_dask_tls():
    assert sorted(operator_problems(operator_pods())) == sorted(KUBECLUSTER_PLAIN_TCP)


def test_a_weakened_operator_pod_is_caught():
    dask = daskcluster()
    del dask["spec"]["worker"]["spec"]["securityContext"]["seccompProfile"]
    ray = raycluster()
    ray["spec"]["workerGroupSpecs"][0]["template"]["spec"]["volumes"][-1]["secret"]["secretName"] = "ray-token"
    problems = [p for p in operator_problems(operator_pods(dask, ray)) if p not in KUBECLUSTER_PLAIN_TCP]
    assert any(
        p.startswith("operator:daskcluster-worker: Deployment/daskcluster-worker: ") and "seccomp" in p
        for p in problems
    )
    assert any("raycluster-workers" in p and "'ray-token' is not made by k8s-secrets" in p for p in problems)


def test_every_ray_process_uses_token_authentication():
    for pod in operator_pods()[2:]:
        for container in pod.doc["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env") or []}
            assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == "/etc/scalegroups/ray/token"


# --- RayCluster ----------------------------------------------------------------------------------

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_TEMPLATE = {"type": "object", "required": ["spec"]}  # its content: Kubernetes' PodTemplateSpec, checked above
#: The parts of KubeRay's RayCluster CRD (ray.io/v1, helm-chart/kuberay-operator/crds/ray.io_rayclusters.yaml)
#: that k8s/operators/kuberay.yaml uses: field names, types, the enum of authOptions.mode, and that
#: rayStartParams values are strings. Written from that CRD, not a copy of it.
RAYCLUSTER_FACTS = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayCluster"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["headGroupSpec"],
            "properties": {
                "authOptions": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "mode": {"enum": ["disabled", "token"]},
                        "enableK8sTokenAuth": {"type": "boolean"},
                        "secretName": {"type": "string"},  # KubeRay 1.6
                    },
                },
                "autoscalerOptions": {"type": "object"},
                "enableInTreeAutoscaling": {"type": "boolean"},
                "gcsFaultToleranceOptions": {"type": "object"},
                "headServiceAnnotations": _STRING_MAP,
                "managedBy": {"type": "string"},
                "rayVersion": {"type": "string"},
                "suspend": {"type": "boolean"},
                "upgradeStrategy": {"type": "object"},
                "headGroupSpec": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["template"],
                    "properties": {
                        "enableIngress": {"type": "boolean"},
                        "headService": {"type": "object"},
                        "rayStartParams": _STRING_MAP,
                        "serviceType": {"type": "string"},
                        "template": _TEMPLATE,
                    },
                },
                "workerGroupSpecs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["groupName", "template"],
                        "properties": {
                            "groupName": {"type": "string"},
                            "idleTimeoutSeconds": {"type": "integer"},
                            "maxReplicas": {"type": "integer"},
                            "minReplicas": {"type": "integer"},
                            "numOfHosts": {"type": "integer"},
                            "rayStartParams": _STRING_MAP,
                            "replicas": {"type": "integer"},
                            "scaleStrategy": {"type": "object"},
                            "suspend": {"type": "boolean"},
                            "template": _TEMPLATE,
                        },
                    },
                },
            },
        },
    },
}


def test_raycluster_uses_only_fields_of_kuberays_crd():
    errors = list(jsonschema.Draft7Validator(RAYCLUSTER_FACTS).iter_errors(raycluster()))
    assert [e.message for e in errors] == []
    broken = raycluster()
    broken["spec"]["workerGroupSpecs"][0]["rayStartParams"]["num-cpus"] = 2  # KubeRay wants strings
    broken["spec"]["headGroupSpec"]["replicas"] = 1  # no such field: the head is one pod
    messages = [e.message for e in jsonschema.Draft7Validator(RAYCLUSTER_FACTS).iter_errors(broken)]
    assert any("is not of type 'string'" in m for m in messages) and any(
        "'replicas' was unexpected" in m for m in messages
    )


@pytest.mark.skipif(not os.environ.get("KUBERAY_CRD"), reason="KUBERAY_CRD names no ray.io_rayclusters.yaml")
def test_raycluster_matches_kuberays_crd_file():
    assert crd_errors(Path(os.environ["KUBERAY_CRD"]), raycluster()) == []


def test_profile_reaches_the_head_service_kuberay_creates():
    cluster = raycluster()
    address = yaml.safe_load(PROFILE.read_text())["ray"]["address"]
    assert address == f"ray://{cluster['metadata']['name']}-head-svc:10001"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "client", "containerPort": 10001} in head["ports"]


# --- RBAC and the Job ----------------------------------------------------------------------------

#: what dask-kubernetes' KubeCluster calls (operator/kubecluster/kubecluster.py, 2026.3.0)
KUBECLUSTER_CALLS = {
    ("kubernetes.dask.org", "daskclusters"): {"get", "list", "watch", "create", "patch", "delete"},
    ("kubernetes.dask.org", "daskworkergroups"): {"get", "list", "watch", "create", "patch", "delete"},
    ("kubernetes.dask.org", "daskautoscalers"): {"get", "list", "watch", "create", "patch", "delete"},
    ("kubernetes.dask.org", "daskworkergroups/scale"): {"get", "patch", "update"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "services"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
}


def test_role_grants_only_what_kubecluster_calls():
    docs = load(OPERATORS)
    role = next(m for m in docs if m.kind == "Role")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role.doc["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == KUBECLUSTER_CALLS
    binding = next(m for m in docs if m.kind == "RoleBinding")
    account = next(m for m in docs if m.kind == "ServiceAccount")
    assert binding.doc["roleRef"]["name"] == role.name
    assert binding.doc["subjects"] == [{"kind": "ServiceAccount", "name": account.name, "namespace": "scalegroups"}]
    job = next(m for m in docs if m.kind == "Job")
    spec = job.doc["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == account.name and spec["automountServiceAccountToken"] is False
    token = next(v for v in spec["volumes"] if "projected" in v)["projected"]["sources"][0]["serviceAccountToken"]
    assert token["expirationSeconds"] <= 3600
    other = [m for m in load(REPO / "k8s") if m.kind in {"Deployment", "StatefulSet", "Job"}]
    assert not any("serviceAccountName" in m.doc["spec"]["template"]["spec"] for m in other)


def test_operator_manifests_pass_schemas_and_k8s_rules():
    docs = [m for m in load(OPERATORS) if m.kind != "RayCluster"]  # no 1.32 schema for a CRD kind
    base = [m for m in load(REPO / "k8s") if m.kind in {"Namespace", "ConfigMap"}]
    report = Report()
    check_schemas(docs, report)
    check_pod_security([*base, *docs], report, REPO / "k8s")
    check_credentials([*base, *docs], report)
    check_authentication([*base, *docs], report, REPO / "k8s")
    assert report.problems == []


# --- network -------------------------------------------------------------------------------------


def _pod(key: str, labels: dict[str, str], manifest: Manifest | None = None) -> Pod:
    return Pod(key, "scalegroups", tuple(sorted(labels.items())), manifest)


def test_operator_pods_get_exactly_their_paths():
    """k8s/'s and k8s/operators/'s policies together, applied to pods labelled as the operators
    label them (dask.org/*, ray.io/*) plus the templates' own labels."""
    manifests = [*load(REPO / "k8s"), *load(OPERATORS)]
    model = NetworkModel(manifests, Report())
    by_name = {p.key: p for p in model.pods}
    flow, prefect, postgres = (
        by_name["Job/scalegroups-example-operators"],
        by_name["Deployment/prefect-server"],
        by_name["StatefulSet/postgres"],
    )
    part = {"app.kubernetes.io/part-of": "scalegroups"}
    scheduler = _pod("dask scheduler", {**part, "dask.org/component": "scheduler", "dask.org/cluster-name": "x"})
    worker = _pod("dask worker", {**part, "dask.org/component": "worker", "dask.org/cluster-name": "x"})
    head = _pod("ray head", {**part, "ray.io/cluster": "ray", "ray.io/node-type": "head"})
    ray_worker = _pod("ray worker", {**part, "ray.io/cluster": "ray", "ray.io/node-type": "worker"})

    def ports(source, destination):
        return model.allowed(source, destination)[0]

    assert ports(flow, scheduler) == {(8786, "TCP")}
    assert ports(worker, scheduler) == {(8786, "TCP")}
    assert ports(scheduler, worker) == {(8790, "TCP"), (8791, "TCP")}
    assert ports(worker, worker) == {(8790, "TCP")}
    assert ports(worker, prefect) == {(4200, "TCP")}
    assert ports(flow, head) == {(10001, "TCP")}
    assert ports(ray_worker, head) is ALL_PORTS and ports(head, ray_worker) is ALL_PORTS
    assert ports(ray_worker, prefect) == {(4200, "TCP")}
    for pod in (scheduler, worker, head, ray_worker):
        assert ports(pod, postgres) == frozenset()
        assert ports(pod, model.dns) == DNS_PORTS
    assert ports(scheduler, prefect) == frozenset() and ports(head, prefect) == frozenset()
    assert ports(head, scheduler) == frozenset() and ports(worker, head) == frozenset()


def test_only_the_api_using_job_reaches_the_kubernetes_api():
    policy = next(m for m in load(OPERATORS) if m.name == "flow-kubernetes-api")
    assert policy.doc["spec"]["policyTypes"] == ["Egress"]
    selector = policy.doc["spec"]["podSelector"]["matchLabels"]
    job = next(m for m in load(OPERATORS) if m.kind == "Job")
    assert all(job.doc["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())
    example = next(m for m in load(REPO / "k8s") if m.kind == "Job")
    assert not all(example.doc["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())
    assert {p["port"] for rule in policy.doc["spec"]["egress"] for p in rule["ports"]} == {443, 6443}


def test_static_and_operator_folders_stay_apart():
    """`kubectl apply -f k8s/` reads only the top level: the operator variants are opt-in."""
    assert not any(m.path.parent == OPERATORS for m in load(REPO / "k8s"))
    assert {m.kind for m in load(OPERATORS)} >= {"Role", "RoleBinding", "Job", "RayCluster"}


def test_worker_resources_match_the_worker_pods_limits():
    """What the profile makes workers advertise (worker_resources) is what their containers get."""
    from dask.utils import parse_bytes

    dask = yaml.safe_load(PROFILE.read_text())["dask"]
    limits = dask["cluster_kwargs"]["custom_cluster_spec"]["spec"]["worker"]["spec"]["containers"][0]["resources"][
        "limits"
    ]
    assert dask["worker_resources"] == {"CPU": int(limits["cpu"]), "MEMORY": parse_bytes(limits["memory"])}
