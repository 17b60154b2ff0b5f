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
from helpers import REPO, kill_marked, marked_env

N_ITEMS = 40
KILL_AFTER = 15


@pytest.mark.scalegroups_runners("thread", "dask")
def test_second_call_reuses_results_and_a_changed_input_is_recomputed(scalegroups_runner, tmp_path):
    salt = uuid.uuid4().hex  # keys of this test only (the default storage is $PREFECT_HOME/storage)
    assert noted_items(4, str(tmp_path), salt) == {i: i * i for i in range(4)}
    assert executions(tmp_path) == [0, 1, 2, 3]
    assert noted_items(4, str(tmp_path), salt) == {i: i * i for i in range(4)}
    assert executions(tmp_path) == [0, 1, 2, 3], "the second call executed tasks again"
    assert noted_items(5, str(tmp_path), salt) == {i: i * i for i in range(5)}
    assert executions(tmp_path) == [0, 1, 2, 3, 4], "only the new item should run"
    other = str(tmp_path / "other")
    os.mkdir(other)
    noted_items(2, other, salt)  # a changed input (the folder) is a new key
    assert executions(Path(other)) == [0, 1]


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
