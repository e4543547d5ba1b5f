"""``python -m manager.suite start|stop|status [--state-dir DIR] [--registry]``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from manager.suite import SuiteError, default_state_dir, start_suite, stop_suite, suite_status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m manager.suite", description=__doc__)
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--state-dir", type=Path, default=None, help="default: $FLOPS_SUITE_DIR or ~/.flops/suite")
    parser.add_argument("--registry", action="store_true", help="also start the OCI registry")
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir or default_state_dir()
    try:
        if args.action == "start":
            endpoints = start_suite(state_dir, registry=args.registry)
            summary = asdict(endpoints)
            summary["mqtt"] = endpoints.mqtt.model_dump(exclude={"password"})
            if endpoints.registry is not None:
                summary["registry"].pop("password")
            print(json.dumps(summary, indent=2))
            print(f"credentials: {state_dir / 'endpoints.json'}")
        elif args.action == "stop":
            stop_suite(state_dir)
        else:
            status = suite_status(state_dir)
            print(json.dumps(status, indent=2))
            return 0 if status and all(status.values()) else 1
    except SuiteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
