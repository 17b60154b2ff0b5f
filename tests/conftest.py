"""The project's tests use the scalegroups pytest plugin (installed with the package)."""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# tests/compat/ drives upstream suites in their own pytest processes (`make test-compat`); it holds
# no tests of ours, and `make test` must never import its binding plugin.
collect_ignore = ["compat"]
