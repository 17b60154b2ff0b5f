"""The project's tests use the scalegroups pytest plugin (installed with the package)."""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
