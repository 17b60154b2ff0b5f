"""Checkpointed groups: a run called again reruns only what had not finished (issue 13)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from crash_flows import executions, fanned_items, noted_items
from helpers import REPO, gone_within, kill_marked, marked_env, selected
from prefect import task
from prefect.cache_policies import INPUTS, NO_CACHE

from scalegroups.checkpoints import CHECKPOINT_POLICY, Checkpointing
from scalegroups.errors import ConfigurationError, ProfileError
from scalegroups.profiles import parse_profile, parse_storage
from scalegroups.runners import build_task_runner, resolve_runner

N_ITEMS = 40
KILL_AFTER = 15  # marker files of the first run before its process group is killed
MAX_SECOND_RUN = 27


def markers(folder: Path) -> list[Path]:
    return list(folder.glob("done-*"))


@pytest.mark.parametrize(
    "runner",
    [
        "thread",  # in `make test`; the engine variants (20-60 s each) in `make test-resilience`
        pytest.param("process", marks=pytest.mark.resilience),
        pytest.param("dask", marks=pytest.mark.resilience),
        pytest.param("ray", marks=[pytest.mark.slow, pytest.mark.resilience]),  # ray: two private Rays start
    ],
)
def test_killed_run_called_again_reruns_only_what_had_not_finished(runner, request, tmp_path, scalegroups_prefect_api):
    selected(request, runner)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    common = {
        "SCALEGROUPS_RUNNER": runner,
        "SCALEGROUPS_MAX_WORKERS": "2",
        "SCALEGROUPS_RESULT_STORAGE": str(tmp_path / "results"),  # this test's checkpoints only
        "PREFECT_API_URL": scalegroups_prefect_api,
    }
    env, marker = marked_env(**common, CRASH_MARKERS=str(first))
    child = subprocess.Popen(
        [sys.executable, "tests/crash_flows.py", "items", str(N_ITEMS)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the kill takes its engine with it
    )
    try:
        deadline = time.monotonic() + 180  # a guard against a hang, not the expectation
        while len(markers(first)) < KILL_AFTER:
            assert child.poll() is None, f"the first run ended before the kill: {child.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "the first run made no progress"
            time.sleep(0.05)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        left = gone_within(marker, 30)
        kill_marked(marker)
    assert left == [], "the killed run left processes"
    done_first = len(markers(first))
    assert done_first < N_ITEMS, "the first run finished before the kill"

    env, _ = marked_env(**common, CRASH_MARKERS=str(second))
    out = subprocess.run(
        [sys.executable, "tests/crash_flows.py", "items", str(N_ITEMS)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    assert json.loads(line.removeprefix("RESULT ")) == {str(i): i * i for i in range(N_ITEMS)}
    rerun = len(markers(second))
    print(f"{runner}: first run executed {done_first} items before the kill, the second {rerun}")
    assert rerun <= MAX_SECOND_RUN, f"the second run executed {rerun} items (first run: {done_first})"


@pytest.mark.scalegroups_runners("thread", "dask")
def test_second_call_reuses_results_and_a_changed_input_is_recomputed(scalegroups_runner, tmp_path):
    salt = uuid.uuid4().hex  # keys of this test only (the default storage is $PREFECT_HOME/storage)
    assert noted_items(4, str(tmp_path), salt) == {i: i * i for i in range(4)}
    assert executions(tmp_path) == [0, 1, 2, 3]
    assert noted_items(4, str(tmp_path), salt) == {i: i * i for i in range(4)}
    assert executions(tmp_path) == [0, 1, 2, 3], "the second call executed tasks again"
    assert noted_items(5, str(tmp_path), salt) == {i: i * i for i in range(5)}
    assert executions(tmp_path) == [0, 1, 2, 3, 4], "only the new item should run"
    other = tmp_path / "other"
    other.mkdir()
    noted_items(2, str(other), salt)  # a changed input (the folder) is a new key
    assert executions(other) == [0, 1]


def test_groups_without_checkpoint_run_again(scalegroups_prefect_api, tmp_path, monkeypatch):
    monkeypatch.setenv("SCALEGROUPS_RUNNER", "thread")
    salt = uuid.uuid4().hex
    noted_items(2, str(tmp_path), salt, checkpoint=False)
    noted_items(2, str(tmp_path), salt, checkpoint=False)
    assert executions(tmp_path) == [0, 0, 1, 1]


def test_env_checkpoints_every_group(scalegroups_prefect_api, tmp_path, monkeypatch):
    monkeypatch.setenv("SCALEGROUPS_RUNNER", "thread")
    monkeypatch.setenv("SCALEGROUPS_CHECKPOINT", "1")
    monkeypatch.setenv("SCALEGROUPS_RESULT_STORAGE", str(tmp_path / "results"))
    salt = uuid.uuid4().hex
    noted_items(2, str(tmp_path), salt, checkpoint=False)  # `unmarked`: no checkpoint of its own
    noted_items(2, str(tmp_path), salt, checkpoint=False)
    assert executions(tmp_path) == [0, 1]
    assert any((tmp_path / "results").iterdir()), "results not in SCALEGROUPS_RESULT_STORAGE"


@pytest.mark.scalegroups_runners("thread", "process")
def test_fan_out_checkpoints_batches(scalegroups_runner, tmp_path):
    salt = uuid.uuid4().hex
    assert fanned_items(5, str(tmp_path), salt) == [i * i for i in range(5)]
    assert fanned_items(5, str(tmp_path), salt) == [i * i for i in range(5)]
    assert fanned_items(6, str(tmp_path), salt) == [i * i for i in range(6)]
    # batches of 2: [0,1] [2,3] [4] then [0,1] [2,3] [4,5] -- only the changed last batch reruns
    assert executions(tmp_path) == [0, 1, 2, 3, 4, 4, 5]


# ------------------------------------------------------------------- engine-free: the options


@task
def plain(x: int) -> int:
    return x


def test_a_checkpointed_task_persists_with_a_key_of_source_and_inputs():
    options = Checkpointing().options(plain)
    assert options == {"persist_result": True, "cache_policy": CHECKPOINT_POLICY}
    stored = Checkpointing(storage="/shared/results").options(plain)
    assert stored["result_storage"] == Path("/shared/results")


def test_the_users_own_cache_choices_are_kept():
    chosen = plain.with_options(cache_policy=INPUTS)
    assert Checkpointing().options(chosen) == {"persist_result": True}
    keyed = plain.with_options(cache_key_fn=lambda ctx, args: "k")
    assert "cache_policy" not in Checkpointing().options(keyed)
    assert Checkpointing().options(plain.with_options(persist_result=False)) == {}
    assert Checkpointing().options(plain.with_options(cache_policy=NO_CACHE)) == {}
    slugged = plain.with_options(result_storage=Path("/mine"))
    assert "result_storage" not in Checkpointing(storage="/shared").options(slugged)


def test_result_storage_is_an_absolute_path_or_a_block_slug(tmp_path):
    assert parse_storage("/mnt/shared/results") == Path("/mnt/shared/results")
    assert parse_storage("s3-bucket/results") == "s3-bucket/results"
    with pytest.raises(ValueError, match="neither an absolute path"):
        parse_storage("results")
    bad = tmp_path / "bad.yaml"
    bad.write_text("result_storage: relative/dir/here\n")
    with pytest.raises(ProfileError, match="result_storage"):
        parse_profile(bad)
    good = tmp_path / "good.yaml"
    good.write_text("result_storage: /mnt/shared/results\n")
    assert parse_profile(good).result_storage == "/mnt/shared/results"


def test_storage_and_checkpoint_default_reach_the_runner(tmp_path, monkeypatch):
    profile = tmp_path / "p.yaml"
    profile.write_text("result_storage: /from/profile\n")
    monkeypatch.setenv("SCALEGROUPS_PROFILE", str(profile))
    monkeypatch.delenv("SCALEGROUPS_RESULT_STORAGE", raising=False)
    monkeypatch.delenv("SCALEGROUPS_CHECKPOINT", raising=False)
    runner = build_task_runner(resolve_runner("thread"))
    assert (runner.checkpoint, runner.result_storage) == (False, "/from/profile")
    assert runner.duplicate().result_storage == "/from/profile"
    monkeypatch.setenv("SCALEGROUPS_RESULT_STORAGE", "/from/env")
    monkeypatch.setenv("SCALEGROUPS_CHECKPOINT", "1")
    spec = resolve_runner("thread")
    assert (spec.checkpoint, spec.result_storage, spec.sources["result_storage"]) == (
        True,
        "/from/env",
        "$SCALEGROUPS_RESULT_STORAGE",
    )
    monkeypatch.setenv("SCALEGROUPS_RESULT_STORAGE", "not/a/valid/slug/or/path")
    with pytest.raises(ConfigurationError, match="SCALEGROUPS_RESULT_STORAGE"):
        resolve_runner("thread")


SOURCE = """
import uuid
from pathlib import Path
from prefect import task
import scalegroups

@task
def compute(folder: str, salt: str, item: int) -> int:
    Path(folder, f"ran-{item}-{uuid.uuid4().hex}").write_text("")
    return RESULT

@scalegroups.group(checkpoint=True)
def computed(item: int, folder: str, salt: str):
    return compute.submit(folder, salt, item)

@scalegroups.flow
def run(n: int, folder: str, salt: str) -> list:
    return [r.result() for r in computed.map(range(n), folder=folder, salt=salt)]
"""


def test_a_changed_task_source_is_recomputed(scalegroups_prefect_api, tmp_path, monkeypatch):
    import importlib

    monkeypatch.setenv("SCALEGROUPS_RUNNER", "thread")
    monkeypatch.syspath_prepend(str(tmp_path))
    salt, folder = uuid.uuid4().hex, tmp_path / "ran"
    folder.mkdir()

    def flow_with(module: str, result: str):
        (tmp_path / f"{module}.py").write_text(SOURCE.replace("RESULT", result))
        return importlib.import_module(module).run

    assert flow_with("first", "item * 2")(2, str(folder), salt) == [0, 2]
    assert flow_with("same_source", "item * 2")(2, str(folder), salt) == [0, 2]  # another file, same source
    assert executions(folder) == [0, 1]
    assert flow_with("changed", "item * 3")(2, str(folder), salt) == [0, 3]
    assert executions(folder) == [0, 0, 1, 1], "a changed task source must be recomputed"
