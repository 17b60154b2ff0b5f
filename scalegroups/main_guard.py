"""Refuse, before any worker starts, a flow called from a script's unguarded top level.

Engines that start local worker processes with Python's *spawn* method (the process engine, a
Dask `LocalCluster`) make each worker import the script again. A script that calls its flow at
top level, not under `if __name__ == "__main__":`, would then run the flow again in every worker:
today that ends in hundreds of lines of tracebacks from multiprocessing and Dask's nanny, and in
failed phantom flow runs in the UI. This module finds such a call (the `__main__` module's frame
on the call stack, at a line that no `if` on `__name__` encloses) so the runner can say so in one
sentence instead.
"""

from __future__ import annotations

import ast
import sys
import tokenize
from functools import lru_cache
from pathlib import Path
from types import FrameType

from scalegroups.errors import ConfigurationError


def _main_script() -> Path | None:
    """The file `python FILE` or `python -m MODULE` runs as `__main__`, if there is one."""
    main = sys.modules.get("__main__")
    filename = getattr(main, "__file__", None)
    return Path(filename).resolve() if filename else None


def _script_frame(script: Path, frame: FrameType | None) -> FrameType | None:
    """The outermost frame running the script's module-level code."""
    found = None
    while frame is not None:
        code = frame.f_code
        at_top_level = code.co_name == "<module>" and frame.f_globals.get("__name__") == "__main__"
        if at_top_level and Path(code.co_filename).resolve() == script:
            found = frame
        frame = frame.f_back
    return found


def _tests_name(node: ast.expr) -> bool:
    return any(isinstance(name, ast.Name) and name.id == "__name__" for name in ast.walk(node))


@lru_cache(maxsize=8)
def _guarded_lines(script: Path, mtime_ns: int) -> tuple[tuple[int, int], ...]:
    """Line ranges of the script's module-level `if` blocks that test `__name__`."""
    with tokenize.open(script) as source:
        tree = ast.parse(source.read(), str(script))
    ranges: list[tuple[int, int]] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:  # module level, including `try`/`with` blocks and nested `if`s there
        node = pending.pop()
        if isinstance(node, ast.If) and _tests_name(node.test):
            ranges.append((node.lineno, node.end_lineno or node.lineno))
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for field in ("body", "orelse", "finalbody"):
                pending.extend(getattr(node, field, []))
            for handler in getattr(node, "handlers", []):
                pending.extend(handler.body)
    return tuple(ranges)


def unguarded_script_line() -> tuple[Path, int] | None:
    """Where the running script calls into scalegroups from its unguarded top level, if it does.

    None when there is no script (a notebook, `python -c`, a REPL), when the call comes from inside
    an `if __name__ ...:` block, or when the script cannot be read or parsed (then nothing is known).
    """
    script = _main_script()
    if script is None:
        return None
    frame = _script_frame(script, sys._getframe(1))
    if frame is None:
        return None
    line = frame.f_lineno
    try:
        guarded = _guarded_lines(script, script.stat().st_mtime_ns)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    if any(first <= line <= last for first, last in guarded):
        return None
    return script, line


def refuse_unguarded_script(engine: str) -> None:
    """Raise `ConfigurationError` when the script calls its flow from unguarded top-level code,
    which `engine`'s spawned worker processes would run again as they import the script."""
    where = unguarded_script_line()
    if where is None:
        return
    script, line = where
    shown = script.name if not script.is_relative_to(Path.cwd()) else script.relative_to(Path.cwd())
    raise ConfigurationError(
        f"{shown}, line {line} runs the flow when the file is imported, but the {engine} engine "
        "starts worker processes that import this file again, so each of them would run the flow "
        'too. Put the call under `if __name__ == "__main__":`.'
    )
