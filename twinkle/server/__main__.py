"""``twinkle-server`` (= ``python -m twinkle.server``).

    twinkle-server launch -c server.yaml           # serve the config's applications
    twinkle-server check-config -c server.yaml     # prints ok, or error: ... (exit 2)
    twinkle-server print-config -c server.yaml [--format yaml|json]
    twinkle-server --model PATH --max-loras 4 --port 8000   # one model, its sampler, no config file
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from twinkle.server.config import ConfigFileError, ServerConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twinkle-server", description="Serve one base model to many tenants.")
    parser.add_argument("--model", help="short form: the model to serve (hub id or local folder)")
    parser.add_argument("--max-loras", type=int, default=4, help="short form: adapters that can live at once")
    parser.add_argument("--max-length", type=int, default=None, help="short form: most tokens per forward")
    parser.add_argument("--adapter-timeout", type=float, default=1800,
                        help="short form: seconds without a session heartbeat before an adapter is dropped")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", help="short form: the model's route name (default: the model id)")
    parser.add_argument("--no-sampler", action="store_true", help="short form: serve no sampler")
    sub = parser.add_subparsers(dest="command")
    for name in ("launch", "check-config", "print-config"):
        p = sub.add_parser(name)
        p.add_argument("-c", "--config", default=os.environ.get("TWINKLE_SERVER_CONFIG"))
        if name == "launch":
            p.add_argument("--namespace", default=os.environ.get("TWINKLE_RAY_NAMESPACE"))
        if name == "print-config":
            p.add_argument("--format", choices=("yaml", "json"), default=os.environ.get("TWINKLE_PRINT_FORMAT", "yaml"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command is None:
            if not args.model:
                print("error: give a subcommand (launch -c cfg.yaml) or --model PATH", file=sys.stderr)
                return 2
            config = ServerConfig.single_model(args.model, max_loras=args.max_loras, port=args.port, host=args.host,
                                               max_length=args.max_length, name=args.name,
                                               sampler=not args.no_sampler, adapter_timeout=args.adapter_timeout)
        else:
            if not args.config:
                print("error: -c/--config PATH is required (or set TWINKLE_SERVER_CONFIG)", file=sys.stderr)
                return 2
            config = ServerConfig.from_yaml(args.config)
    except (ConfigFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print("ok")
        return 0
    if args.command == "print-config":
        data = config.model_dump(mode="json")
        if args.format == "json":
            print(json.dumps(data, indent=2))
        else:
            import yaml  # type: ignore[import-untyped]

            print(yaml.safe_dump(data, sort_keys=False), end="")
        return 0
    from twinkle.server.launcher import ServerLauncher

    ServerLauncher(config, getattr(args, "namespace", None)).launch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
