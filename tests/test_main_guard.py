"""A script that runs its flow when imported is refused on engines whose workers import it again.

The process engine and a Dask `LocalCluster` spawn worker processes that import the flow's script;
a flow called from the script's unguarded top level would run again in each of them.
"""

from __future__ import annotations

import sys
import types

import pytest
from helpers import processes_with_marker, run_python

from scalegroups import make_task_runner
from scalegroups.main_guard import unguarded_script_line

UNGUARDED = """\
import scalegroups
from prefect import task


@task
def double(x: int) -> int:
    return 2 * x


@scalegroups.flow
def main() -> int:
    return double.submit(1).result()


print(main())
"""


def where_found(tmp_path, monkeypatch, source: str) -> list:
    """Run `source` as the `__main__` script; each `probe()` in it records `unguarded_script_line()`."""
    path = tmp_path / "script.py"
    path.write_text(source)
    module = types.ModuleType("__main__")
    module.__file__ = str(path)
    monkeypatch.setitem(sys.modules, "__main__", module)
    found: list = []
    module.__dict__["probe"] = lambda: found.append(unguarded_script_line())
    exec(compile(source, str(path), "exec"), module.__dict__)
    return [None if where is None else (where[0].name, where[1]) for where in found]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("probe()\n", [("script.py", 1)]),
        ("def run():\n    probe()\n\n\nrun()\n", [("script.py", 5)]),
        ('if __name__ == "__main__":\n    probe()\n', [None]),
        ('if "__main__" == __name__:\n    probe()\n', [None]),
        ('def run():\n    probe()\n\n\nif __name__ == "__main__":\n    run()\n', [None]),
        ('try:\n    if __name__ == "__main__":\n        probe()\nexcept KeyboardInterrupt:\n    pass\n', [None]),
        ('import os\nif os.environ.get("X") is None:\n    probe()\n', [("script.py", 3)]),
        ('probe()\nif __name__ == "__main__":\n    probe()\n', [("script.py", 1), None]),
    ],
)
def test_unguarded_calls_are_found_at_the_scripts_line(tmp_path, monkeypatch, source, expected):
    assert where_found(tmp_path, monkeypatch, source) == expected


def test_no_script_means_nothing_to_refuse(monkeypatch):
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # a notebook, `python -c`
    assert unguarded_script_line() is None


def test_only_engines_that_spawn_local_workers_check_the_script():
    assert make_task_runner("process").script_importing_engine() == "process"
    assert make_task_runner("dask").script_importing_engine() == "Dask LocalCluster"
    assert make_task_runner("dask", cluster_kwargs={"processes": False}).script_importing_engine() is None
    assert make_task_runner("dask", address="tcp://127.0.0.1:8786").script_importing_engine() is None
    assert make_task_runner("thread").script_importing_engine() is None
    assert make_task_runner("ray").script_importing_engine() is None


@pytest.mark.parametrize(("runner", "engine"), [("process", "process"), ("dask", "Dask LocalCluster")])
def test_a_script_that_runs_its_flow_when_imported_gets_one_message_and_no_workers(runner, engine, tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    out, marker = run_python([str(script)], {"SCALEGROUPS_RUNNER": runner, "PREFECT_HOME": str(tmp_path / "home")})
    assert out.returncode == 1, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == (
        f"scalegroups.errors.ConfigurationError: unguarded.py, line 15 runs the flow when the file is imported, "
        f"but the {engine} engine starts worker processes that import this file again, so each of them would "
        'run the flow too. Put the call under `if __name__ == "__main__":`.'
    )
    assert "An attempt has been made" not in out.stderr and "Flow run" not in out.stderr, out.stderr[-3000:]
    assert processes_with_marker(marker) == []
