"""examples/seed.py as plain Prefect wrote it, before scalegroups: the start-up baseline."""

from prefect import flow, task


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
    raw = extract.submit(item)
    clean = transform.submit(raw)
    note = audit.submit(item, wait_for=[raw])
    return load.submit(clean, note)


@flow
def main(items: list[int] | None = None) -> list[dict]:
    futures = [group_a(item) for item in (items or list(range(5)))]
    return [future.result() for future in futures]


if __name__ == "__main__":
    print(main())
