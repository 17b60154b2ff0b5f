"""The project's tests use the scalegroups pytest plugin (installed with the package)."""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# `make test` runs pytest-xdist workers: each gets a Prefect home (a database) of its own, as
# two local servers writing one SQLite file would wait on each other's locks. Set before anything
# imports Prefect (the scalegroups plugin does not).
_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker and os.environ.get("PREFECT_HOME"):
    os.environ["PREFECT_HOME"] = os.path.join(os.environ["PREFECT_HOME"], _worker)
    # Prefect creates its home without parents and warns when it cannot (a clean checkout has no
    # .prefect-test yet)
    os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)

# tests/compat/ drives upstream suites in their own pytest processes (`make test-compat`); it holds
# no tests of ours, and `make test` must never import its binding plugin.
collect_ignore = ["compat"]
