"""``flops data push|list|delete|token``: users' own data on the nodes' data servers.

The CLI asks the manager for a write token scoped to the caller's namespace on one node
(``POST /api/flops/data-tokens``) and then talks to that node's data server itself (Arrow
Flight over TLS), so data goes straight to the node and never through the manager.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from flops_utils.data_client import DataServerError
from flops_utils.data_files import DataFileError, read_data_file
from flops_utils.data_uploader import DataUploader
from flops_utils.service_config import DataServerConfig, ServerCertificate
from manager.cli.client import CliError, FlopsClient

Handler = Callable[[argparse.Namespace, TextIO], int]
CommandMaker = Callable[[Any, str, str, Handler], argparse.ArgumentParser]
NODES = "/api/flops/nodes"
TOKENS = "/api/flops/data-tokens"
SECURITY = "/api/flops/data-server-security"
_PROGRESS_MIN_ROWS = 50_000  # smaller uploads print no progress


def add_data_commands(
    groups: Any,
    command: CommandMaker,
    set_help: Callable[[argparse.ArgumentParser], None],
    client: Callable[[argparse.Namespace], FlopsClient],
) -> None:
    data = groups.add_parser("data", help="your own data on the nodes' data servers")
    commands = data.add_subparsers(title="data commands", metavar="ACTION")

    def push(args: argparse.Namespace, out: TextIO) -> int:
        try:
            table = read_data_file(args.file, args.label_column)
        except DataFileError as error:
            raise CliError(str(error)) from None
        grant = _write_token(client(args), args)
        progress = _progress_printer(table.num_rows) if table.num_rows >= _PROGRESS_MIN_ROWS else None
        with DataUploader(grant["data_server"], grant.get("token"), grant.get("ca_pem")) as uploader:
            try:
                rows = uploader.push_table(args.tag, table, progress)
                shape = uploader.tags().get(args.tag)
            except DataServerError as error:
                raise CliError(str(error)) from None
        total = f", {shape.rows} rows in all" if shape else ""
        width = table.column("features")[0].as_py() if table.num_rows else []
        out.write(f"pushed {rows} rows of {len(width)} features to tag {args.tag} on node {args.node}{total}\n")
        return 0

    def list_data(args: argparse.Namespace, out: TextIO) -> int:
        answer = client(args).get(NODES, params=_customer_param(args))
        nodes = [node for node in answer.get("nodes", []) if not args.node or node["name"] == args.node]
        if args.node and not nodes:
            raise CliError(f"no node named {args.node!r}")
        if args.json:
            out.write(json.dumps({**answer, "nodes": nodes}, indent=2) + "\n")
            return 0
        out.write(f"{'NODE':<16} {'CLUSTER':<12} {'DATA SERVER':<22} {'TAG':<24} {'ROWS':>8} {'WIDTH':>6}\n")
        for node in nodes:
            server = node.get("data_server") or "-"
            if node.get("reachable") is False:
                server += " (down)"
            tags = node.get("tags") or []
            if not tags:
                out.write(f"{node['name']:<16} {node.get('cluster') or '-':<12} {server:<22} {'-':<24}\n")
            for tag in tags:
                out.write(
                    f"{node['name']:<16} {node.get('cluster') or '-':<12} {server:<22} {tag['tag']:<24} "
                    f"{tag['rows']:>8} {tag.get('width') or '-':>6}\n"
                )
        return 0

    def delete(args: argparse.Namespace, out: TextIO) -> int:
        grant = _write_token(client(args), args)
        with DataUploader(grant["data_server"], grant.get("token"), grant.get("ca_pem")) as uploader:
            try:
                removed = uploader.delete(args.tag)
            except DataServerError as error:
                raise CliError(str(error)) from None
        out.write(f"deleted tag {args.tag} on node {args.node} ({removed} fragment(s))\n")
        return 0

    def token(args: argparse.Namespace, out: TextIO) -> int:
        out.write(json.dumps(_write_token(client(args), args), indent=2) + "\n")
        return 0

    def server_config(args: argparse.Namespace, out: TextIO) -> int:
        security = client(args).get(SECURITY)
        config = DataServerConfig(
            node=args.node,
            host=args.host,
            port=args.port,
            storage_dir=args.storage_dir,
            tls=ServerCertificate(cert_pem=security["cert_pem"], key_pem=security["key_pem"]),
            token_public_key_pem=security["token_public_key_pem"],
        )
        out.write(config.model_dump_json(indent=2) + "\n")
        return 0

    pushing = command(commands, "push", "upload a CSV, Parquet or .npz file to a node's data server", push)
    pushing.add_argument("file", type=Path, help="data file: .csv, .parquet or .npz (arrays x and y)")
    pushing.add_argument("--node", required=True, help="learner node whose data server stores it")
    pushing.add_argument("--tag", required=True, help="data tag (your namespace; SLAs name it in data_tags)")
    pushing.add_argument("--label-column", default="label", help="CSV/Parquet column holding the integer labels")
    listing = command(commands, "list", "nodes, their data servers and your tags on each (rows, width)", list_data)
    listing.add_argument("--node", help="only this node")
    deleting = command(commands, "delete", "remove one of your tags from a node's data server", delete)
    deleting.add_argument("--node", required=True)
    deleting.add_argument("--tag", required=True)
    granting = command(commands, "token", "a write token for a device: address, token and CA as JSON", token)
    granting.add_argument("--node", required=True)
    serving = command(
        commands,
        "server-config",
        "admin only: FLOPS_CONFIG (JSON, holds a private key) for a data server FLOps does not start "
        "(e.g. on an Oakestra node): run it with flops-data-server",
        server_config,
    )
    serving.add_argument("--node", required=True, help="the node's name as the orchestrator lists it")
    serving.add_argument("--port", type=int, default=9400)
    serving.add_argument("--host", default="0.0.0.0", help="address to bind")
    serving.add_argument("--storage-dir", default="/var/lib/flops/data")
    for parser in (pushing, listing, deleting, granting):
        parser.add_argument("--customer", help="admin only: work in this customer's namespace")
    set_help(data)


def _customer_param(args: argparse.Namespace) -> dict[str, str] | None:
    return {"customerID": args.customer} if getattr(args, "customer", None) else None


def _write_token(client: FlopsClient, args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"node": args.node}
    if getattr(args, "customer", None):
        body["customerID"] = args.customer
    answer: dict[str, Any] = client.post(TOKENS, body)
    return answer


def _progress_printer(total: int) -> Callable[[int, int], None]:
    def show(sent: int, _total: int) -> None:
        print(f"\rsent {sent}/{total} rows ({100 * sent // max(total, 1)}%)", end="", file=sys.stderr, flush=True)
        if sent >= total:
            print(file=sys.stderr)

    return show
