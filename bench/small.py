"""Small-request benchmark: many small requests from wrk, the relay beside Fluent Bit.

Browsers and SDKs send one event, or a handful, per request, so the cost that matters is per
request, not per event. For each shape (``track``: one Segment ``track`` call of ~460 B on the
``segment`` source; ``rgstr``: a @statsig/js-client flush of 1-5 events on a ``statsig_events``
source, cross-origin) and each system (``relay``, ``relay-old``: another checkout, ``peer``:
Fluent Bit, ``floor``: bench/floor.py, the least a durable relay can do on aiohttp), one run
starts the counting sink and the system, drives it with ``wrk -t1 -c64
--latency`` for ``--duration`` seconds, waits (bounded) until the sink holds what was
acknowledged, and reads the system's CPU time and peak RSS (its child processes included) from
/proc. ``--repeat N`` alternates the systems in every round (A B A B ...) and prints ranges.
Results go to ``bench/results/small-<timestamp>.json`` and ``.md``.

    .venv/bin/python bench/small.py --duration 15 --repeat 2 \\
        --old-cwd ../relay-before --peer /path/to/fluent-bit

Loopback only; every wait has a deadline; it stops only the processes it started.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from run import (  # noqa: E402
    RESULTS_DIR,
    BenchError,
    Procs,
    free_port,
    git_info,
    http_get,
    parse_metrics,
    proc_cpu_s,
    render_config,
    tail,
    tree_cpu_s,
    tree_status_kb,
    wait_ready,
)

MAX_DURATION_S = 300.0
WRITE_KEY = "wk-bench"
CLIENT_KEY = "client-bench"
ORIGIN = "https://shop.example.com"

# Both shapes' sources in one config; each run uses one of them.
RELAY_CONFIG = """\
server: {listen: "{{listen}}", admin_listen: "{{admin_listen}}"}
spool: {backend: sqlite, path: "{{tmpdir}}/spool.db", max_size: 1GiB, synchronous: {{synchronous}}}
sources:
  segment: {type: segment, write_keys: ["{{write_key}}"]}
  browser:
    type: statsig_events
    api_keys: ["{{client_key}}"]
    cors: {origins: ["{{origin}}"]}
targets:
  sink: {type: webhook, url: "{{sink_url}}", batch_max_events: 1000, linger: 200ms, concurrency: 4}
routes:
  - {name: bench, from: [segment, browser], to: sink}
"""
PEER_CONFIG = BENCH_DIR / "peer" / "fluent-bit-small.conf"


@dataclass(frozen=True)
class Shape:
    """One request shape: its wrk script, the relay's path for it and what it carries."""

    script: str
    relay_path: str
    events_per_request: float  # on average over the script's cycle
    # Events a request may carry above the average: the in-flight requests wrk drops at the
    # end make the expected count uncertain by this much per connection.
    spread: float


SHAPES = {
    "track": Shape("small-track.lua", "/segment/v1/track", 1.0, 0.0),
    "rgstr": Shape("rgstr.lua", "/statsig/v1/rgstr", 3.0, 2.0),
}


@dataclass(frozen=True)
class System:
    """A system under test: a relay checkout (run from ``cwd``), a Fluent Bit binary or the
    floor server (bench/floor.py)."""

    name: str
    cwd: Path | None = None
    fluent_bit: Path | None = None
    floor: bool = False


# --------------------------------------------------------------------------- wrk


_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(value: str, unit: str) -> float:
    return float(value) * _UNIT_S[unit]


def parse_wrk(out: str) -> dict[str, Any]:
    """The figures of ``wrk --latency``'s report: requests, duration, non-2xx, errors, p50-p99."""
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h),", out)
    if not m:
        raise BenchError(f"cannot read wrk's report:\n{out[-2000:]}")
    requests, duration_s = int(m.group(1)), _seconds(m.group(2), m.group(3))
    latency = {
        f"p{p}_ms": round(_seconds(v, u) * 1000, 3)
        for p, v, u in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    kinds = ("connect", "read", "write", "timeout")
    errors = dict(zip(kinds, map(int, sock.groups()), strict=True)) if sock else {}
    bad = int(non_2xx.group(1)) if non_2xx else 0
    return {
        "requests": requests,
        "duration_s": duration_s,
        "non_2xx": bad,
        "acknowledged": requests - bad,
        "socket_errors": errors,
        "latency": latency,
    }


# --------------------------------------------------------------------------- one run


def start_system(
    system: System,
    shape: Shape,
    args: argparse.Namespace,
    procs: Procs,
    tmpdir: Path,
    ports: dict[str, int],
) -> tuple[subprocess.Popen[bytes], str, str, dict[str, Any]]:
    """Write the system's config, start it and wait until it is ready.

    Returns the process, the URL wrk posts to (without path), the path, and what to record."""
    values = {
        "listen": f"127.0.0.1:{ports['port']}",
        "admin_listen": f"127.0.0.1:{ports['admin']}",
        "port": str(ports["port"]),
        "admin_port": str(ports["admin"]),
        "sink_port": str(ports["sink"]),
        "sink_url": f"http://127.0.0.1:{ports['sink']}/ingest",
        "tmpdir": str(tmpdir),
        "synchronous": args.synchronous,
        "write_key": WRITE_KEY,
        "client_key": CLIENT_KEY,
        "origin": ORIGIN,
    }
    log = tmpdir / "system.log"
    if system.fluent_bit is not None:
        config = render_config(PEER_CONFIG.read_text(), values)
        path = tmpdir / "fluent-bit.conf"
        (tmpdir / "fluent-bit-storage").mkdir()
        cmd = [str(system.fluent_bit), "-c", str(path)]
        cwd, ready, url_path = tmpdir, "/", "/"  # in_http: the path "/" keeps the configured tag
    elif system.floor:
        config = ""
        cmd = [
            sys.executable,
            str(BENCH_DIR / "floor.py"),
            *("--port", values["port"], "--admin-port", values["admin_port"]),
            *("--sink", values["sink_url"], "--spool", str(tmpdir / "floor.db")),
            *("--write-key", WRITE_KEY, "--client-key", CLIENT_KEY, "--origin", ORIGIN),
            *("--stage", args.floor_stage),
        ]
        cwd, ready, url_path = BENCH_DIR, "/readyz", shape.relay_path
    else:
        config = render_config(RELAY_CONFIG, values)
        path = tmpdir / "relay.yaml"
        cmd = [sys.executable, "-m", "relay", "run", "-c", str(path)]
        cwd, ready, url_path = system.cwd or BENCH_DIR.parent, "/readyz", shape.relay_path
    if config:
        path.write_text(config)
    proc = procs.start(system.name, cmd, cwd, log)
    wait_ready(
        f"http://127.0.0.1:{ports['admin']}{ready}", proc, args.ready_timeout, system.name, log
    )
    wait_listening(ports["port"], proc, args.ready_timeout, system.name)
    info = {
        "cmd": shlex.join(cmd),
        "cwd": str(cwd),
        "config": config,
        "code": git_info(Path(cwd)) if system.cwd is not None else None,
    }
    return proc, f"http://127.0.0.1:{ports['port']}", url_path, info


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    """The public port accepts connections (Fluent Bit's admin server may come up first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode} before listening")
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise BenchError(f"{what} not listening on 127.0.0.1:{port} after {timeout:g}s")


def sink_events(sink_url: str) -> tuple[int, dict[str, Any]]:
    status, body = http_get(sink_url + "/stats")
    if status != 200:
        return -1, {}
    stats = json.loads(body)
    return int(stats.get("events", 0)), stats


def run_once(
    system: System, shape_name: str, args: argparse.Namespace, tmp_root: Path, n: int
) -> dict[str, Any]:
    shape = SHAPES[shape_name]
    tmpdir = tmp_root / f"{n:02d}-{system.name}-{shape_name}"
    tmpdir.mkdir()
    procs = Procs()
    loadavg_before = os.getloadavg()
    try:
        ports: dict[str, int] = {}
        for key in ("sink", "port", "admin"):
            for _ in range(20):  # distinct ports
                if (candidate := free_port()) not in ports.values():
                    ports[key] = candidate
                    break
        if len(ports) < 3:
            raise BenchError("could not find three free ports")
        sink_url = f"http://127.0.0.1:{ports['sink']}"
        sink_cmd = [sys.executable, str(BENCH_DIR / "sink.py"), "--port", str(ports["sink"])]
        if system.fluent_bit is not None:
            sink_cmd.append("--count-inner-events")  # one record per js-client request
        sink_log = tmpdir / "sink.log"
        sink = procs.start("sink", sink_cmd, BENCH_DIR, sink_log)
        wait_ready(sink_url + "/stats", sink, 15, "sink", sink_log)

        proc, base_url, url_path, info = start_system(system, shape, args, procs, tmpdir, ports)
        env = {
            **os.environ,
            "URL_PATH": url_path,
            "WRITE_KEY": WRITE_KEY,
            "CLIENT_KEY": CLIENT_KEY,
            "ORIGIN": ORIGIN,
            "RUN_ID": base64.b32encode(os.urandom(5)).decode().lower(),
        }
        wrk_cmd = [
            args.wrk,
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{args.duration:g}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            str(BENCH_DIR / shape.script),
            base_url,
        ]
        cpu0 = tree_cpu_s(proc.pid) or 0.0
        sink_cpu0 = proc_cpu_s(sink.pid) or 0.0
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t_start = time.time()
        try:
            done = subprocess.run(
                wrk_cmd,
                env=env,
                capture_output=True,
                text=True,
                timeout=args.duration + 30,
                check=False,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError("wrk overran its time budget") from exc
        except OSError as exc:
            raise BenchError(f"cannot run wrk ({args.wrk}): {exc}") from exc
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise BenchError(f"wrk failed ({done.returncode}): {done.stderr[-2000:]}")
        wrk = parse_wrk(done.stdout)
        if wrk["acknowledged"] == 0:
            raise BenchError(
                f"{system.name} acknowledged no request of {wrk['requests']}\n"
                + tail(tmpdir / "system.log")
            )

        # Drain: at least what was acknowledged (less the in-flight uncertainty of a varying
        # shape), then no change for --settle s (Fluent Bit flushes once a second).
        forwards = not system.floor or args.floor_stage in ("commit", "dedup")
        expected = wrk["acknowledged"] * shape.events_per_request * forwards
        floor = int(expected - shape.spread * args.connections)
        t_end = time.monotonic()
        deadline = t_end + args.drain_timeout
        last, last_change, stats = -1, t_end, {}
        while time.monotonic() < deadline and proc.poll() is None:
            count, stats = sink_events(sink_url)
            now = time.monotonic()
            if count != last:
                last, last_change = count, now
            elif count >= floor and now - last_change >= args.settle:
                break
            time.sleep(0.1)
        delivered = max(last, 0)
        drained = delivered >= floor
        alive = proc.poll() is None
        cpu_s = (tree_cpu_s(proc.pid) or cpu0) - cpu0 if alive else None
        hwm_kb = tree_status_kb(proc.pid, "VmHWM") if alive else None
        metrics: dict[str, float] = {}
        if alive and system.cwd is not None:
            status, body = http_get(f"http://127.0.0.1:{ports['admin']}/metrics", timeout=5)
            if status == 200:
                metrics = {
                    k: v
                    for k, v in parse_metrics(body.decode(errors="replace")).items()
                    if v and k.startswith("relay_") and "_total" in k and "_bucket" not in k
                }
        sink_cpu_s = round((proc_cpu_s(sink.pid) or sink_cpu0) - sink_cpu0, 2)
        procs.stop(proc, timeout=args.stop_timeout)
        log_tail = tail(tmpdir / "system.log", 15)
    finally:
        procs.stop_all()

    acked = wrk["acknowledged"]
    first, last_ts = t_start, stats.get("last_ts")
    e2e_s = (last_ts - first) if last_ts else None
    wrk_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    return {
        "system": system.name,
        "shape": shape_name,
        "round": None,  # filled in by the caller
        "summary": {
            "requests_per_s": round(acked / wrk["duration_s"], 1),
            "e2e_events_per_s": round(delivered / e2e_s, 1) if e2e_s and delivered else 0.0,
            "cpu_us_per_request": round(cpu_s * 1e6 / acked, 1) if cpu_s else None,
            "cpu_us_per_event": round(cpu_s * 1e6 / delivered, 1) if cpu_s and delivered else None,
            "p99_ms": wrk["latency"].get("p99_ms"),
            "peak_rss_mb": round(hwm_kb / 1024, 1) if hwm_kb else None,
            "acknowledged": acked,
            "non_2xx": wrk["non_2xx"],
            "socket_errors": sum(wrk["socket_errors"].values()),
            "delivered": delivered,
            "expected": round(expected),
            "drained": drained,
            "loadavg_1m": round(loadavg_before[0], 2),
        },
        "wrk": {**wrk, "cmd": shlex.join(wrk_cmd), "cpu_s": round(wrk_cpu, 2)},
        "system_info": {**info, "alive_after_drain": alive, "log_tail": log_tail},
        "cpu_s": {
            "system": round(cpu_s, 2) if cpu_s is not None else None,
            "sink": sink_cpu_s,
            "wrk": round(wrk_cpu, 2),
        },
        "drain": {"floor": floor, "wait_s": round(time.monotonic() - t_end, 2), "e2e_s": e2e_s},
        "sink": stats,
        "metrics": metrics,
        "loadavg_before": loadavg_before,
        "loadavg_after": os.getloadavg(),
    }


# --------------------------------------------------------------------------- report

COLUMNS = (
    ("requests/s acknowledged", "requests_per_s", "{:,.0f}"),
    ("end-to-end events/s", "e2e_events_per_s", "{:,.0f}"),
    ("CPU µs/request", "cpu_us_per_request", "{:,.0f}"),
    ("p99 ms", "p99_ms", "{:,.1f}"),
    ("peak RSS MB", "peak_rss_mb", "{:,.0f}"),
    ("load avg before", "loadavg_1m", "{:.1f}"),
)


def span(values: list[Any], fmt: str) -> str:
    """One value, or the range over the rounds."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    lo, hi = min(vals), max(vals)
    return (
        fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"
    )


def markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    systems = result["systems"]
    lines = [
        f"## statsig-relay small-request bench {result['started_at']}",
        "",
        f"`{result['command']}`",
        "",
        f"wrk -t{result['wrk']['threads']} -c{result['wrk']['connections']} "
        f"-d{result['wrk']['duration_s']:g}s, {result['rounds']} round(s) alternated; "
        f"spool `synchronous: {result['synchronous']}`; {result['machine']['cpus']} CPUs, "
        f"load average {result['machine']['loadavg_start'][0]:.2f} at the start, "
        f"{result['machine']['loadavg_end'][0]:.2f} at the end",
        "",
    ]
    for name, info in systems.items():
        lines.append(f"- {name}: {info}")
    first = next(iter(systems))
    lines += [
        "",
        "| shape | system | "
        + " | ".join(c[0] for c in COLUMNS)
        + f" | requests/s vs {first}, same round | non-2xx | delivered / expected |",
        "| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " | --- | --- | --- |",
    ]
    for shape in result["shapes"]:
        for system in systems:
            mine = [r for r in runs if r["shape"] == shape and r["system"] == system]
            if not mine:
                continue
            cells = [span([r["summary"][key] for r in mine], fmt) for _, key, fmt in COLUMNS]
            ratios = []
            for r in mine:
                base = [
                    b
                    for b in runs
                    if b["shape"] == shape and b["system"] == first and b["round"] == r["round"]
                ]
                if base and base[0]["summary"]["requests_per_s"]:
                    ratios.append(
                        r["summary"]["requests_per_s"] / base[0]["summary"]["requests_per_s"]
                    )
            ratio = span(ratios, "{:.2f}×") if system != first else ""
            bad = sum(r["summary"]["non_2xx"] + r["summary"]["socket_errors"] for r in mine)
            delivered = " ".join(
                f"{r['summary']['delivered']:,}/{r['summary']['expected']:,}"
                + ("" if r["summary"]["drained"] else " SHORT")
                for r in mine
            )
            lines.append(
                f"| {shape} | {system} | "
                + " | ".join(cells)
                + f" | {ratio} | {bad} | {delivered} |"
            )
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--duration", type=float, default=15.0, help=f"wrk seconds per run (max {MAX_DURATION_S:g})"
    )
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=1, help="rounds; each round runs every system")
    p.add_argument("--shapes", default="track,rgstr", help=f"comma-separated: {', '.join(SHAPES)}")
    p.add_argument(
        "--systems",
        default=None,
        help="comma-separated, in the order of a round: relay, relay-old (needs --old-cwd), "
        "peer (needs --peer), floor (bench/floor.py); default: relay and whichever of "
        "relay-old and peer is given",
    )
    p.add_argument("--relay-cwd", default=str(BENCH_DIR.parent), help="checkout run as 'relay'")
    p.add_argument("--old-cwd", default=None, help="checkout run as 'relay-old' (e.g. a worktree)")
    p.add_argument("--peer", default=None, metavar="FLUENT_BIT", help="Fluent Bit binary ('peer')")
    p.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    p.add_argument(
        "--floor-stage",
        default="dedup",
        choices=("read", "parse", "commit", "dedup"),
        help="how far the floor takes each request (bench/floor.py --stage)",
    )
    p.add_argument(
        "--synchronous",
        choices=("full", "normal"),
        default="full",
        help="the relay's SQLite spool synchronous setting (full: fsync every commit)",
    )
    p.add_argument("--ready-timeout", type=float, default=30.0)
    p.add_argument("--drain-timeout", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=2.0, help="sink unchanged this long = drained")
    p.add_argument("--stop-timeout", type=float, default=15.0)
    p.add_argument("--tmp-root", default=None, help="where the runs' temp dirs (spools) go")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dirs (logs, spools)")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = p.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION_S:
        p.error(f"--duration must be in (0, {MAX_DURATION_S:g}]")
    if not 1 <= args.repeat <= 10:
        p.error("--repeat must be in [1, 10]")
    if not 1 <= args.connections <= 1024 or not 1 <= args.threads <= args.connections:
        p.error("need 1 <= --threads <= --connections <= 1024")
    for name in ("ready_timeout", "drain_timeout", "stop_timeout"):
        if not 0 < getattr(args, name) <= 600:
            p.error(f"--{name.replace('_', '-')} must be in (0, 600]")
    if not 0 < args.settle <= 30:
        p.error("--settle must be in (0, 30]")
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if unknown := [s for s in args.shapes if s not in SHAPES]:
        p.error(f"unknown shape(s) {unknown}; known: {', '.join(SHAPES)}")
    if args.systems is None:
        args.systems = ["relay"] + ["relay-old"] * bool(args.old_cwd) + ["peer"] * bool(args.peer)
    else:
        args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    systems = {}
    for name in args.systems:
        if name == "relay":
            systems[name] = System(name, cwd=Path(args.relay_cwd).resolve())
        elif name == "relay-old":
            if not args.old_cwd:
                p.error("relay-old needs --old-cwd")
            systems[name] = System(name, cwd=Path(args.old_cwd).resolve())
        elif name == "peer":
            if not args.peer or not os.access(args.peer, os.X_OK):
                p.error(f"peer needs --peer PATH_TO_fluent-bit (executable), got {args.peer!r}")
            systems[name] = System(name, fluent_bit=Path(args.peer).resolve())
        elif name == "floor":
            systems[name] = System(name, floor=True)
        else:
            p.error(f"unknown system {name!r}; known: relay, relay-old, peer, floor")
    args.systems = systems
    return args


def one_line(run: dict[str, Any]) -> str:
    s = run["summary"]
    return (
        f"{s['requests_per_s']:,.0f} req/s, {s['e2e_events_per_s']:,.0f} events/s end to end, "
        f"{s['cpu_us_per_request']} µs CPU/request, p99 {s['p99_ms']} ms, {s['peak_rss_mb']} MB, "
        f"non-2xx {s['non_2xx']}, delivered {s['delivered']:,}/{s['expected']:,}, "
        f"load {run['loadavg_before'][0]:.2f}"
    )


def describe(system: System) -> str:
    if system.fluent_bit is not None:
        return f"Fluent Bit `{system.fluent_bit}` (`{PEER_CONFIG.relative_to(BENCH_DIR.parent)}`)"
    code = git_info(system.cwd or BENCH_DIR.parent)
    return f"`{system.cwd}` at {code['commit']} ({code['dirty_files']} uncommitted files)"


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    tmp_root = Path(tempfile.mkdtemp(prefix="relay-small-", dir=args.tmp_root))
    started = datetime.now(UTC).isoformat(timespec="seconds")
    loadavg_start = os.getloadavg()
    runs: list[dict[str, Any]] = []
    n = 0
    try:
        for rnd in range(1, args.repeat + 1):
            for shape in args.shapes:
                for system in args.systems.values():
                    n += 1
                    print(
                        f"[{n}] round {rnd}, {shape}, {system.name} ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    run = run_once(system, shape, args, tmp_root, n)
                    run["round"] = rnd
                    runs.append(run)
                    print(f"    {one_line(run)}", file=sys.stderr, flush=True)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep_tmp:
            print(f"kept {tmp_root}", file=sys.stderr)
        else:
            shutil.rmtree(tmp_root, ignore_errors=True)
    result = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "started_at": started,
        "rounds": args.repeat,
        "shapes": args.shapes,
        "synchronous": args.synchronous,
        "systems": {name: describe(system) for name, system in args.systems.items()},
        "wrk": {
            "threads": args.threads,
            "connections": args.connections,
            "duration_s": args.duration,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "loadavg_start": loadavg_start,
            "loadavg_end": os.getloadavg(),
        },
        "runs": runs,
    }
    md = markdown(result)
    print(md)
    if not args.no_save:
        RESULTS_DIR.mkdir(exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        (RESULTS_DIR / f"small-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS_DIR / f"small-{stamp}.md").write_text(md)
        print(f"wrote {RESULTS_DIR}/small-{stamp}.json and .md", file=sys.stderr)
    return 0 if all(r["summary"]["drained"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
