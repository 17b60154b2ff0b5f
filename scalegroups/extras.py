"""Import optional dependencies, failing with the name of the extra that provides them."""

from __future__ import annotations

import importlib
from types import ModuleType

from scalegroups.errors import MissingExtraError

#: top-level module -> the scalegroups extra that installs it
EXTRA_FOR_MODULE: dict[str, str] = {
    "ray": "ray",
    "prefect_ray": "ray",
    "dask_kubernetes": "k8s",
    "kr8s": "k8s",
    "coiled": "cloud",
    "dask_cloudprovider": "cloud",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` or raise `MissingExtraError` naming the extra to install for `purpose`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        root = module.split(".")[0]
        missing = (exc.name or root).split(".")[0]
        extra = EXTRA_FOR_MODULE.get(root) or EXTRA_FOR_MODULE.get(missing)
        hint = (
            f"install it with: pip install 'scalegroups[{extra}]'"
            if extra
            else f"install the package that provides '{root}'"
        )
        raise MissingExtraError(
            f"{purpose} needs the Python module '{missing}', which is not installed; {hint}"
        ) from None
