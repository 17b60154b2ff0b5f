"""Cluster profiles: packaged, validated, with errors that name the file, line and field."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from scalegroups import ProfileError, available_profiles, load_profile, make_task_runner


def test_packaged_profiles_validate():
    names = set(available_profiles())
    assert {"local", "k8s", "cloud"} <= names
    for name in names:
        assert load_profile(name).name == name


def test_k8s_profile_points_at_the_in_cluster_services():
    profile = load_profile("k8s")
    assert profile.dask.address == "tls://dask-scheduler:8786"  # mutual TLS (k8s/40-dask.yaml)
    assert profile.ray.address == "ray://ray-head:10001"


def test_cloud_profile_is_dask_on_coiled_and_names_no_ray_cluster():
    """Its Ray half was a placeholder address (ray-head.example.com): now there is none to trip on;
    a Ray address comes from SCALEGROUPS_ADDRESS (README, cluster profiles)."""
    profile = load_profile("cloud")
    assert profile.dask.cluster_class == "coiled.Cluster"
    assert "ray" not in yaml.safe_load(Path(profile.source).read_text())


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("dask:\n  cluster_kwargs:\n    n_workers: [1, 2\nray:\n  address: local\n")
    with pytest.raises(ProfileError) as info:
        load_profile(str(bad))
    message = str(info.value)
    assert str(bad) in message and "line 4" in message


def test_unknown_profile_lists_available(monkeypatch):
    with pytest.raises(ProfileError, match=r"unknown profile 'staging'; available profiles: cloud, k8s"):
        load_profile("staging")


def test_field_of_the_wrong_type_is_named(tmp_path):
    bad = tmp_path / "typed.yaml"
    bad.write_text("process:\n  max_workers: lots\n")
    with pytest.raises(ProfileError) as info:
        load_profile(str(bad))
    assert "process.max_workers" in str(info.value) and "'lots'" in str(info.value)


def test_misspelled_field_is_refused(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("dask:\n  adress: tcp://x:8786\n")
    with pytest.raises(ProfileError, match="dask.adress: Extra inputs are not permitted"):
        load_profile(str(bad))


def test_missing_profile_file(tmp_path):
    with pytest.raises(ProfileError, match="does not exist"):
        make_task_runner("dask", profile=str(tmp_path / "nope.yaml"))


def test_user_profile_by_path(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("description: mine\nray:\n  address: 127.0.0.1:6379\n")
    assert make_task_runner("ray", profile=str(mine)).address == "127.0.0.1:6379"


def test_wheel_ships_the_profiles(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("scalegroups-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for profile in ("local", "k8s", "cloud"):
        assert f"scalegroups/_profiles/{profile}.yaml" in names
