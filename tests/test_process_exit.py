"""A process that ran a flow exits without the interpreter's long garbage-collection passes."""

from __future__ import annotations

import pytest
from helpers import run_python

CHILD = """
import atexit, gc, pathlib, sys

out = pathlib.Path(sys.argv[1])
# registered before any runner starts, so it runs after scalegroups' exit hook
atexit.register(lambda: (out / "frozen").write_text(str(gc.get_freeze_count())))

from prefect import flow
from scalegroups import make_task_runner


class Cycle:
    def __init__(self):
        self.me = self

    def __del__(self):
        (out / "finalized").write_text("yes")


@flow(task_runner=make_task_runner("thread", max_workers=1))
def one() -> int:
    return 1


assert one() == 1
gc.disable()  # from here on, only an exit collection can finalize the cycle
Cycle()
"""


@pytest.mark.parametrize("fast_exit", ["1", "0"])
def test_exit_collects_once_then_freezes(fast_exit, scalegroups_prefect_api, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out, _ = run_python(
        [str(script), str(tmp_path)],
        # start-up freezing off (`scalegroups.startup_gc`): any freeze then comes from the exit hook
        env={
            "PREFECT_API_URL": scalegroups_prefect_api,
            "SCALEGROUPS_FAST_EXIT": fast_exit,
            "SCALEGROUPS_GC_FREEZE": "0",
        },
    )
    assert out.returncode == 0, out.stderr[-3000:]
    frozen = int((tmp_path / "frozen").read_text())
    assert (frozen > 0) == (fast_exit == "1"), frozen
    # cyclic garbage that exists at exit is still finalized, __del__ included
    assert (tmp_path / "finalized").read_text() == "yes"
