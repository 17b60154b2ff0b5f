"""Run by test_prefect_compat.py in a child process: Prefect's task-run recorder consumer stopped
while its periodic flush is writing. The database write is the one piece replaced (module-wide,
hence a process of its own: a server in the test's process must keep its real recorder): a write
that has not returned when the service stops, then one that succeeds.

`python tests/recorder_flush_stop.py [quiet]` prints one JSON line: the batch sizes written, the
messages logged at WARNING or above (with whether each carried a CancelledError) and, with
`quiet`, how many reports scalegroups' filter dropped.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import sys
import uuid

from prefect.server.events.schemas.events import ReceivedEvent
from prefect.server.services import task_run_recorder as recorder

from scalegroups import prefect_compat as compat


class _Message:
    """What the consumer reads from Prefect's messaging: the event's JSON in `data`."""

    def __init__(self, data: str) -> None:
        self.data = data
        self.attributes: dict[str, str] = {}


async def stop_during_a_flush(writes: list[int]) -> None:
    writing = asyncio.Event()

    async def write(events: list) -> None:
        writes.append(len(events))
        if len(writes) == 1:
            writing.set()
            await asyncio.Event().wait()  # cancelled by the service's stop

    recorder.record_bulk_task_run_events = write
    event = ReceivedEvent(
        occurred=datetime.datetime.now(datetime.UTC),
        event="prefect.task-run.Completed",
        resource={"prefect.resource.id": f"prefect.task-run.{uuid.uuid4()}", "prefect.orchestration": "client"},
        id=uuid.uuid4(),
    )
    async with recorder.consumer(write_batch_size=100, flush_every=1) as handler:
        await handler(_Message(event.model_dump_json()))
        await asyncio.wait_for(writing.wait(), timeout=60)


def main(quiet: bool) -> dict:
    writes: list[int] = []
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logging.getLogger(compat.TASK_RUN_RECORDER_LOGGER).addHandler(Keep(level=logging.WARNING))
    dropped = None
    if quiet:
        with compat.cancelled_flush_retried_quietly() as filter_:
            asyncio.run(stop_during_a_flush(writes))
            dropped = len(filter_.dropped)
    else:
        asyncio.run(stop_during_a_flush(writes))
    logged = [
        {"message": r.getMessage(), "cancelled": isinstance(r.exc_info and r.exc_info[1], asyncio.CancelledError)}
        for r in records
    ]
    return {"writes": writes, "logged": logged, "dropped": dropped}


if __name__ == "__main__":
    print(json.dumps(main(quiet=sys.argv[1:] == ["quiet"])))
