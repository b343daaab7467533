"""``statsig-relay run|check|dlq|send``: parse arguments, call the library, exit non-zero."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from . import __version__
from .config import (
    Config,
    SpoolSection,
    load_config,
    load_server_section,
    load_spool_section,
)
from .logs import setup_logging
from .schema import ConfigError

if TYPE_CHECKING:
    from .dlq import DeadFilter, Selected
    from .spool.base import Spool

DEFAULT_CONFIG = os.environ.get("RELAY_CONFIG", "config.yaml")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="statsig-relay", description=__doc__)
    parser.add_argument("--version", action="version", version=f"statsig-relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="YAML config file")

    check = commands.add_parser("check", help="validate a config and print its routing table")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG)

    dlq = commands.add_parser(
        "dlq", help="inspect, export, replay or purge dead-lettered events (reads only `spool:`)"
    )
    dlq.add_argument("action", choices=["list", "show", "export", "replay", "purge"])
    dlq.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    dlq.add_argument("--target", help="only this target's dead letters")
    dlq.add_argument("--id", action="append", default=[], help="only these rows (repeatable)")
    dlq.add_argument("--event", metavar="GLOB", help="only events whose eventName matches")
    dlq.add_argument("--reason", help="only rows whose reason matches (glob or prefix)")
    dlq.add_argument("--route", help="only rows of this route")
    dlq.add_argument("--since", metavar="TIME", help="dead-lettered since (2026-12-01T10:00Z, 2h)")
    dlq.add_argument("--until", metavar="TIME", help="dead-lettered before")
    dlq.add_argument("--limit", type=int, default=50, help="rows shown by list/show")
    dlq.add_argument("--all", action="store_true", help="purge: every dead letter")
    dlq.add_argument("--rate", type=float, help="replay: at most N events/s (paced per row)")
    dlq.add_argument("-o", "--output", default="-", help="export: JSON lines file (- = stdout)")

    spool = commands.add_parser(
        "spool", help="check the SQLite spool file read-only, or salvage a damaged one"
    )
    spool.add_argument("action", choices=["check", "salvage"])
    spool.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="reads only `spool:`")
    spool.add_argument("--to", metavar="NEW_FILE", help="salvage: the new spool file to write")

    status = commands.add_parser(
        "status", help="the running daemon's status (its admin listener's /status.json)"
    )
    status.add_argument("-c", "--config", help="read admin_listen from this config")
    status.add_argument("--url", help="admin base URL (default http://127.0.0.1:9102)")
    status.add_argument(
        "--watch", nargs="?", type=float, const=2.0, metavar="SECONDS", help="refresh (every 2 s)"
    )

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
        if args.command == "status":
            return _status(args)
        if args.command == "dlq":
            return asyncio.run(_dlq(load_spool_section(args.config), args))
        if args.command == "spool":
            return _spool(load_spool_section(args.config).spool, args.action, args.to)
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"statsig-relay: config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(routing_table(config))
        return _spool_report(config.spool)
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


def _spool_report(spool: object) -> int:
    """`check`: the SQLite spool file, read-only (0 when sound or not there yet)."""
    from .spool.integrity import check_file
    from .spool.sqlite import SqliteSpoolConfig

    if not isinstance(spool, SqliteSpoolConfig) or not Path(spool.path).is_file():
        return 0
    report = check_file(spool.path)
    print(report.line(), file=sys.stderr if report.damage else sys.stdout)
    return 1 if report.damage else 0


def _spool(spool: object, action: str, to: str | None) -> int:
    """`spool check` and `spool salvage --to NEW_FILE`; the spool file is only read."""
    from .spool.integrity import NOT_SQLITE, check_file
    from .spool.salvage import salvage_into
    from .spool.sqlite import SqliteSpoolConfig

    if not isinstance(spool, SqliteSpoolConfig):
        print("statsig-relay: `spool` commands are for the sqlite backend", file=sys.stderr)
        return 2
    path = spool.path
    if not Path(path).is_file():
        print(f"statsig-relay: spool file {path} does not exist", file=sys.stderr)
        return 1
    report = check_file(path)
    if action == "check":
        print(report.line(), file=sys.stderr if report.damage else sys.stdout)
        return 1 if report.damage else 0
    if not to:
        print("statsig-relay: salvage needs --to NEW_FILE", file=sys.stderr)
        return 2
    if report.damage == NOT_SQLITE:
        print(f"statsig-relay: spool {path} is {NOT_SQLITE}: nothing to salvage", file=sys.stderr)
        return 1
    try:
        got = salvage_into(path, to)
    except (OSError, RuntimeError) as exc:
        print(f"statsig-relay: salvage of {path} failed: {exc}", file=sys.stderr)
        return 1
    lost = f"; {got.unreadable} rows unreadable" if got.unreadable else ""
    bad = (
        f"; {got.bad_bodies} rows with unreadable bodies kept as dead letters"
        if got.bad_bodies
        else ""
    )
    print(
        f"salvaged {got.queued_events} events in {got.queued_rows} queued rows and"
        f" {got.dead_events} dead-lettered in {got.dead_rows} rows from {path} into {to}{lost}"
        f"{bad}; {path} was left as it is: point spool.path at {to} (or move it into place)"
        " and start the relay"
    )
    return 0


def routing_table(config: Config) -> str:
    from .app import build_sources, build_targets
    from .guard import describe_public

    sources = build_sources(config)
    targets = build_targets(config)
    lines = [f"config {config.path}: ok", "", "sources:"]
    for name, source in sources.items():
        lines.append(f"  {name} ({source.kind}): {source.describe()}")
        public = describe_public(source.config)
        if public:
            lines.append(f"    public: {public}")
        lines.extend(f"    warning: {w}" for w in source.warnings())
    lines += ["", "targets:"]
    fed = {route.to for route in config.routes}
    for name, target in targets.items():
        c = target.config
        lines.append(
            f"  {name}: {target.describe()}; batches of ≤{c.batch_max_events} events, "
            f"linger {c.linger:g}s, {c.concurrency} in flight, "
            f"≤{c.max_attempts} attempts"
        )
        if name not in fed:
            lines.append("    warning: no route feeds this target; it only drains what is spooled")
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
        target = targets[route.to]
        named = flt.names_internal()
        if not target.takes_statsig_internal and (named is None or named):
            which = "every statsig_internal event" if named is None else ", ".join(sorted(named))
            lines.append(
                f"    warning: forwards Statsig-internal events ({which}) to a {target.kind} "
                "target; SDK diagnostics hold the server's config URL, key included "
                "(secret-… keys are redacted)"
            )
    return "\n".join(lines)


async def _dlq(section: SpoolSection, args: argparse.Namespace) -> int:
    from . import dlq
    from .spool.backends import create_spool
    from .spool.sqlite import SqliteSpoolConfig

    cfg = section.spool
    if isinstance(cfg, SqliteSpoolConfig) and not Path(cfg.path).is_file():
        print(
            f"statsig-relay: spool file {cfg.path} does not exist (relative paths are from the"
            " current directory; is this the daemon's config?)",
            file=sys.stderr,
        )
        return 1
    try:
        flt = dlq.DeadFilter(
            target=args.target,
            ids=tuple(args.id),
            event=args.event,
            reason=args.reason,
            route=args.route,
            since_ms=dlq.parse_time(args.since) if args.since else None,
            until_ms=dlq.parse_time(args.until) if args.until else None,
        )
        if args.action == "purge" and not flt.narrows and not args.all:
            raise dlq.DlqError(
                "purge deletes for good: name --id, --target or a filter, or give --all"
            )
        if args.rate is not None and args.rate <= 0:
            raise dlq.DlqError("--rate must be a positive number of events per second")
    except dlq.DlqError as exc:
        print(f"statsig-relay: {exc}", file=sys.stderr)
        return 2
    spool = create_spool(cfg, lock=False)
    try:
        await spool.open()
    except Exception as exc:  # unreachable Redis, unreadable file: say so, no traceback
        print(f"statsig-relay: cannot open the spool: {exc}", file=sys.stderr)
        return 1
    try:
        # Only show prints events from the selection (its first --limit rows); export reads
        # the queue again, page by page, once the selection is known to be valid.
        bodies = args.limit if args.action == "show" else 0
        chosen = await dlq.select(spool, flt, section.target_names, bodies=bodies)
        if args.action == "export":
            return await _dlq_export(spool, chosen, flt, section.target_names, args.output)
        return await _dlq_action(spool, chosen, flt, args)
    except dlq.DlqError as exc:
        print(f"statsig-relay: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the store went away mid-command
        print(f"statsig-relay: spool error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        await spool.close()


async def _dlq_action(
    spool: Spool, chosen: list[Selected], flt: DeadFilter, args: argparse.Namespace
) -> int:
    from . import dlq

    if args.action in ("list", "show"):
        if not chosen:
            print("no dead letters match" if flt.narrows else "the dead-letter queue is empty")
        for picked in chosen[: args.limit]:
            row = picked.row
            dead_at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row.dead_at_ms / 1000))
            count = f"{picked.count} events" + ("" if picked.whole else f" (of {row.count})")
            print(
                f"{row.id}\t{row.target}\t{row.route}\t{count}\t"
                f"attempts {row.attempts}\t{dead_at}Z\t{row.reason}"
            )
            if args.action == "show":
                for event in picked.taken:
                    print("    " + orjson.dumps(event).decode())
        if len(chosen) > args.limit:
            print(f"... {len(chosen) - args.limit} more rows (--limit)")
    elif args.action == "replay":
        total = sum(s.count for s in chosen)
        pace = f" at ≤{args.rate:g} events/s" if args.rate else ""
        if args.rate and total:
            print(f"replaying {total} events{pace}")
        moved = await dlq.replay(spool, chosen, args.rate)
        print(f"replayed {moved} events to the queue{pace}; the running relay delivers them")
    else:
        deleted = await dlq.purge(spool, chosen)
        print(f"purged {deleted} events")
    return 0


async def _dlq_export(
    spool: Spool, chosen: list[Selected], flt: DeadFilter, targets: Iterable[str], output: str
) -> int:
    """JSON lines of the selected events, written a page of the queue at a time."""
    from . import dlq

    with contextlib.ExitStack() as stack:
        out = sys.stdout.buffer if output == "-" else stack.enter_context(open(output, "wb"))
        async for page in dlq.pages(spool, flt, targets):
            out.writelines(dlq.export_lines(page))
        out.flush()
    print(f"exported {sum(s.count for s in chosen)} events", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    import urllib.request

    from .config import split_host_port
    from .statuspage import render_text

    base = args.url
    if base is None and args.config:
        host, port = split_host_port(load_server_section(args.config).admin_listen)
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        base = f"http://{host}:{port}"
    url = (base or "http://127.0.0.1:9102").rstrip("/") + "/status.json"
    try:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    text = render_text(orjson.loads(response.read()))
            except (OSError, ValueError) as exc:
                print(f"statsig-relay: cannot read {url}: {exc}", file=sys.stderr)
                if not args.watch:
                    return 1
                text = f"statsig-relay: cannot read {url}: {exc}"
            if not args.watch:
                print(text)
                return 0
            print("\x1b[H\x1b[2J" + text, flush=True)  # clear the screen, then the table
            time.sleep(args.watch)
    except KeyboardInterrupt:
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
