"""The `scalegroups` command: info, profiles, run."""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from scalegroups import k8s_secrets
from scalegroups.errors import ConfigurationError, ScalegroupsError

PACKAGES = ("scalegroups", "prefect", "prefect-dask", "prefect-ray", "dask", "distributed", "ray")


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _set_selection(args: argparse.Namespace) -> None:
    """The command line's choices, as the variables a flow reads when it is called."""
    if getattr(args, "runner", None):
        from scalegroups.runners import checked_runner_name

        os.environ["SCALEGROUPS_RUNNER"] = checked_runner_name(args.runner, "--runner")
    if getattr(args, "profile", None):
        os.environ["SCALEGROUPS_PROFILE"] = args.profile


def _addresses(profile: str | None) -> dict[str, dict[str, str | None]]:
    """For each cluster engine: the address a flow call would use and where it came from.

    Precedence (that of `resolve_runner`, called here): argument > $SCALEGROUPS_ADDRESS > the
    engine's own variable (DASK_SCHEDULER_ADDRESS, RAY_ADDRESS) > profile > a local cluster.
    """
    from scalegroups.engines import ENGINES
    from scalegroups.runners import resolve_runner

    found: dict[str, dict[str, str | None]] = {}
    for name, engine in ENGINES.items():
        if engine.takes_address:
            spec = resolve_runner(name, profile=profile)
            found[name] = {"address": spec.address, "source": spec.sources.get("address", "default")}
    return found


def _pools(profile: str | None) -> dict[str, dict[str, Any]]:
    """Pool sizes of the thread and process runners a flow call would build, and where they came from."""
    from prefect.settings import get_current_settings

    from scalegroups.prefect_compat import runner_pool_size
    from scalegroups.runners import build_task_runner, resolve_runner

    prefect_settings = get_current_settings().tasks.runner
    variables = {
        "thread": ("PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS", prefect_settings.thread_pool_max_workers),
        "process": ("PREFECT_TASKS_RUNNER_PROCESS_POOL_MAX_WORKERS", prefect_settings.process_pool_max_workers),
    }
    pools: dict[str, dict[str, Any]] = {}
    for name, (variable, prefect_value) in variables.items():
        spec = resolve_runner(name, profile=profile)
        size = runner_pool_size(build_task_runner(spec))
        if "max_workers" in spec.sources:
            source = spec.sources["max_workers"]
        elif getattr(spec.section, "max_workers", None) is not None:
            source = f"profile {spec.profile.name!r}"
        elif prefect_value is not None:
            source = f"${variable}"
        else:
            source = "Prefect's default"
        pools[name] = {"max_workers": None if size >= sys.maxsize else size, "source": source}
    return pools


def cmd_info(args: argparse.Namespace) -> int:
    """Print the runner, profile and address that a flow call would use now, and versions."""
    from scalegroups.runners import checked_runner_name, resolve_runner
    from scalegroups.server import planned_api

    runner = checked_runner_name(args.runner, "--runner") if args.runner else None
    info = resolve_runner(runner, profile=args.profile).describe()
    api_url, api_source = planned_api()
    info["prefect_api_url"] = api_url
    info["prefect_api_source"] = api_source
    info["addresses"] = _addresses(args.profile)
    info["pools"] = _pools(args.profile)
    info["versions"] = _versions()
    if args.json:
        print(json.dumps(info, indent=2, default=str), flush=True)
        return 0
    api = f"{info['prefect_api_url']}  (from {info['prefect_api_source']})"
    if info["prefect_api_url"] is None:
        api = info["prefect_api_source"]
    print(f"runner:    {info['runner']}  (from {info['sources']['runner']})")
    print(f"profile:   {info['profile']}  ({info['profile_file']})")
    print(f"address:   {info['address'] or '(starts a local cluster)'}")
    print(f"settings:  {json.dumps(info['settings'], default=str)}")
    print(f"prefect:   {api}")
    print("addresses: argument > $SCALEGROUPS_ADDRESS > $DASK_SCHEDULER_ADDRESS / $RAY_ADDRESS > profile > local")
    for name, found in info["addresses"].items():
        print(f"  {name:<8} {found['address'] or '(starts a local cluster)'}  (from {found['source']})")
    print("pools:")
    for name, pool in info["pools"].items():
        print(f"  {name:<8} max_workers {pool['max_workers'] or 'unbounded'}  (from {pool['source']})")
    print("versions:  " + ", ".join(f"{k} {v or 'not installed'}" for k, v in info["versions"].items()))
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    """List the packaged profiles (and any files given), validating each."""
    from scalegroups.profiles import available_profiles, parse_profile

    targets = [Path(p) for p in args.files] or list(available_profiles().values())
    failures = 0
    for path in targets:
        try:
            profile = parse_profile(path)
        except ScalegroupsError as exc:
            failures += 1
            print(f"INVALID  {path}: {exc}")
            continue
        print(f"ok       {profile.name:<14} {profile.description}  ({path})")
    return 1 if failures else 0


def _parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ConfigurationError(f"--param {pair!r} must look like name=value")
        try:
            params[name] = json.loads(raw)
        except json.JSONDecodeError:
            params[name] = raw
    return params


def load_flow(target: str) -> Any:
    """Load `FILE.py:FLOW` and return the flow object (the file's `__main__` block is not run)."""
    from prefect import Flow

    file_name, sep, flow_name = target.rpartition(":")
    if not sep or not file_name or not flow_name:
        raise ConfigurationError(f"{target!r} must look like path/to/file.py:flow_name")
    path = Path(file_name)
    if not path.is_file():
        raise ConfigurationError(f"flow file {file_name!r} does not exist")
    sys.path.insert(0, str(path.resolve().parent))
    namespace = runpy.run_path(str(path), run_name="__scalegroups_run__")
    found = namespace.get(flow_name)
    if not isinstance(found, Flow):
        flows = sorted(k for k, v in namespace.items() if isinstance(v, Flow))
        raise ConfigurationError(
            f"{file_name} has no flow named {flow_name!r}; flows in it: {', '.join(flows) or 'none'}"
        )
    return found


def cmd_run(args: argparse.Namespace) -> int:
    """Run a flow from a file with the chosen runner and profile, showing group progress."""
    from scalegroups.flows import CallTimeRunnerFlow
    from scalegroups.progress import GroupProgress
    from scalegroups.runners import build_task_runner, resolve_runner

    _set_selection(args)
    params = _parse_params(args.param)
    flow = load_flow(args.target)
    spec = resolve_runner()
    if not isinstance(flow, CallTimeRunnerFlow):
        runner = build_task_runner(spec)
        runner.preflight()  # fail before Prefect starts anything
        flow = flow.with_options(task_runner=runner)
    print(f"running {args.target} on {spec.runner} (profile {spec.profile.name})", file=sys.stderr)
    with GroupProgress():
        result = flow(**params)
    print(json.dumps(result, default=repr) if args.json else repr(result))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a user's flow on each runner (one shared API server) and print which is fastest."""
    import statistics
    import time

    from scalegroups.flows import CallTimeRunnerFlow
    from scalegroups.runners import build_task_runner, resolve_runner
    from scalegroups.server import shared_api

    params = _parse_params(args.param)
    flow = load_flow(args.target)
    timings: dict[str, float | str] = {}
    with shared_api():
        for runner_name in args.runners.split(","):
            os.environ["SCALEGROUPS_RUNNER"] = runner_name
            runs = []
            try:
                for _ in range(args.repeats):
                    candidate = flow
                    if not isinstance(flow, CallTimeRunnerFlow):
                        candidate = flow.with_options(task_runner=build_task_runner(resolve_runner()))
                    started = time.perf_counter()
                    candidate(**params)
                    runs.append(time.perf_counter() - started)
                timings[runner_name] = statistics.median(runs)
            except Exception as exc:  # one runner failing must not hide the others' numbers
                timings[runner_name] = f"failed: {type(exc).__name__}: {exc}"
            value = timings[runner_name]
            shown = value if isinstance(value, str) else f"{value:.2f} s"
            print(f"{runner_name:8} {shown}", file=sys.stderr, flush=True)
    measured = {name: t for name, t in timings.items() if isinstance(t, float)}
    print(f"{'runner':8} {'seconds':>9}  vs fastest")
    best = min(measured.values()) if measured else None
    for name, value in timings.items():
        if isinstance(value, float):
            print(f"{name:8} {value:9.2f}  {value / best:5.2f}x")
        else:
            print(f"{name:8} {value}")
    if best is None:
        return 1
    fastest = min(measured, key=measured.__getitem__)
    print(f"fastest: {fastest} (median of {args.repeats}, flow call to return, engine start included)")
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    """Wait until the Prefect API and the resolved runner's cluster address answer.

    A malformed URL or address, credentials the API refuses and an untrusted TLS certificate are
    configuration errors: reported at once (exit 2), not waited for.
    """
    from prefect.settings import get_current_settings

    from scalegroups.network import (
        api_ssl_context,
        check_api_credentials,
        check_http_ok,
        parse_http_url,
        split_host_port,
        wait_until,
    )
    from scalegroups.runners import build_task_runner, resolve_runner

    _set_selection(args)
    spec = resolve_runner()
    settings = get_current_settings().api
    api = settings.url
    if api:
        parse_http_url(api, "PREFECT_API_URL")
    if spec.address:
        split_host_port(spec.address, 0)
    if api:
        auth = settings.auth_string.get_secret_value() if settings.auth_string else None
        context = api_ssl_context(settings.ssl_cert_file, settings.tls_insecure_skip_verify)
        ready = api.rstrip("/") + "/ready"
        wait_until(lambda: check_http_ok(ready, ssl_context=context), f"Prefect API {api}", args.timeout)
        check_api_credentials(api, auth, context)
        print(f"Prefect API {api} ready{' (authenticated)' if auth else ''}", file=sys.stderr)
    if spec.address:
        runner = build_task_runner(spec)
        wait_until(runner.preflight, f"{spec.runner} cluster {spec.address}", args.timeout)
        print(f"{spec.runner} cluster at {spec.address} reachable", file=sys.stderr)
    return 0


def cmd_limits_sync(args: argparse.Namespace) -> int:
    """Create or update the concurrency limits declared by groups in FILES and the profile."""
    from scalegroups import limits
    from scalegroups.profiles import load_profile
    from scalegroups.runners import DEFAULT_PROFILE
    from scalegroups.settings import read_env

    for file_name in args.files:
        if not Path(file_name).is_file():
            raise ConfigurationError(f"file {file_name!r} does not exist")
        sys.path.insert(0, str(Path(file_name).resolve().parent))
        runpy.run_path(file_name, run_name="__scalegroups_limits__")
    profile = load_profile(args.profile or read_env().profile or DEFAULT_PROFILE)
    wanted = {**limits.DECLARED, **profile.limits}
    if not wanted and not limits.DECLARED_RATES:
        print("no limits declared (in the files' groups or the profile's limits: section)", file=sys.stderr)
        return 0
    for line in [*limits.sync(wanted), *limits.sync_rates(limits.DECLARED_RATES)]:
        print(line)
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    """Start, stop or show the background Prefect server of this `PREFECT_HOME`."""
    from scalegroups import server

    if args.server_command == "start":
        state, started = server.start_background_server(port=args.port)
        ui = state.url.removesuffix("/api")
        verb = "started" if started else "already running"
        print(f"Prefect server {verb}: {state.url} (UI {ui}), pid {state.pid}, log {state.log}")
        print("flows on this machine use it (unless PREFECT_API_URL is set) until `scalegroups server stop`")
        return 0
    if args.server_command == "stop":
        state = server.stop_background_server()
        print(f"stopped the Prefect server at {state.url} (pid {state.pid})" if state else "no server was running")
        return 0
    state = server.running_server()
    if state is None:
        print(f"not running (no server recorded in {server.state_path()}, or it does not answer)")
        return 1
    uptime = time.time() - state.started
    ui = state.url.removesuffix("/api")
    print(f"running: {state.url} (UI {ui}), pid {state.pid}, up {uptime:.0f} s, log {state.log}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for `scalegroups`."""
    parser = argparse.ArgumentParser(prog="scalegroups", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="show the resolved runner, profile, address, versions")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--runner", help="thread, process, dask or ray")
    info.add_argument("--profile", help="profile name or YAML path")
    info.set_defaults(handler=cmd_info)

    profiles = commands.add_parser("profiles", help="list and validate cluster profiles")
    profiles.add_argument("files", nargs="*", help="profile files to validate (default: packaged)")
    profiles.set_defaults(handler=cmd_profiles)

    run = commands.add_parser("run", help="run FILE.py:FLOW on a chosen runner")
    run.add_argument("target", help="path/to/file.py:flow_name")
    run.add_argument("--runner", help="thread, process, dask or ray")
    run.add_argument("--profile", help="profile name or YAML path")
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="flow parameter (JSON value, else a string); repeatable",
    )
    run.add_argument("--json", action="store_true", help="print the flow's result as JSON")
    run.set_defaults(handler=cmd_run)

    bench = commands.add_parser("bench", help="run FILE.py:FLOW on each runner and report the fastest")
    bench.add_argument("target", help="path/to/file.py:flow_name")
    bench.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="flow parameter; repeatable")
    bench.add_argument("--runners", default="thread,process,dask,ray", help="comma-separated (default: all four)")
    bench.add_argument("--repeats", type=int, default=1, help="calls per runner; the median is reported")
    bench.set_defaults(handler=cmd_bench)

    limits = commands.add_parser("limits", help="concurrency limits on the Prefect server")
    limits_commands = limits.add_subparsers(dest="limits_command", required=True)
    sync = limits_commands.add_parser("sync", help="create/update limits declared by groups and the profile")
    sync.add_argument("files", nargs="*", help="Python files whose @group(limits=...) to sync")
    sync.add_argument("--profile", help="profile whose limits: section to sync (profile wins)")
    sync.set_defaults(handler=cmd_limits_sync)

    server_parser = commands.add_parser("server", help="a Prefect server on this machine that outlives one run")
    server_commands = server_parser.add_subparsers(dest="server_command", required=True)
    start = server_commands.add_parser("start", help="start it in the background (lean services, with the UI)")
    start.add_argument("--port", type=int, default=4200, help="port on 127.0.0.1 (a free one if taken)")
    server_commands.add_parser("stop", help="stop it and everything it started")
    server_commands.add_parser("status", help="say whether it runs, where, and since when")
    server_parser.set_defaults(handler=cmd_server)

    wait = commands.add_parser("wait", help="wait until PREFECT_API_URL and the cluster address answer")
    wait.add_argument("--runner", help="thread, process, dask or ray")
    wait.add_argument("--profile", help="profile name or YAML path")
    wait.add_argument("--timeout", type=float, default=300, help="seconds (default 300)")
    wait.set_defaults(handler=cmd_wait)

    k8s_secrets.add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `scalegroups` command; scalegroups' own errors print one line."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ScalegroupsError as exc:
        print(f"scalegroups: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scalegroups: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
