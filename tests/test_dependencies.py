"""Every package the code imports is declared in pyproject.toml (core or an extra)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from helpers import REPO

#: folders whose imports must be declared, and the extras that may declare them
CHECKED = {"scalegroups": ("", "ray", "k8s", "cloud"), "benchmarks": ("", "ray", "bench", "test")}


def top_level_imports(folder: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def declared(extras: tuple[str, ...]) -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        if extra:
            requirements += project["optional-dependencies"][extra]
    return {re.split(r"[<>=\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_every_imported_package_is_declared():
    distributions = packages_distributions()
    missing = []
    for folder, extras in CHECKED.items():
        allowed = declared(extras) | {"scalegroups"}
        for module, where in top_level_imports(folder).items():
            if module in sys.stdlib_module_names or module in {folder, "scalegroups", "tests", "benchmarks"}:
                continue
            if module == "pytest" and where == "scalegroups/testing.py":
                continue  # the pytest plugin: only pytest itself loads it
            names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
            if not names & allowed:
                missing.append(f"{module} (imported in {where}; from {sorted(names)})")
    assert missing == [], "imported but not declared in pyproject.toml: " + "; ".join(missing)
