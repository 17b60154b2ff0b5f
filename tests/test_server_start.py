"""A local server starts on a database scalegroups prepared without Prefect's block registration."""

from __future__ import annotations

import json

import pytest
from helpers import processes_with_marker, run_python

CHILD = """
import json, sys
from prefect import flow, get_client
from scalegroups import make_task_runner


@flow(task_runner=make_task_runner("thread", max_workers=1))
def block_types() -> list[str]:
    with get_client(sync_client=True) as client:
        return sorted(t.slug for t in client.read_block_types())


print(json.dumps(block_types()))
"""


@pytest.mark.slow
@pytest.mark.parametrize("marker", ["as written", "stale"])
def test_a_prepared_database_skips_block_registration_unless_its_marker_is_stale(marker, tmp_path):
    from scalegroups.server import blocks_fingerprint

    home = tmp_path / "home"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {"PREFECT_HOME": str(home)}
    if marker == "stale":  # a database from an older Prefect or other collections: Prefect registers
        home.mkdir()
        first, _ = run_python(["-c", "from scalegroups.server import prepare_database; prepare_database()"], env=env)
        assert first.returncode == 0, first.stderr[-2000:]
        (home / "prefect.db.scalegroups-blocks").write_text("prefect=0.0.0")

    out, tag = run_python([str(script)], env=env)

    assert out.returncode == 0, out.stderr[-3000:]
    slugs = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"secret", "slack-webhook", "aws-credentials"} <= set(slugs)  # core and collections (catalog) blocks
    registered_at_start = (home / "memo_store.toml").exists()  # Prefect's memo of its registration
    assert registered_at_start == (marker == "stale")
    if marker == "as written":
        assert (home / "prefect.db.scalegroups-blocks").read_text() == blocks_fingerprint()
    assert processes_with_marker(tag) == []


STOPPED_WHILE_STARTING = """
import threading
from scalegroups.server import InProcessServer

server = InProcessServer()
server.start()
server.stop()
print("ALIVE", [t.name for t in threading.enumerate() if t.name == "scalegroups-api"])
"""


@pytest.mark.parametrize("when", ["at once", "once its database is ready"])
def test_a_server_stopped_while_it_starts_ends_its_thread(when, tmp_path):
    # stop() waits up to 30 s for the server's thread; a stop that came before the server existed
    # used to leave it starting and then serving, so that wait ran out at every exit
    child = STOPPED_WHILE_STARTING
    if when != "at once":
        child = child.replace(
            "server.start()",
            "server.start()\nimport time\nwhile server.database == 'not prepared':\n    time.sleep(0.01)",
        )
    out, _ = run_python(["-c", child], {"PREFECT_HOME": str(tmp_path / "home")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ALIVE []" in out.stdout, out.stdout + out.stderr[-2000:]
