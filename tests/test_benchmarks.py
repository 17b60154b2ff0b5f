"""The benchmark harness runs end to end (smoke sizes); it asserts behaviour, never speed."""

from __future__ import annotations

import pytest
from helpers import REPO, run_python


@pytest.mark.slow
def test_quick_benchmark_writes_every_section(tmp_path):
    output = tmp_path / "RESULTS.md"
    out, _ = run_python(["-m", "benchmarks.run", "--quick", "--engines", "thread", "--output", str(output)])
    assert out.returncode == 0, out.stderr[-3000:]
    text = output.read_text()
    for heading in ("## (a)", "## (b)", "## (c)", "## (d)", "## (e)", "## Targets"):
        assert heading in text
    assert "failed" not in text.split("## (a)")[0], text[:2000]
    assert "| thread | " in text and REPO.exists()
