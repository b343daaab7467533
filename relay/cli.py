"""``statsig-relay run|check|dlq|spool|status|send``: parse arguments, call the library, exit
non-zero."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import re
import sys
import time
import urllib.error
from collections.abc import Callable, Iterable, Sequence
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
from .schema import ConfigError, ConfigErrors

if TYPE_CHECKING:
    from .dlq import DeadFilter, Selected
    from .spool.base import Spool

DEFAULT_CONFIG = os.environ.get("RELAY_CONFIG", "config.yaml")

DESCRIPTION = """\
statsig-relay receives events (Statsig webhooks, Statsig SDK and Segment calls, plain JSON),
keeps them in a local spool and delivers them to the targets of your config's routes.

Start with `statsig-relay check -c FILE` to validate a config and see its routing table, then
`statsig-relay run -c FILE`. Run `statsig-relay COMMAND --help` for a command's options."""

CONFIG_HELP = "YAML config file (default: $RELAY_CONFIG, else config.yaml in the current directory)"

DLQ_ACTIONS = {
    "list": (
        "one line per dead-lettered row",
        "List dead-lettered rows, one per line under a header row: id, target, route, events,"
        " attempts, when it was dead-lettered (UTC) and why. --json prints one JSON object per"
        " row instead.",
    ),
    "show": (
        "the rows and their events",
        "Like list, with each row's events printed under it as JSON.",
    ),
    "export": (
        "the selected events as JSON lines",
        "Write the selected events as JSON lines, one event per line, to --output (default"
        " standard output); the count goes to standard error.",
    ),
    "replay": (
        "put the selected events back in the queue",
        "Move the selected events back to their target's queue; the running relay delivers"
        " them. --rate paces the replay.",
    ),
    "purge": (
        "delete the selected events for good",
        "Delete the selected dead letters. Refuses without a selection (--id, --target or a"
        " filter) unless --all is given.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """Every command, its options and its help text."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="statsig-relay", description=DESCRIPTION, formatter_class=fmt
    )
    parser.add_argument("--version", action="version", version=f"statsig-relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=description)

    run = command(
        "run",
        "run the daemon",
        "Run the daemon in the foreground until SIGTERM or SIGINT; SIGHUP reloads the config.",
    )
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=CONFIG_HELP)

    check = command(
        "check",
        "validate a config and print its routing table",
        "Validate a config file: print its sources, targets and routes, or every error found"
        " (exit 2). Also checks the SQLite spool file if there is one. Nothing is sent.",
    )
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=CONFIG_HELP)

    dlq = command(
        "dlq",
        "list, show, export, replay or purge dead-lettered events",
        "Work on the dead-letter queue offline: only the config's spool: section is read, so"
        " the daemon may be running or stopped.",
    )
    selection = argparse.ArgumentParser(add_help=False)
    selection.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=CONFIG_HELP)
    selection.add_argument("--target", help="only this target's dead letters")
    selection.add_argument("--id", action="append", default=[], help="only these rows (repeatable)")
    selection.add_argument("--event", metavar="GLOB", help="only events whose eventName matches")
    selection.add_argument("--reason", help="only rows whose reason matches (glob or prefix)")
    selection.add_argument("--route", help="only rows of this route")
    selection.add_argument(
        "--since", metavar="TIME", help="dead-lettered since (2026-12-01T10:00Z, 2h)"
    )
    selection.add_argument("--until", metavar="TIME", help="dead-lettered before")
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, (short, long) in DLQ_ACTIONS.items():
        action = actions.add_parser(name, parents=[selection], help=short, description=long)
        if name in ("list", "show"):
            action.add_argument(
                "--limit", type=_positive(int), default=50, help="rows shown (default 50)"
            )
        if name == "list":
            action.add_argument("--json", action="store_true", help="one JSON object per row")
        if name == "purge":
            action.add_argument("--all", action="store_true", help="every dead letter")
        if name == "replay":
            action.add_argument("--rate", type=float, help="at most N events/s (paced per row)")
        if name == "export":
            action.add_argument(
                "-o", "--output", default="-", help="JSON lines file (default -, standard output)"
            )

    spool = command(
        "spool",
        "check the SQLite spool file, or salvage a damaged one",
        "Check or salvage the SQLite spool file named in the config's spool: section.",
    )
    spool_actions = spool.add_subparsers(dest="action", required=True, metavar="ACTION")
    spool_check = spool_actions.add_parser(
        "check",
        help="check the spool file read-only",
        description="Check the spool file read-only: exit 0 when sound, 1 with what is damaged.",
    )
    spool_check.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=CONFIG_HELP)
    salvage = spool_actions.add_parser(
        "salvage",
        help="copy what can be read into a new spool file",
        description="Copy every readable row of a damaged spool file into a new file (--to);"
        " the damaged file is left as it is. Stop the daemon first.",
    )
    salvage.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=CONFIG_HELP)
    salvage.add_argument("--to", metavar="NEW_FILE", help="the new spool file to write")

    status = command(
        "status",
        "show the running daemon's status",
        "Read the running daemon's /status.json from its admin listener (server.admin_listen)"
        " and print targets, queues and sources as a table.",
    )
    status.add_argument("-c", "--config", help="read server.admin_listen from this config")
    status.add_argument("--url", help="admin base URL (default http://127.0.0.1:9102)")
    status.add_argument(
        "--watch",
        nargs="?",
        type=_positive(float),
        const=2.0,
        metavar="SECONDS",
        help="refresh (every 2 s)",
    )

    send = command(
        "send",
        "POST a JSON file to a relay source (for testing)",
        "POST a JSON file to one of the relay's sources, signed like a Statsig webhook when a"
        " secret is given; prints the answer.",
    )
    send.add_argument("url", help="e.g. http://127.0.0.1:8080/webhooks/statsig")
    send.add_argument("file", help="JSON file, or - for standard input")
    send.add_argument(
        "--secret",
        default=os.environ.get("STATSIG_WEBHOOK_SECRET"),
        help="sign as Statsig does (default: $STATSIG_WEBHOOK_SECRET)",
    )
    send.add_argument("--header", action="append", default=[], help="extra 'Name: value'")
    return parser


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a finite number above 0 (a bad one is a usage error, exit 2)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f"must be a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point: a reader that goes away (``| head``) ends the command quietly."""
    try:
        code = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would print the error again when it flushes stdout at exit: point it nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # as a command killed by SIGPIPE
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) == DEFAULT_CONFIG and not Path(DEFAULT_CONFIG).exists():
        print(_no_config(args.command), file=sys.stderr)
        return 2
    try:
        if args.command == "send":
            return _send(args)
        if args.command == "status":
            return _status(args)
        if args.command == "dlq":
            return asyncio.run(_dlq(load_spool_section(args.config), args))
        if args.command == "spool":
            to = getattr(args, "to", None)  # only `salvage` takes --to
            return _spool(load_spool_section(args.config).spool, args.action, to)
        config = load_config(args.config)
    except ConfigError as exc:
        errors = exc.errors if isinstance(exc, ConfigErrors) else [exc]
        for error in errors:
            print(f"statsig-relay: config error: {error}", file=sys.stderr)
        where = f" in {args.config}" if getattr(args, "config", None) else ""
        plural = "s" if len(errors) > 1 else ""
        print(f"statsig-relay: {len(errors)} config error{plural}{where}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(routing_table(config))
        return _spool_report(config.spool)
    return _run(config, args.config)


def _no_config(command: str) -> str:
    where = "$RELAY_CONFIG" if "RELAY_CONFIG" in os.environ else "the default"
    return (
        f"statsig-relay: no config file: looked for {DEFAULT_CONFIG} ({where}) in"
        f" {os.getcwd()}; pass one with -c, e.g. statsig-relay {command} -c"
        " /etc/statsig-relay/config.yaml, or set RELAY_CONFIG"
    )


def _run(config: Config, path: str) -> int:
    from .app import Relay

    setup_logging(config.server.log_level, config.server.log_format)
    for warning in config.warnings:
        logging.getLogger("relay.config").warning("config warning: %s", warning)
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
    if config.warnings:
        lines += ["", "warnings:"]
        lines.extend(f"  {warning}" for warning in config.warnings)
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
        rate = getattr(args, "rate", None)
        if rate is not None and rate <= 0:
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
    except BrokenPipeError:  # the reader went away (| head): main() ends quietly
        raise
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
        as_json = getattr(args, "json", False)
        if not chosen and not as_json:
            print("no dead letters match" if flt.narrows else "the dead-letter queue is empty")
        elif not as_json:
            print("ID\tTARGET\tROUTE\tEVENTS\tATTEMPTS\tDEAD AT\tREASON")
        for picked in chosen[: args.limit]:
            row = picked.row
            if as_json:
                print(orjson.dumps(_dead_row(picked)).decode())
                continue
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
            print(f"... {len(chosen) - args.limit} more rows (--limit)", file=sys.stderr)
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


def _dead_row(picked: Selected) -> dict[str, object]:
    """``dlq list --json``: one row as an object (``events`` selected of ``row_events``)."""
    from .dlq import iso_time

    row = picked.row
    return {
        "id": row.id,
        "target": row.target,
        "route": row.route,
        "events": picked.count,
        "row_events": row.count,
        "attempts": row.attempts,
        "dead_at": iso_time(row.dead_at_ms),
        "reason": row.reason,
    }


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
                print(f"statsig-relay: cannot read {url}: {exc}{_not_admin(exc)}", file=sys.stderr)
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


def _not_admin(exc: Exception) -> str:
    """A 404 for /status.json: most likely the public listener was named, not the admin one."""
    if isinstance(exc, urllib.error.HTTPError) and exc.code == 404:
        return (
            "; this looks like the public listener (server.listen): status reads the admin"
            " listener, server.admin_listen (default 127.0.0.1:9102); pass --url with that"
            " address or -c with the daemon's config"
        )
    return ""


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110)


def _header_problem(name: str, value: str) -> str:
    """Why ``--header NAME: VALUE`` cannot be sent, or ""."""
    if not _TOKEN.fullmatch(name):
        return "not a header name (expected NAME: VALUE)"
    if "\r" in value or "\n" in value:
        return "the value holds a line break"
    try:  # http.client sends header values as latin-1
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "not latin-1"
    return ""


def _send(args: argparse.Namespace) -> int:
    import urllib.request

    from .sources.statsig_webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

    try:
        body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        print(f"statsig-relay: send: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    headers = {"Content-Type": "application/json"}
    if args.secret:
        timestamp = str(int(time.time() * 1000))
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = sign(args.secret.encode(), timestamp, body)
    for header in args.header:
        name, _, value = (part.strip() for part in header.partition(":"))
        problem = _header_problem(name, value)
        if problem:
            print(f"statsig-relay: send: --header {name[:60]!r}: {problem}", file=sys.stderr)
            return 2
        headers[name] = value
    try:
        request = urllib.request.Request(args.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            print(response.status, response.read().decode(errors="replace"))
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.code, exc.read().decode(errors="replace"), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"statsig-relay: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # urllib: no scheme, a bad host
        print(f"statsig-relay: send: not a URL: {args.url} ({exc})", file=sys.stderr)
        return 2
