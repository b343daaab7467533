"""``statsig-relay run|check|dlq|send``: parse arguments, call the library, exit non-zero."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from . import __version__
from .config import Config, load_config
from .logs import setup_logging
from .schema import ConfigError

DEFAULT_CONFIG = os.environ.get("RELAY_CONFIG", "config.yaml")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="statsig-relay", description=__doc__)
    parser.add_argument("--version", action="version", version=f"statsig-relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="YAML config file")

    check = commands.add_parser("check", help="validate a config and print its routing table")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG)

    dlq = commands.add_parser("dlq", help="inspect, replay or purge dead-lettered events")
    dlq.add_argument("action", choices=["list", "show", "replay", "purge"])
    dlq.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    dlq.add_argument("--target", help="only this target's dead letters")
    dlq.add_argument("--id", action="append", default=[], help="only these rows (repeatable)")
    dlq.add_argument("--limit", type=int, default=50)

    send = commands.add_parser("send", help="POST a JSON file to a relay source (for testing)")
    send.add_argument("url", help="e.g. http://127.0.0.1:8080/webhooks/statsig")
    send.add_argument("file", help="JSON file, or - for standard input")
    send.add_argument(
        "--secret",
        default=os.environ.get("STATSIG_WEBHOOK_SECRET"),
        help="sign as Statsig does (default: $STATSIG_WEBHOOK_SECRET)",
    )
    send.add_argument("--header", action="append", default=[], help="extra 'Name: value'")

    args = parser.parse_args(argv)
    try:
        if args.command == "send":
            return _send(args)
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"statsig-relay: config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(routing_table(config))
        return 0
    if args.command == "dlq":
        return asyncio.run(_dlq(config, args))
    return _run(config, args.config)


def _run(config: Config, path: str) -> int:
    from .app import Relay

    setup_logging(config.server.log_level, config.server.log_format)
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # the *_created series only add noise to every scrape
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def serve() -> None:
        await Relay(config).run_until_stopped(os.path.abspath(path))

    try:
        asyncio.run(serve())
    except RuntimeError as exc:  # e.g. the spool is locked by another process
        print(f"statsig-relay: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the port is taken
        print(f"statsig-relay: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def routing_table(config: Config) -> str:
    from .app import build_sources, build_targets

    sources = build_sources(config)
    targets = build_targets(config)
    lines = [f"config {config.path}: ok", "", "sources:"]
    for name, source in sources.items():
        lines.append(f"  {name} ({source.kind}): {source.describe()}")
        lines.extend(f"    warning: {w}" for w in source.warnings())
    lines += ["", "targets:"]
    for name, target in targets.items():
        c = target.config
        lines.append(
            f"  {name}: {target.describe()}; batches of ≤{c.batch_max_events} events, "
            f"linger {c.linger:g}s, {c.concurrency} in flight, "
            f"≤{c.max_attempts} attempts"
        )
    lines += ["", "routes:"]
    for route in config.routes:
        flt = route.filter
        parts = []
        if flt.categories:
            parts.append("categories " + ",".join(flt.categories))
        if flt.exclude_categories:
            parts.append("not categories " + ",".join(flt.exclude_categories))
        if flt.events:
            parts.append("events " + ",".join(flt.events))
        if flt.exclude_events:
            parts.append("not events " + ",".join(flt.exclude_events))
        if flt.where:
            parts.append("where " + ", ".join(f"{k}={v}" for k, v in flt.where.items()))
        if route.rename:
            parts.append(f"rename {route.rename}")
        if route.first_exposure_only:
            parts.append("first exposure only")
        if route.dedup:
            parts.append("dedup")
        how = "; ".join(parts) or "everything"
        lines.append(f"  {route.name}: {', '.join(route.sources)} -> {route.to} ({how})")
    return "\n".join(lines)


async def _dlq(config: Config, args: argparse.Namespace) -> int:
    from .spool import create_spool

    spool = create_spool(config.spool, lock=False)
    await spool.open()
    try:
        if args.action in ("list", "show"):
            rows = await spool.dead_rows(args.target, args.limit)
            if args.id:
                rows = [r for r in rows if str(r.id) in args.id]
            if not rows:
                print(
                    "the dead-letter queue is empty"
                    if not args.target
                    else f"no dead letters for {args.target}"
                )
            for row in rows:
                dead_at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row.dead_at_ms / 1000))
                print(
                    f"{row.id}\t{row.target}\t{row.route}\t{row.count} events\t"
                    f"attempts {row.attempts}\t{dead_at}Z\t{row.reason}"
                )
                if args.action == "show":
                    for event in orjson.loads(row.body):
                        print("    " + orjson.dumps(event).decode())
        elif args.action == "replay":
            moved = await spool.replay_dead(args.target, args.id)
            print(f"replayed {moved} events to the queue; the running relay delivers them")
        else:
            deleted = await spool.purge_dead(args.target, args.id)
            print(f"purged {deleted} events")
    finally:
        await spool.close()
    return 0


def _send(args: argparse.Namespace) -> int:
    import urllib.request

    from .sources.statsig_webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

    body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    headers = {"Content-Type": "application/json"}
    if args.secret:
        timestamp = str(int(time.time() * 1000))
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = sign(args.secret.encode(), timestamp, body)
    for header in args.header:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    request = urllib.request.Request(args.url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            print(response.status, response.read().decode(errors="replace"))
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.code, exc.read().decode(errors="replace"), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"statsig-relay: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
