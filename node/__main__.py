"""`python -m node --config FILE` runs a node; `python -m node keys ...` manages keys;
`python -m node certs|tokens|audit ...` are the access-control tools (node/auth/)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

# gRPC's C core logs connection churn at INFO on stderr; peers come and go by design.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


# `certs`, `tokens` and `audit` are node/auth/certs.py, tokens.py and audit.py.
_AUTH_COMMANDS = {"certs": "certs", "tokens": "tokens", "audit": "audit"}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "keys":
        from node.keys_cli import main as keys_main

        return keys_main(args[1:])
    if args and args[0] in _AUTH_COMMANDS:
        import importlib

        # Relative: an installed copy (medkv.node) runs its own package's tools.
        module = importlib.import_module(f".auth.{_AUTH_COMMANDS[args[0]]}", __package__)
        return int(module.main(args[1:]))
    parser = argparse.ArgumentParser(prog="medkv node", description="Run one medkv node.")
    parser.add_argument("--config", required=True, help="the node's TOML configuration file")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--log-format", choices=["text", "json"], default=None,
        help="text (default) or json: one JSON object per log line (overrides [log] format; "
        "also MEDKV_LOG_FORMAT)",
    )
    ns = parser.parse_args(args)
    from node import logfmt

    env_format = os.environ.get("MEDKV_LOG_FORMAT") or None
    if env_format is not None and env_format not in logfmt.LOG_FORMATS:
        print(f"medkv node: MEDKV_LOG_FORMAT must be text or json, not {env_format!r}",
              file=sys.stderr)
        return 2
    cli_format = ns.log_format or env_format
    logfmt.configure(cli_format or "text", ns.log_level)
    json_logs = cli_format == "json"

    def refuse(e: Exception, node_id: int | None = None) -> int:
        """A startup refusal: the plain line an operator reads, or, with JSON
        logs, one JSON line like every other (a shipper parses them all)."""
        if json_logs:
            logfmt.configure("json", ns.log_level, node_id)
            logging.getLogger("medkv.node").critical("medkv node: %s", e)
        else:
            print(f"medkv node: {e}", file=sys.stderr)
        return 2
    import dataclasses

    from node import test_only
    from node.config import ConfigError, load_config
    from node.errors import StartupError
    from node.server import serve
    from node.test_clock import ClockOffsetError, install_from_env

    try:
        install_from_env()  # test-only wrong wall clock (node/test_clock.py), loudly logged
    except ClockOffsetError as e:
        return refuse(e)

    try:
        cfg = load_config(ns.config)
        # Test-only switches come from the environment alone (node.test_only).
        cfg = dataclasses.replace(cfg, test_only=test_only.from_environ())
    except (ConfigError, test_only.TestOnlyError) as e:
        return refuse(e)
    json_logs = (cli_format or cfg.log.format) == "json"
    logfmt.configure(cli_format or cfg.log.format, ns.log_level, cfg.node_id)
    try:
        asyncio.run(serve(cfg))
    except StartupError as e:
        return refuse(e, cfg.node_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
