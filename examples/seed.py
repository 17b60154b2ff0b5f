"""The pattern scalegroups starts from: a plain-function group of tasks wired with `wait_for`.

Only `task_runner=make_task_runner()` was added to the original code. Choose the engine without
editing this file:

    SCALEGROUPS_RUNNER=dask python examples/seed.py
"""

from prefect import flow, task

from scalegroups import make_task_runner


@task
def extract(item: int) -> int:
    return item * 10


@task
def transform(value: int) -> int:
    return value + 1


@task
def audit(item: int) -> str:
    return f"audited {item}"


@task
def load(value: int, note: str) -> dict:
    return {"value": value, "note": note}


def group_a(item: int):
    """Submit one item's tasks; the flow waits on the returned future."""
    raw = extract.submit(item)
    clean = transform.submit(raw)
    note = audit.submit(item, wait_for=[raw])
    return load.submit(clean, note)


@flow(task_runner=make_task_runner())
def main(items: list[int] | None = None) -> list[dict]:
    futures = [group_a(item) for item in (items or list(range(5)))]
    return [future.result() for future in futures]


if __name__ == "__main__":
    print(main())
