"""`make test-compat`: the upstream runner test suites, on the stock runners and on ours.

For each suite, the sdist of the *installed* version is downloaded (`pip download --no-binary
:all: --no-deps`, cached in `.compat-cache/`), only its `pyproject.toml` (pytest settings) and the
test files it needs are extracted, and its `tests/test_task_runners.py` runs twice, untouched:

- **stock**: as upstream runs it (our `compat_bind` plugin only records results and checks that the
  test module really sees the stock class);
- **ours**: `compat_bind` replaces the stock runner class by the scalegroups subclass before the
  test module is imported, and checks that the test module sees ours.

A *regression* is a test that passed on stock and failed (or errored, or did not run) on ours. A
test that fails on stock is never one, whatever it does on ours. The suspects are re-run once,
apart from the rest of the suite (all of a suite's suspects in one fresh pytest process per
runner), on both runners (2 shared cores make the timing tests flaky): a suspect is a regression
only if it then fails on ours and passes on stock. The stock failures are always printed.

Every run gets a fresh PREFECT_HOME and Ray temp folder, none of the caller's PREFECT_* or
SCALEGROUPS_* variables, PREFECT_SERVER_ANALYTICS_ENABLED=false and a 120 s ephemeral server
start-up timeout, which `compat_bind` also makes upstream's `prefect_test_harness()` wait (its own
is a fixed 30 s; its server start took 28 s on an idle machine), the same in both modes; our own
pytest plugin is disabled in both. Processes a run leaves behind (found by an inherited marker
variable) are stopped and named.

Exit status: 0 no regression; 1 regressions; 2 a run could not run (download, collection, a
wrong binding, a timeout, a stock run where nothing passed).

Suites:

- prefect-dask `tests/test_task_runners.py`: all but the `process_pool` runner variant
  (`DASK_SKIPPED_VARIANTS`; `--full` runs it).
- prefect-ray `tests/test_task_runners.py`: the `default_ray_task_runner` variant and the tests
  without a runner fixture. Its three cluster variants start a Ray cluster (and a hosted Prefect
  API) per test; see `RAY_SKIPPED_VARIANTS` for the measured cost (`--full` runs them).
- Prefect's own `tests/test_task_runners.py` (ThreadPoolTaskRunner / ProcessPoolTaskRunner):
  cannot run; see `PREFECT_OWN_SUITE`. The `prefect` sdist is downloaded anyway so this check
  notices if a release starts shipping the file.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("COMPAT_CACHE", REPO / ".compat-cache"))
MARKER = "SCALEGROUPS_COMPAT_RUN"  # every process a run starts inherits it: how leftovers are found

# Left out unless --full, to keep `make test-compat` within its time (measured figures: README).
# prefect-dask: `dask_task_runner_with_process_pool` is `LocalCluster(processes=True)`, which is
# also what `default_dask_task_runner` builds on Linux: the same engine set-up for our runner, and
# the costliest variant after the default (each test starts a cluster of worker processes).
DASK_SKIPPED_VARIANTS = ["dask_task_runner_with_process_pool"]
# prefect-ray: each of the three cluster variants starts its own Ray cluster (an in-process
# two-node cluster, a temporary one, or `ray start` + Ray Client) and a hosted Prefect API for
# each of its 12 tests: measured 12-38 s per test, about 14 minutes per run for the 36. The
# `ray start` variant also runs `ray stop --force`, which stops every Ray on the machine.
RAY_SKIPPED_VARIANTS = [
    "ray_task_runner_with_inprocess_cluster",
    "ray_task_runner_with_temporary_cluster",
    "ray_task_runner_with_existing_cluster",
]

PREFECT_OWN_SUITE = """\
Prefect's own tests/test_task_runners.py (ThreadPoolTaskRunner, ProcessPoolTaskRunner) cannot run here:
the prefect {version} sdist ships src/prefect only, no tests/ directory (checked in the downloaded
sdist just now). The file lives only in Prefect's git repository, which this machine and CI cannot
reach (package registries only), and copying it into this repository is not an option (their
code stays theirs). Were it available, it would need, besides prefect.testing.fixtures
(asserting_events_worker, reset_worker_events, events_pipeline, use_hosted_api_server, shipped in
the wheel): prefect_client from Prefect's tests/fixtures/client.py, and the session set-up of
Prefect's tests/conftest.py (a test database and test settings; that conftest imports asyncpg,
numpy and 11 fixture modules of tests/fixtures/)."""


@dataclass
class Suite:
    name: str  # short name, COMPAT_SUITE for the plugin
    dist: str  # distribution whose installed version is tested
    test_file: str = "tests/test_task_runners.py"
    extract: list[str] = field(default_factory=lambda: ["pyproject.toml", "tests/__init__.py", "tests/conftest.py"])
    deselect_params: list[str] = field(default_factory=list)
    stock: str = ""
    ours: str = ""


SUITES = {
    "dask": Suite(
        "dask",
        "prefect-dask",
        deselect_params=DASK_SKIPPED_VARIANTS,
        stock="prefect_dask.task_runners.DaskTaskRunner",
        ours="scalegroups.engines.dask.DaskRunner",
    ),
    "ray": Suite(
        "ray",
        "prefect-ray",
        deselect_params=RAY_SKIPPED_VARIANTS,
        stock="prefect_ray.task_runners.RayTaskRunner",
        ours="scalegroups.engines.ray.RayRunner",
    ),
}


_output = threading.Lock()
_lane = threading.local()  # each suite runs in its own thread; its lines carry its name


def say(message: str = "") -> None:
    prefix = getattr(_lane, "prefix", "")
    with _output:
        for line in message.split("\n"):
            sys.stdout.write(f"{prefix}{line}\n" if prefix and line else f"{line}\n")
        sys.stdout.flush()


FAILING = {"failed", "error", "did not run"}


class CouldNotRun(Exception):
    """A run gave no comparable result."""


# -- sdists ---------------------------------------------------------------------------------------
def sdist(dist: str) -> tuple[str, Path]:
    """The cached sdist of the installed version of `dist` (downloaded when missing)."""
    version = importlib.metadata.version(dist)
    folder = CACHE / "sdists"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{dist.replace('-', '_')}-{version}"
    for name in (f"{stem}.tar.gz", f"{dist}-{version}.tar.gz"):
        if (folder / name).is_file():
            return version, folder / name
    say(f"downloading the {dist} {version} sdist into {folder}")
    command = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--quiet"]
    done = subprocess.run([*command, "-d", str(folder), f"{dist}=={version}"], capture_output=True, text=True)
    for name in (f"{stem}.tar.gz", f"{dist}-{version}.tar.gz"):
        if (folder / name).is_file():
            return version, folder / name
    raise CouldNotRun(f"pip download {dist}=={version} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def extract(suite: Suite) -> tuple[str, Path]:
    """Extract the suite's test files and pytest settings; return (version, the project folder)."""
    version, archive = sdist(suite.dist)
    target = CACHE / "src" / f"{suite.dist}-{version}"
    wanted = [*suite.extract, suite.test_file]
    if all((target / name).is_file() for name in wanted):
        return version, target
    shutil.rmtree(target, ignore_errors=True)
    with tarfile.open(archive) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name and m.isfile()}
        missing = [name for name in wanted if name not in members]
        if missing:
            raise CouldNotRun(f"{archive.name} has no {', '.join(missing)}")
        for name in wanted:
            source = tar.extractfile(members[name])
            assert source is not None
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(source.read())
    return version, target


def check_prefect_own_suite() -> str:
    """Why Prefect's own runner tests are not run (or that a release now ships them)."""
    try:
        version, archive = sdist("prefect")
    except CouldNotRun as exc:
        return f"not checked: {exc}"
    with tarfile.open(archive) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    if "tests/test_task_runners.py" in names:
        return (
            f"NOTE: the prefect {version} sdist now ships tests/test_task_runners.py: it is not wired into "
            "this harness yet (compat_bind.BINDINGS has no thread/process entry)."
        )
    return PREFECT_OWN_SUITE.format(version=version)


# -- one pytest run -------------------------------------------------------------------------------
@dataclass
class Run:
    mode: str
    seconds: float
    exitstatus: int | None
    tests: dict[str, dict[str, Any]]
    report: dict[str, Any]
    leftovers: list[str]

    def count(self, outcome: str) -> int:
        return sum(1 for t in self.tests.values() if t["outcome"] == outcome)

    def failed(self) -> set[str]:
        return {nodeid for nodeid, t in self.tests.items() if t["outcome"] in FAILING}


def run_pytest(
    suite: Suite, project: Path, mode: str, nodeids: list[str], timeout: float, label: str, quiet: bool = False
) -> Run:
    """Run the upstream test file (or some of its tests) in a fresh process and Prefect home."""
    marker = uuid.uuid4().hex
    home = Path(tempfile.mkdtemp(prefix="sgc-"))  # short: Ray's socket paths below it have a length limit
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{suite.name}-{label}.log"
    report = logs / f"{suite.name}-{label}.json"
    report.unlink(missing_ok=True)
    # The user's Prefect and scalegroups settings do not leak in; both modes get the same environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SCALEGROUPS_", "COMPAT_"))}
    env.update(
        # as in an activated venv: upstream fixtures run `uvicorn` (hosted API) and `ray` by name
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)]),
        PREFECT_HOME=str(home / "prefect-home"),
        # Ray's session files, and the file through which an address-less ray.init() finds a running
        # cluster: private, so upstream's ray.init() never joins a Ray someone else started here
        RAY_TMPDIR=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PYTHONPATH=os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]),
        COMPAT_SUITE=suite.name,
        COMPAT_MODE=mode,
        COMPAT_REPORT=str(report),
        COMPAT_DESELECT_PARAMS=",".join(suite.deselect_params),
        **{MARKER: marker},
    )
    command = [
        sys.executable,
        "-m",
        "pytest",
        *(nodeids or [suite.test_file]),
        "-p",
        "compat_bind",
        "-p",
        "no:scalegroups",  # our own pytest plugin stays out of upstream's runs (both modes)
        "-p",
        "no:cacheprovider",
        # per test; the slowest took 45 s on a loaded machine. A hung session fixture (seen once:
        # prefect-ray's hosted API server under a load of 9) costs this long before the re-run.
        "--timeout=180",
        # Native tracebacks: pytest's own formatting parses source with `ast`, which on Python 3.11
        # crashed a whole run (INTERNALERROR "AST constructor recursion depth mismatch", a CPython
        # bug with other threads compiling at the same time).
        "--tb=native",
        "-rfEs",
        "--durations=10",
    ]
    say(f"--- {suite.dist} {label}: {' '.join(command[3:])}")
    start = time.monotonic()
    timed_out = threading.Event()
    # Output goes to the log file, not a pipe: a leftover engine process holding a pipe open
    # would keep us waiting after pytest ended. The log is copied to our output as it grows.
    with open(log, "w") as out, open(log) as follow:
        process = subprocess.Popen(
            command,
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so that a timeout can stop the whole process group
        )

        def stop() -> None:
            timed_out.set()
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)

        watchdog = threading.Timer(timeout, stop)
        watchdog.start()
        echo = Echo(quiet)
        try:
            while True:
                ended = process.poll() is not None
                echo.lines(follow.readlines())
                if ended:
                    break
                time.sleep(0.5)
        except BaseException:  # Ctrl-C does not reach the run's own session: stop it here
            stop()
            process.wait()
            stop_leftovers(marker, grace=0)
            raise
        finally:
            watchdog.cancel()
        exitstatus: int | None = process.returncode
    if timed_out.is_set():
        say(f"!!! {label}: no end after {timeout:.0f} s: stopped")
        exitstatus = None
    seconds = time.monotonic() - start
    leftovers = stop_leftovers(marker)
    data = json.loads(report.read_text()) if report.is_file() else {}
    shutil.rmtree(home, ignore_errors=True)
    say(f"--- {label}: pytest exit status {exitstatus}, {seconds:.0f} s (log: {os.path.relpath(log)})")
    if leftovers:
        say(f"--- {label}: left running after pytest ended, now stopped: {', '.join(leftovers)}")
    return Run(mode, seconds, exitstatus, data.get("tests", {}), data, leftovers)


class Echo:
    """Copy pytest's output to ours, except the failure and warning sections (with their captured
    logs they run to thousands of lines): those stay in the log file; our summary gives the end
    of each failure's traceback."""

    HIDE = re.compile(r"^=+ (FAILURES|ERRORS|warnings summary) =+$")
    SHOW = re.compile(r"^=+ .*(slowest|short test summary info|passed|failed|error|skipped).* =+$")

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.hiding = False

    def lines(self, lines: list[str]) -> None:
        for line in lines:
            if self.quiet:
                continue
            if self.HIDE.match(line.strip()):
                self.hiding = True
                say(f"{line.rstrip()}\n(the details are in the log file named below)")
            elif self.hiding and self.SHOW.match(line.strip()):
                self.hiding = False
            if not self.hiding:
                say(line.rstrip("\n"))


def stop_leftovers(marker: str, grace: float = 10.0) -> list[str]:
    """End every process that inherited this run's marker (Ray, Dask, Prefect servers); name them."""

    def marked() -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["pid", "name"]):
            try:
                if process.environ().get(MARKER) == marker:
                    found.append(process)
            except (psutil.Error, OSError):
                continue
        return found

    deadline = time.monotonic() + grace  # give them a moment to end by themselves
    while (left := marked()) and time.monotonic() < deadline:
        time.sleep(0.5)
    names = [f"{p.info['name']}[{p.pid}]" for p in left]
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(left, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    return names


def check_run(suite: Suite, run: Run, expected_class: str) -> None:
    """Raise `CouldNotRun` unless the run collected, saw the expected class and gave results."""
    report = run.report
    if run.exitstatus is None:
        raise CouldNotRun(f"{run.mode}: timed out")
    if not report:
        raise CouldNotRun(f"{run.mode}: pytest exit status {run.exitstatus} and no report (the plugin did not load?)")
    if report.get("fatal"):
        raise CouldNotRun(f"{run.mode}: {report['fatal']}")
    if report.get("collect_errors"):
        first = report["collect_errors"][0]
        raise CouldNotRun(f"{run.mode}: collection error in {first['nodeid']}:\n{first['error']}")
    seen = {actual for names in report.get("seen", {}).values() for actual in names.values()}
    if seen != {expected_class}:
        raise CouldNotRun(f"{run.mode}: the test module saw {seen}, expected {expected_class}")
    if run.exitstatus not in (0, 1):
        raise CouldNotRun(f"{run.mode}: pytest exit status {run.exitstatus}")
    if not run.tests:
        raise CouldNotRun(f"{run.mode}: no test ran")


# -- comparison -----------------------------------------------------------------------------------
@dataclass
class Outcome:
    suite: Suite
    version: str
    stock: Run
    ours: Run
    regressions: dict[str, str] = field(default_factory=dict)  # nodeid -> error on ours
    flaky: dict[str, str] = field(default_factory=dict)  # nodeid -> what the re-run showed


def compare(suite: Suite, project: Path, version: str, stock: Run, ours: Run, rerun: bool) -> Outcome:
    outcome = Outcome(suite, version, stock, ours)
    suspects = sorted(
        nodeid
        for nodeid, t in stock.tests.items()
        if t["outcome"] == "passed" and ours.tests.get(nodeid, {}).get("outcome", "did not run") in FAILING
    )
    if not suspects:
        return outcome
    if not rerun:
        outcome.regressions = {n: ours.tests.get(n, {"error": "did not run on ours"})["error"] for n in suspects}
        return outcome
    say(
        f"\n{len(suspects)} test(s) passed on stock and failed on ours: re-running them once, apart from the "
        "rest of the suite (one fresh pytest process per runner), on both runners: 2 shared cores make "
        "timing tests flaky"
    )
    again_ours = run_pytest(suite, project, "ours", suspects, 900, "rerun-ours")
    check_run(suite, again_ours, suite.ours)
    again_stock = run_pytest(suite, project, "stock", suspects, 900, "rerun-stock")
    check_run(suite, again_stock, suite.stock)
    for nodeid in suspects:
        ours_now = again_ours.tests.get(nodeid, {}).get("outcome", "did not run")
        stock_now = again_stock.tests.get(nodeid, {}).get("outcome", "did not run")
        say(f"    re-run {nodeid}: stock {stock_now}, ours {ours_now}")
        if ours_now == "passed":
            outcome.flaky[nodeid] = "passed on ours when re-run: not counted"
        elif stock_now != "passed":
            outcome.flaky[nodeid] = f"{stock_now} on stock too when re-run: not counted"
        else:
            first = ours.tests.get(nodeid, {"error": "did not run on ours"})["error"]
            outcome.regressions[nodeid] = again_ours.tests.get(nodeid, {}).get("error") or first
    return outcome


def indent(text: str, prefix: str = "        ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def print_outcome(o: Outcome) -> None:
    s = o.suite
    say(f"\n=== {s.dist} {o.version}: {s.test_file}")
    if s.deselect_params:
        say(f"    deselected: tests parametrized with {', '.join(s.deselect_params)}")
    say(f"    {'runner':<45} {'passed':>6} {'failed':>6} {'errors':>6} {'skipped':>7} {'time':>7}")
    for run, cls in ((o.stock, s.stock), (o.ours, s.ours)):
        say(
            f"    {run.mode + ' ' + cls:<45} {run.count('passed'):>6} {run.count('failed'):>6} "
            f"{run.count('error'):>6} {run.count('skipped'):>7} {run.seconds:>6.0f}s"
        )
    stock_failed = sorted(o.stock.failed())
    say(f"\n    Failing on stock ({len(stock_failed)}; never a regression):")
    for nodeid in stock_failed:
        say(f"      {nodeid}")
        say(indent(o.stock.tests[nodeid]["error"]))
    ours_failed = sorted(o.ours.failed() | set(o.stock.tests) - set(o.ours.tests))
    say(f"\n    Failing on ours ({len(ours_failed)}):")
    for nodeid in ours_failed:
        if nodeid in o.regressions:
            tag = "REGRESSION"
        elif nodeid in o.flaky:
            tag = f"not counted: {o.flaky[nodeid]}"
        else:
            tag = "fails on stock too"
        say(f"      {nodeid}  [{tag}]")
    skipped = sorted(
        nodeid
        for nodeid, t in o.stock.tests.items()
        if t["outcome"] == "passed" and o.ours.tests.get(nodeid, {}).get("outcome") == "skipped"
    )
    if skipped:
        say(f"\n    Passed on stock, skipped on ours ({len(skipped)}; not counted, but look):")
        for nodeid in skipped:
            say(f"      {nodeid}: {o.ours.tests[nodeid]['error']}")
    say(f"\n    Regressions ({len(o.regressions)}; passed on stock, failed on ours, confirmed by a re-run):")
    for nodeid, error in o.regressions.items():
        say(f"      {nodeid}")
        say(indent(error))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", default="dask,ray,prefect", help="comma-separated: dask, ray, prefect")
    parser.add_argument("--no-rerun", action="store_true", help="count suspects without re-running them")
    parser.add_argument("--full", action="store_true", help="also the runner variants left out by default")
    parser.add_argument("--serial", action="store_true", help="run the suites one after the other")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds for one suite run")
    parser.add_argument("nodeids", nargs="*", help="run only these tests (nodeids of the upstream file)")
    args = parser.parse_args(argv)
    names = [n for n in args.suites.split(",") if n]
    unknown = set(names) - {*SUITES, "prefect"}
    if unknown:
        parser.error(f"unknown suites {sorted(unknown)}")

    started = time.monotonic()
    outcomes: list[Outcome] = []
    problems: list[str] = []
    notes: list[str] = []

    def lane(name: str) -> None:
        """One suite: stock, then ours, then the re-runs; its lines are prefixed with its name."""
        _lane.prefix = f"[{name}] "
        if name == "prefect":
            notes.append(check_prefect_own_suite())
            return
        suite = SUITES[name]
        if args.full:
            suite.deselect_params = []
        suite_start = time.monotonic()
        try:
            version, project = extract(suite)
            say(f"=== {suite.dist} {version}: {suite.test_file}, stock then ours")
            stock = run_pytest(suite, project, "stock", args.nodeids, args.timeout, "stock")
            check_run(suite, stock, suite.stock)
            if stock.count("passed") == 0:
                raise CouldNotRun("stock: no test passed, nothing to compare")
            ours = run_pytest(suite, project, "ours", args.nodeids, args.timeout, "ours")
            check_run(suite, ours, suite.ours)
            outcomes.append(compare(suite, project, version, stock, ours, rerun=not args.no_rerun))
        except CouldNotRun as exc:
            problems.append(f"{suite.dist}: {exc}")
            say(f"!!! {suite.dist} could not run: {exc}")
        say(f"=== {suite.dist}: {time.monotonic() - suite_start:.0f} s")

    # The suites run side by side, each in its own lane: they wait more than they compute (engine
    # and server start-ups, sleeps in the tests, a 70 s log drain at the end of prefect-ray's session),
    # and one after the other they took over 20 minutes here. Within a suite, stock and ours run
    # one after the other, so both see the other suite's load. --serial runs the suites in turn.
    if args.serial:
        for name in names:
            lane(name)
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(names)) as pool:
            for future in [pool.submit(lane, name) for name in names]:
                future.result()
    _lane.prefix = ""

    for note in notes:
        say("\n=== prefect: its own ThreadPoolTaskRunner/ProcessPoolTaskRunner tests")
        say(note)
    say("\n" + "=" * 100)
    for outcome in outcomes:
        print_outcome(outcome)
    regressions = sum(len(o.regressions) for o in outcomes)
    say("\n" + "=" * 100)
    for problem in problems:
        say(f"COULD NOT RUN: {problem}")
    say(
        f"test-compat: {regressions} regression(s), {len(problems)} suite(s) that could not run, "
        f"{time.monotonic() - started:.0f} s"
    )
    if problems:
        return 2
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
