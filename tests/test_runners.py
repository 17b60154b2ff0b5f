"""The runner factory: names, precedence, options, and errors for bad input (no engines started)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner
from prefect_ray import RayTaskRunner

from scalegroups import ConfigurationError, make_task_runner, resolve_runner


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("RUNNER", "PROFILE", "ADDRESS", "MAX_WORKERS"):
        monkeypatch.delenv(f"SCALEGROUPS_{name}", raising=False)


@pytest.mark.parametrize(
    "name, cls",
    [
        ("thread", ThreadPoolTaskRunner),
        ("process", ProcessPoolTaskRunner),
        ("dask", DaskTaskRunner),
        ("ray", RayTaskRunner),
    ],
)
def test_each_name_builds_the_prefect_runner(name, cls, monkeypatch):
    assert isinstance(make_task_runner(name), cls)
    monkeypatch.setenv("SCALEGROUPS_RUNNER", name)
    assert isinstance(make_task_runner(), cls)


def test_default_is_threads_on_the_local_profile():
    spec = resolve_runner()
    assert (spec.runner, spec.profile.name) == ("thread", "local")
    assert spec.sources == {"runner": "default", "profile": "default"}


def test_local_defaults_are_safe_on_a_shared_machine():
    ray = make_task_runner("ray")
    assert ray.address == "local", "must never join a cluster someone else started"
    dask = make_task_runner("dask")
    assert dask.address is None
    assert dask.cluster_kwargs["processes"] is True
    assert dask.cluster_kwargs["dashboard_address"] == ":0"


def test_precedence_argument_over_env_over_profile(monkeypatch, tmp_path):
    profile = tmp_path / "mine.yaml"
    profile.write_text("dask:\n  address: tcp://127.0.0.1:1111\nthread:\n  max_workers: 3\n")
    monkeypatch.setenv("SCALEGROUPS_PROFILE", str(profile))
    assert make_task_runner("thread")._max_workers == 3  # profile
    assert make_task_runner("dask").address == "tcp://127.0.0.1:1111"  # profile
    monkeypatch.setenv("SCALEGROUPS_MAX_WORKERS", "5")
    monkeypatch.setenv("SCALEGROUPS_ADDRESS", "tcp://127.0.0.1:2222")
    assert make_task_runner("thread")._max_workers == 5  # env beats profile
    assert make_task_runner("dask").address == "tcp://127.0.0.1:2222"
    assert make_task_runner("thread", max_workers=7)._max_workers == 7  # argument beats env
    assert make_task_runner("dask", address="tcp://127.0.0.1:3333").address == "tcp://127.0.0.1:3333"
    assert resolve_runner("dask").sources["address"] == "$SCALEGROUPS_ADDRESS"


def test_max_workers_maps_to_each_engine():
    assert make_task_runner("process", max_workers=2)._max_workers == 2
    assert make_task_runner("dask", max_workers=3).cluster_kwargs["n_workers"] == 3
    assert make_task_runner("ray", max_workers=4).init_kwargs["num_cpus"] == 4


def test_options_merge_into_the_profile_section():
    runner = make_task_runner("dask", cluster_kwargs={"n_workers": 1, "memory_limit": "1GiB"})
    assert runner.cluster_kwargs == {
        "processes": True,
        "threads_per_worker": 1,
        "dashboard_address": ":0",
        "resources": {"CPU": 1},
        "config": {"distributed.worker.profile.enabled": False},
        "n_workers": 1,
        "memory_limit": "1GiB",
    }


def test_worker_config_in_each_cluster_class_terms(tmp_path):
    """A profile's `dask.worker_config` becomes a `LocalCluster`'s nanny `config`, dask-kubernetes
    workers' `DASK_*` variables (read back by Dask's own parser), and an error elsewhere."""
    import dask.config

    from scalegroups.engines import DaskSection
    from scalegroups.engines.dask import cluster_kwargs

    wanted = {"distributed": {"worker": {"profile": {"enabled": False}}}, "distributed.comm.retry.count": 2}
    local = DaskSection(worker_config=wanted)
    assert cluster_kwargs(local)["config"] == {
        "distributed.worker.profile.enabled": False,
        "distributed.comm.retry.count": 2,
    }
    threads = local.model_copy(update={"cluster_kwargs": {"processes": False}})
    assert "config" not in cluster_kwargs(threads), "in-process workers read the flow process's own configuration"
    kube = DaskSection(cluster_class="dask_kubernetes.operator.KubeCluster", worker_config=wanted)
    variables = cluster_kwargs(kube)["env"]
    assert variables == {
        "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
        "DASK_DISTRIBUTED__COMM__RETRY__COUNT": "2",
    }
    assert dask.config.collect_env(variables) == {
        "distributed": {"worker": {"profile": {"enabled": False}}, "comm": {"retry": {"count": 2}}}
    }
    other = DaskSection(cluster_class="coiled.Cluster", worker_config=wanted)
    with pytest.raises(ConfigurationError, match="dask.worker_config cannot be given to 'coiled.Cluster'"):
        cluster_kwargs(other)


def test_unknown_option_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="invalid option 'clusterkwargs' for the dask runner"):
        make_task_runner("dask", clusterkwargs={})


def test_unknown_runner_lists_the_valid_ones(monkeypatch):
    monkeypatch.setenv("SCALEGROUPS_RUNNER", "spark")
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        make_task_runner()
    assert time.monotonic() - started < 5
    assert str(info.value) == (
        "unknown runner 'spark' (from $SCALEGROUPS_RUNNER); valid runners: thread, process, dask, ray"
    )


def test_bad_max_workers_variable(monkeypatch):
    monkeypatch.setenv("SCALEGROUPS_MAX_WORKERS", "many")
    with pytest.raises(ConfigurationError, match="SCALEGROUPS_MAX_WORKERS='many' is invalid"):
        make_task_runner()


def test_address_for_a_local_pool(monkeypatch):
    with pytest.raises(ConfigurationError, match="only applies to the dask and ray runners"):
        make_task_runner("process", address="tcp://127.0.0.1:8786")
    monkeypatch.setenv("SCALEGROUPS_ADDRESS", "tcp://127.0.0.1:8786")  # meant for dask/ray: ignored
    assert isinstance(make_task_runner("process"), ProcessPoolTaskRunner)


BLOCK = "import sys; sys.modules[{mod!r}] = None\n"


@pytest.mark.parametrize(
    "blocked, code, extra",
    [
        ("ray", "make_task_runner('ray')", "ray"),
        ("prefect_ray", "make_task_runner('ray')", "ray"),
        ("dask_kubernetes", "make_task_runner('dask', profile='k8s-operator')", "k8s"),
        ("coiled", "make_task_runner('dask', profile='cloud')", "cloud"),
    ],
)
def test_missing_extra_names_the_extra(blocked, code, extra):
    """A real ImportError (the module is blocked in a fresh interpreter), not a mock of the engine."""
    script = BLOCK.format(mod=blocked) + (
        "from scalegroups import make_task_runner, MissingExtraError\n"
        f"try:\n    {code}\nexcept MissingExtraError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert f"pip install 'scalegroups[{extra}]'" in out.stdout, out.stderr[-2000:]
