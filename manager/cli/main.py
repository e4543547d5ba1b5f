"""``flops``: a thin command-line client of the FLOps manager's REST API, plus the local suite."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from manager.cli.client import CliError, FlopsClient
from manager.cli.data_commands import add_data_commands
from manager.cli.defaults import CA_FILE_ENV, TOKEN_ENV, URL_ENV, default_suite_dir, resolve_connection
from manager.cli.watch import duration_text, exit_code_for, watch_project

PROJECTS = "/api/flops/projects"
SLOW_TIMEOUT_S = 600.0  # tracking server creation, mock data pushes, database resets

Handler = Callable[[argparse.Namespace, TextIO], int]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args, sys.stdout)
    except CliError as error:
        sys.stdout.flush()
        print(f"flops: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("flops: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flops", description="Run federated-learning projects on FLOps.")
    _add_connection_options(parser, default=None)
    groups = parser.add_subparsers(title="commands", metavar="COMMAND")

    project = groups.add_parser("project", help="start, list, watch, stop projects and use their models")
    project_commands = project.add_subparsers(title="project commands", metavar="ACTION")
    start = _command(project_commands, "start", "start a project from an SLA file", _project_start)
    start.add_argument("sla", type=Path, help="SLA JSON file ('-' for stdin)")
    start.add_argument("--watch", action="store_true", help="then watch it until it finishes")
    start.add_argument("--repo-user", metavar="NAME", help="user name for a private http(s) repository")
    start.add_argument(
        "--repo-token-env",
        metavar="VAR",
        help="environment variable holding that repository's token or password (kept out of the "
        "SLA file, the shell history and the process list)",
    )
    _command(project_commands, "list", "your projects, newest first", _project_list)
    status = _command(project_commands, "status", "status, phase and progress of a project", _project_status)
    status.add_argument("project_id")
    watch = _command(project_commands, "watch", "live progress and events until the project finishes", _project_watch)
    watch.add_argument("project_id")
    metrics = _command(project_commands, "metrics", "a project's per-round metrics (a table, or CSV)", _project_metrics)
    metrics.add_argument("project_id")
    metrics.add_argument("--csv", action="store_true", help="print the manager's CSV (one row per round)")
    stop = _command(project_commands, "stop", "stop a project and undeploy its services", _project_stop)
    stop.add_argument("project_id")
    predict = _command(project_commands, "predict", "predict with a project's deployed model", _project_predict)
    predict.add_argument("project_id")
    predict.add_argument("--input", required=True, help='JSON file {"inputs": [[...]]} or [[...]]; - is stdin')
    _set_help(project)

    _command(groups, "tracking", "your MLflow tracking URL (created on demand)", _tracking)

    mocks = groups.add_parser("mocks", help="mock data for learner nodes")
    mock_commands = mocks.add_subparsers(title="mocks commands", metavar="ACTION")
    push = _command(mock_commands, "push", "push dataset partitions into learner nodes' data servers", _mocks_push)
    push.add_argument("--tag", required=True, help="data tag the partitions are stored under")
    push.add_argument("--partitions", type=int, required=True, help="number of learner nodes to fill")
    push.add_argument("--dirichlet", type=float, metavar="ALPHA", help="non-IID split with this Dirichlet alpha")
    push.add_argument("--dataset", default="digits", help="dataset name (default: digits)")
    push.add_argument("--seed", type=int, default=0)
    push.add_argument("--nodes", help="comma-separated learner nodes (default: the first N)")
    _set_help(mocks)

    add_data_commands(groups, _command, _set_help, _client)

    db = groups.add_parser("db", help="the manager's database")
    db_commands = db.add_subparsers(title="db commands", metavar="ACTION")
    reset = _command(db_commands, "reset", "admin only: stop everything and wipe the database", _db_reset)
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _set_help(db)

    cache = groups.add_parser("cache", help="the builders' shared build cache")
    cache_commands = cache.add_subparsers(title="cache commands", metavar="ACTION")
    prune = _command(
        cache_commands,
        "prune",
        "admin only: remove cached environments, apps and images unused for a while that no live project needs",
        _cache_prune,
    )
    prune.add_argument(
        "--older-than-days",
        type=float,
        metavar="DAYS",
        help="age limit (default: the manager's cache_max_age_s, 30 days)",
    )
    prune.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    _set_help(cache)

    suite = groups.add_parser("suite", help="the local management suite (broker, database, registry, manager)")
    suite_commands = suite.add_subparsers(title="suite commands", metavar="ACTION")
    up = _command(suite_commands, "up", "start the suite (idempotent)", _suite_up)
    up.add_argument("--registry", action="store_true", help="also start the OCI registry")
    up.add_argument("--manager", action="store_true", help="also start flops-manager (detached)")
    up.add_argument(
        "--no-tls",
        action="store_true",
        help="broker, registry and API without TLS (development only; a warning is printed)",
    )
    _command(suite_commands, "down", "stop the manager and the suite (data is kept)", _suite_down)
    _command(suite_commands, "status", "which suite components are up (exit 1 if any is down)", _suite_status)
    _command(
        suite_commands,
        "registry-gc",
        "stop the suite's registry, free the blobs of deleted images (garbage-collect), start it again",
        _suite_registry_gc,
    )
    _set_help(suite)
    return parser


def _add_connection_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """Accepted before the command and after it (``flops project list --url ...``)."""
    parser.add_argument("--url", default=default, help=f"manager URL (default: ${URL_ENV}, then the local suite's)")
    parser.add_argument(
        "--token", default=default, help=f"bearer token (default: ${TOKEN_ENV}, then the local suite's admin token)"
    )
    parser.add_argument(
        "--ca-file",
        default=default,
        help=f"CA certificate to verify an HTTPS manager (default: ${CA_FILE_ENV}, then the local suite's CA)",
    )
    parser.add_argument(
        "--suite-dir", type=Path, default=default, help="local suite dir (default: $FLOPS_SUITE_DIR, ~/.flops/suite)"
    )
    parser.add_argument("--timeout", type=float, default=default, help="seconds to wait for each answer")
    parser.add_argument(
        "--json",
        action="store_true",
        default=default if default is not None else False,
        help="print the manager's JSON answers",
    )


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str, handler: Handler
) -> argparse.ArgumentParser:
    command = commands.add_parser(name, help=summary, description=summary)
    _add_connection_options(command, default=argparse.SUPPRESS)
    command.set_defaults(handler=handler)
    return command


def _set_help(group: argparse.ArgumentParser) -> None:
    """A command group without its action prints its help and fails."""

    def show_help(args: argparse.Namespace, out: TextIO) -> int:
        group.print_help(sys.stderr)
        return 2

    group.set_defaults(handler=show_help)


# -- helpers ----------------------------------------------------------------------------------


def _suite_dir(args: argparse.Namespace) -> Path:
    return Path(args.suite_dir).expanduser() if args.suite_dir else default_suite_dir()


def _client(args: argparse.Namespace) -> FlopsClient:
    connection = resolve_connection(args.url, args.token, _suite_dir(args), args.ca_file)
    return FlopsClient(connection.url, connection.token, timeout_s=args.timeout or 30.0, ca_file=connection.ca_file)


def _slow(args: argparse.Namespace) -> float:
    return float(args.timeout or SLOW_TIMEOUT_S)


def _read_json(source: str | Path, what: str) -> Any:
    try:
        text = sys.stdin.read() if str(source) == "-" else Path(source).read_text()
    except OSError as error:
        raise CliError(f"cannot read {what} {source}: {error.strerror or error}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CliError(f"{what} {source} is not valid JSON: {error}") from None


def _print_json(out: TextIO, document: Any) -> None:
    out.write(json.dumps(document, indent=2) + "\n")


def _project_path(project_id: str) -> str:
    if not project_id or "/" in project_id or project_id in (".", ".."):
        raise CliError(f"{project_id!r} is not a project id")
    return f"{PROJECTS}/{project_id}"


def _progress_text(record: dict[str, Any]) -> str:
    progress = record.get("progress") or {}
    text = ""
    if progress.get("total_rounds"):
        text = f"round {progress.get('round', 0)}/{progress['total_rounds']}"
    if (progress.get("total_cycles") or 0) > 1:
        text += f" cycle {progress.get('cycle', 0)}/{progress['total_cycles']}"
    return text.strip() or "-"


def _absolute_local_repo(sla: dict[str, Any], sla_file: Path) -> None:
    """A relative local ml_repo_url is relative to the SLA file (when that path exists here)."""
    url = sla.get("ml_repo_url")
    if not isinstance(url, str) or not url or "://" in url or url.startswith(("/", "-", "~")):
        return
    if ":" in url.split("/", 1)[0]:  # git@host:path
        return
    candidate = (sla_file.parent / url).resolve()
    if str(sla_file) != "-" and candidate.is_dir():
        sla["ml_repo_url"] = str(candidate)


# -- project commands ---------------------------------------------------------------------------


def _repo_credentials(args: argparse.Namespace) -> dict[str, str] | None:
    """``--repo-user`` and the token named by ``--repo-token-env``, as the SLA's ``repo_credentials``."""
    if not args.repo_user and not args.repo_token_env:
        return None
    if not (args.repo_user and args.repo_token_env):
        raise CliError("--repo-user and --repo-token-env go together")
    token = os.environ.get(args.repo_token_env, "")
    if not token:
        raise CliError(f"--repo-token-env: the environment variable {args.repo_token_env} is not set or empty")
    return {"username": args.repo_user, "password": token}


def _project_start(args: argparse.Namespace, out: TextIO) -> int:
    sla = _read_json(args.sla, "SLA file")
    if not isinstance(sla, dict):
        raise CliError(f"SLA file {args.sla} must hold a JSON object")
    _absolute_local_repo(sla, args.sla)
    credentials = _repo_credentials(args)
    if credentials:
        sla["repo_credentials"] = credentials
    client = _client(args)
    record = client.post(PROJECTS, sla)
    if args.json:
        _print_json(out, record)
    else:
        out.write(f"started project {record['project_id']} ({record['status']})\n")
    out.flush()
    if args.watch:
        answer = watch_project(client, record["project_id"], out)
        return exit_code_for(str(answer.get("status")))
    return 0


def _project_list(args: argparse.Namespace, out: TextIO) -> int:
    answer = _client(args).get(PROJECTS)
    if args.json:
        _print_json(out, answer)
        return 0
    projects = answer.get("projects", [])
    if not projects:
        out.write("no projects\n")
        return 0
    rows = [("PROJECT", "CUSTOMER", "STATUS", "PHASE", "PROGRESS", "REPOSITORY")]
    for record in projects:
        rows.append(
            (
                str(record.get("project_id")),
                str(record.get("customer")),
                str(record.get("status")),
                str(record.get("phase")),
                _progress_text(record),
                str((record.get("sla") or {}).get("ml_repo_url", "")),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        out.write("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=False)) + f"  {row[-1]}\n")
    return 0


def _privacy_text(progress: dict[str, Any]) -> str | None:
    """``ε=1.23 (δ=1e-05), noise multiplier 1.1, clipping norm 1``, or None without differential privacy."""
    epsilon = progress.get("dp_epsilon")
    if not isinstance(epsilon, int | float):
        return None
    text = f"ε={epsilon:.4g} (δ={progress.get('dp_delta')})"
    if isinstance(progress.get("dp_noise_multiplier"), int | float):
        text += f", noise multiplier {progress['dp_noise_multiplier']:.4g}"
    if isinstance(progress.get("dp_clipping_norm"), int | float):
        text += f", clipping norm {progress['dp_clipping_norm']:.4g}"
    return text


def _project_status(args: argparse.Namespace, out: TextIO) -> int:
    record = _client(args).get(_project_path(args.project_id))
    if args.json:
        _print_json(out, record)
        return 0
    progress = record.get("progress") or {}
    lines = [
        ("project", record.get("project_id")),
        ("customer", record.get("customer")),
        ("status", record.get("status")),
        ("phase", record.get("phase")),
        ("progress", _progress_text(record)),
        ("accuracy", progress.get("accuracy")),
        ("loss", progress.get("loss")),
        ("privacy", _privacy_text(progress)),
        ("ended because", progress.get("reason")),
        ("elapsed", _seconds_text(record.get("elapsed_s"))),
        ("ETA", _seconds_text(record.get("eta_s")) if record.get("phase") == "training" else None),
        ("phases", _phases_text(record.get("phase_seconds"))),
        ("tracking", record.get("tracking_url")),
        ("mlflow run", record.get("mlflow_run_url") or record.get("mlflow_run_id")),
        ("model image", record.get("model_image")),
        ("serving", _serving_text(record)),
        ("error", record.get("error")),
    ]
    for name, value in lines:
        if value not in (None, ""):
            out.write(f"{name + ':':<13}{value}\n")
    return 0


def _serving_text(record: dict[str, Any]) -> str | None:
    """The endpoint's URL, and its state when the serving watch saw it lost (``running`` is not news)."""
    url, serving = record.get("serving_url"), record.get("serving") or {}
    state, restarts, detail = serving.get("state"), serving.get("restarts") or 0, serving.get("detail")
    if state in (None, "running") and not restarts:
        return url
    parts = [str(state or "running")] + ([f"{restarts} restart{'s' if restarts != 1 else ''}"] if restarts else [])
    summary = ", ".join(parts) + (f": {detail}" if detail else "")
    return f"{url} ({summary})" if url else summary


def _seconds_text(value: Any) -> str | None:
    return duration_text(float(value)) if isinstance(value, int | float) else None


def _phases_text(value: Any) -> str | None:
    if not isinstance(value, dict) or not value:
        return None
    return ", ".join(
        f"{phase} {duration_text(float(seconds))}"
        for phase, seconds in value.items()
        if isinstance(seconds, int | float)
    )


def _project_metrics(args: argparse.Namespace, out: TextIO) -> int:
    client = _client(args)
    path = _project_path(args.project_id) + "/rounds"
    if args.csv:
        out.write(client.get_text(path, accept="text/csv"))
        return 0
    answer = client.get(path)
    if args.json:
        _print_json(out, answer)
        return 0
    rounds = answer.get("rounds", []) if isinstance(answer, dict) else []
    if not rounds:
        out.write("no rounds yet\n")
        return 0
    rows: list[tuple[str, ...]] = [("STEP", "CYCLE", "ROUND", "CLUSTER", "LEARNERS", "SECONDS", "ACCURACY", "LOSS")]
    for entry in rounds:
        metrics = entry.get("metrics") or {}
        rows.append(
            (
                str(entry.get("step")),
                str(entry.get("cycle")),
                str(entry.get("round")),
                entry.get("cluster") or "(global)",
                str(entry.get("participants")),
                f"{float(entry.get('duration_s') or 0):.1f}",
                *(
                    f"{metrics[name]:.4f}" if isinstance(metrics.get(name), int | float) else "-"
                    for name in ("accuracy", "loss")
                ),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip() + "\n")
    if answer.get("plot_url"):
        out.write(f"learning curve: {answer['plot_url']}\n")
    return 0


def _project_watch(args: argparse.Namespace, out: TextIO) -> int:
    client = _client(args)
    client.get(_project_path(args.project_id))  # a clear 404 before any polling
    answer = watch_project(client, args.project_id, out)
    return exit_code_for(str(answer.get("status")))


def _project_stop(args: argparse.Namespace, out: TextIO) -> int:
    record = _client(args).delete(_project_path(args.project_id), timeout_s=_slow(args))
    if args.json:
        _print_json(out, record)
    else:
        out.write(f"project {record.get('project_id')} {record.get('status')}\n")
    return 0


def _project_predict(args: argparse.Namespace, out: TextIO) -> int:
    document = _read_json(args.input, "input file")
    body = document if isinstance(document, dict) else {"inputs": document}
    answer = _client(args).post(_project_path(args.project_id) + "/predict", body, timeout_s=_slow(args))
    if args.json:
        _print_json(out, answer)
    else:
        out.write(json.dumps(answer.get("predictions")) + "\n")
    return 0


# -- platform commands --------------------------------------------------------------------------


def _tracking(args: argparse.Namespace, out: TextIO) -> int:
    answer = _client(args).get("/api/flops/tracking", timeout_s=_slow(args))
    if args.json:
        _print_json(out, answer)
    else:
        out.write(f"{answer.get('tracking_url')}\n")
        if answer.get("ca_pem"):
            out.write(
                "(HTTPS with the manager's MLflow CA: `flops tracking --json` shows it; MLflow clients read it "
                "from MLFLOW_TRACKING_SERVER_CERT_PATH)\n"
            )
    return 0


def _mocks_push(args: argparse.Namespace, out: TextIO) -> int:
    configuration: dict[str, Any] = {
        "dataset_name": args.dataset,
        "number_of_partitions": args.partitions,
        "data_tag": args.tag,
        "seed": args.seed,
    }
    if args.dirichlet is not None:
        configuration["distribution"] = "dirichlet"
        configuration["dirichlet_alpha"] = args.dirichlet
    if args.nodes:
        configuration["nodes"] = [node.strip() for node in args.nodes.split(",") if node.strip()]
    answer = _client(args).post("/api/flops/mocks", {"mock_data_configuration": configuration}, timeout_s=_slow(args))
    if args.json:
        _print_json(out, answer)
        return 0
    partitions = answer.get("partitions") or {}
    out.write(f"pushed tag {answer.get('data_tag')} to {len(partitions)} node(s)\n")
    for node, rows in partitions.items():
        out.write(f"  {node}: {rows} rows\n")
    return 0


def _db_reset(args: argparse.Namespace, out: TextIO) -> int:
    if not args.yes and sys.stdin.isatty():
        reply = input("This stops every project and wipes the manager's database. Type 'reset' to go on: ")
        if reply.strip() != "reset":
            raise CliError("not reset")
    _client(args).delete("/api/flops/database", timeout_s=_slow(args))
    out.write("database reset\n")
    return 0


def _cache_prune(args: argparse.Namespace, out: TextIO) -> int:
    body: dict[str, Any] = {"dry_run": bool(args.dry_run)}
    if args.older_than_days is not None:
        body["older_than_days"] = args.older_than_days
    answer = _client(args).post("/api/flops/cache/prune", body, timeout_s=_slow(args))
    if args.json:
        _print_json(out, answer)
        return 0
    removed = answer.get("removed") or []
    verb = "would remove" if answer.get("dry_run") else "removed"
    out.write(
        f"{verb} {len(removed)} cache entries ({answer.get('freed_bytes', 0) / 1e6:.1f} MB); kept "
        f"{answer.get('kept_in_use', 0)} in use, {answer.get('kept_recent', 0)} recent, "
        f"{answer.get('kept_busy', 0)} busy\n"
    )
    for entry in removed:
        out.write(f"  {entry}\n")
    images = answer.get("images") or {}
    registry, storage = images.get("removed_from_registry") or [], images.get("removed_from_storage") or []
    out.write(
        f"images: {verb} {len(registry)} from the registry, {len(storage)} from local storage; kept "
        f"{images.get('kept_in_use', 0)} in use, {images.get('kept_recent', 0)} recent, "
        f"{images.get('kept_busy', 0)} busy\n"
    )
    for entry in [*registry, *storage]:
        out.write(f"  {entry}\n")
    for note in images.get("notes") or []:
        out.write(f"  note: {note}\n")
    return 0


# -- suite commands -----------------------------------------------------------------------------


def _suite_up(args: argparse.Namespace, out: TextIO) -> int:
    from manager.cli.suite_commands import suite_up

    return suite_up(_suite_dir(args), registry=args.registry, with_manager=args.manager, out=out, tls=not args.no_tls)


def _suite_down(args: argparse.Namespace, out: TextIO) -> int:
    from manager.cli.suite_commands import suite_down

    return suite_down(_suite_dir(args), out)


def _suite_status(args: argparse.Namespace, out: TextIO) -> int:
    from manager.cli.suite_commands import suite_status_report

    return suite_status_report(_suite_dir(args), out)


def _suite_registry_gc(args: argparse.Namespace, out: TextIO) -> int:
    from manager.cli.suite_commands import suite_registry_gc

    return suite_registry_gc(_suite_dir(args), out)


if __name__ == "__main__":
    sys.exit(main())
