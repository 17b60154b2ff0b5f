"""The benchmark harness runs end to end (smoke sizes); it asserts behaviour, never speed."""

from __future__ import annotations

import re

import pytest
from helpers import run_python


@pytest.mark.slow
def test_quick_benchmark_writes_every_section_and_chart(tmp_path):
    output = tmp_path / "RESULTS.md"
    out, _ = run_python(
        [
            "-m",
            "benchmarks.run",
            "--quick",
            "--engines",
            "thread",
            "--configs",
            "raw,scalegroups",
            "--no-startup",
            "--no-remote",
            "--output",
            str(output),
        ]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = output.read_text()
    for heading in ("## (a)", "## (b)", "## (c)", "## (d)", "## (e)", "## (f)", "## (g)", "## (i)", "## Targets"):
        assert heading in text
    assert "Runs that failed" not in text, text[:3000]
    assert re.search(r"^\| thread \| on \| \d+\.\d \|", text, re.M), "no progress-cost row measured"
    row = re.search(r"^\| thread \| scalegroups \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|", text, re.M)
    assert row and all(re.fullmatch(r"\d+\.\d", cell.strip()) for cell in row.groups()), "no CPU split measured"
    for chart in ("bookkeeping.png", "speedup.png", "startup.png"):
        assert (tmp_path / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", chart


def test_a_failed_start_up_run_is_reported_by_its_error_line_not_its_last_line():
    from benchmarks.startup import _why

    output = (
        "Traceback (most recent call last):\n  File 'x', line 1\n"
        "RuntimeError: Timed out while attempting to connect to ephemeral Prefect API server.\n"
        "04:13:11.606 | INFO    | prefect - Stopping temporary server on http://127.0.0.1:8861\n"
    )
    assert _why(output).startswith("RuntimeError: Timed out")
    assert _why("only a last line\n\n") == "only a last line"
