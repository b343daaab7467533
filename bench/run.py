"""Benchmark orchestrator: sink + relay + load generator, each its own process, on loopback.

Starts the counting sink, writes a relay config into a temp dir and starts the relay, waits for
its /readyz, runs the load generator for ``--duration`` seconds, waits (bounded) until the sink
holds every accepted event the route keeps, then reads the relay's peak RSS (VmHWM) and /metrics
and writes ``bench/results/<timestamp>.json`` and ``.md``. Every process it started is stopped
on exit, Ctrl-C and errors; every wait has a deadline.

    .venv/bin/python bench/run.py --duration 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
MAX_DURATION_S = 900.0  # a 10-minute soak fits

# The relay config under test; {{name}} tokens are filled in per run (see render_config).
DEFAULT_CONFIG = """\
server: {listen: "{{listen}}", admin_listen: "{{admin_listen}}", max_body: 5MiB}
spool: {backend: sqlite, path: "{{tmpdir}}/spool.db", max_size: 1GiB, synchronous: {{synchronous}}}
sources:
  statsig: {type: statsig_webhook, path: {{webhook_path}}, signing_secret: "{{secret}}"}
targets:
  sink: {type: webhook, url: "{{sink_url}}", batch_max_events: 1000, linger: 200ms, concurrency: 4}
routes:
  - {name: bench, from: statsig, to: sink, filter: {exclude_events: ["statsig::diagnostics"]}}
"""
DEFAULT_RELAY_CMD = "{python} -m relay run -c {config}"

# The absolute bars (bench/README.md, "The numbers"); a throughput comparison with another
# commit is a ratio of alternated runs (A B B A), so it is read from pairs of results, not here.
BAR_E2E_EVENTS_S = 100_000
BAR_P99_MS = 10.0
BAR_RSS_MB = 80.0
BAR_CPU_US_PER_EVENT = 3.5


class BenchError(Exception):
    """A step failed; the message says which and why."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A port the kernel considers free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET a loopback URL; (status, body), or (0, b"") when nothing answers."""
    if not url.startswith(("http://127.0.0.1:", "http://[::1]:", "http://localhost:")):
        raise BenchError(f"refusing non-loopback URL {url}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, b""


def render_config(template: str, values: dict[str, str]) -> str:
    """Fill ``{{name}}`` tokens; an unknown token is an error, not a silent blank."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise BenchError(
                f"config template: unknown token {{{{{m.group(1)}}}}}; "
                f"known: {', '.join(sorted(values))}"
            )
        return values[m.group(1)]

    return re.sub(r"\{\{(\w+)\}\}", sub, template)


def proc_status_int(pid: int, key: str) -> int | None:
    """A numeric field (VmHWM in kB, Threads) of /proc/PID/status; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds the process has used so far."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def tree_cpu_s(pid: int) -> float | None:
    """CPU seconds of the process and its descendants (the relay's spool writer process)."""
    if proc_cpu_s(pid) is None:
        return None
    return sum(proc_cpu_s(p) or 0.0 for p in proc_tree(pid))


def tree_status_kb(pid: int, field: str) -> int | None:
    """A memory field (VmRSS, VmHWM) summed over the process and its descendants."""
    if proc_status_int(pid, field) is None:
        return None
    return sum(proc_status_int(p, field) or 0 for p in proc_tree(pid))


def proc_tree(pid: int, limit: int = 64) -> list[int]:
    """The process and its descendants (bounded), for relays that fork workers."""
    out, todo = [], [pid]
    while todo and len(out) < limit:
        p = todo.pop()
        out.append(p)
        with suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children", encoding="ascii") as fh:
                    todo += [int(c) for c in fh.read().split()]
    return out


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition → {"name{labels}": value}; comments dropped."""
    out: dict[str, float] = {}
    for line in text.splitlines()[:20_000]:
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with suppress(ValueError):
            out[key] = float(value)
    return out


def git_info(cwd: Path) -> dict[str, Any]:
    """Commit and dirtiness of the code under test, so results can be compared later."""

    def git(*a: str) -> str:
        try:
            r = subprocess.run(
                ["git", "-C", str(cwd), *a], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return r.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "dirty_files": len(git("status", "--porcelain").splitlines()),
    }


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- processes


class Procs:
    """Child processes, each in its own session so they can be stopped as a group by id."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes] | None]] = []

    def start(
        self,
        name: str,
        cmd: list[str],
        cwd: Path,
        log: Path | None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        out = open(log, "wb") if log else None  # noqa: SIM115 - closed in stop()
        try:
            p = subprocess.Popen(
                cmd,
                cwd=cwd,
                stdout=out or subprocess.PIPE,
                stderr=out or subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            if out:
                out.close()
            raise BenchError(f"cannot start {name}: {shlex.join(cmd)}: {exc}") from exc
        self.procs.append((name, p, out))
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
        """SIGTERM the process group, wait (bounded), then SIGKILL it."""
        if p.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                with suppress(subprocess.TimeoutExpired):
                    p.wait(5)
        else:
            with suppress(ProcessLookupError):  # leftover children of an exited leader
                os.killpg(p.pid, signal.SIGKILL)
        for _, q, out in self.procs:
            if q is p and out:
                out.close()
        return p.returncode

    def stop_all(self) -> None:
        for _, p, _ in reversed(self.procs):
            self.stop(p)


def wait_ready(
    url: str, proc: subprocess.Popen[bytes], timeout: float, what: str, log: Path | None
) -> float:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits. Returns seconds taken."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"{what} exited with {proc.returncode} before it was ready\n"
                + (tail(log) if log else "")
            )
        status, _ = http_get(url, timeout=1.0)
        if status == 200:
            return time.monotonic() - t0
        time.sleep(0.1)
    raise BenchError(f"{what} not ready at {url} after {timeout:g}s\n" + (tail(log) if log else ""))


# --------------------------------------------------------------------------- the run


def run_bench(args: argparse.Namespace, procs: Procs, tmpdir: Path) -> dict[str, Any]:
    py = sys.executable
    ports: list[int] = []
    for _ in range(20):  # distinct ports; the kernel rarely repeats one this soon
        if len(ports) == 3:
            break
        if (candidate := free_port()) not in ports:
            ports.append(candidate)
    if len(ports) < 3:
        raise BenchError("could not find three free ports")
    sink_port, port, admin_port = ports
    secret = secrets.token_hex(16)
    values = {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin_port}",
        "port": str(port),
        "admin_port": str(admin_port),
        "sink_port": str(sink_port),
        "sink_url": f"http://127.0.0.1:{sink_port}/ingest",
        "tmpdir": str(tmpdir),
        "secret": secret,
        "webhook_path": args.webhook_path,
        "python": py,
        "synchronous": args.synchronous,
        "bench_dir": str(BENCH_DIR),
    }
    template = Path(args.config_template).read_text() if args.config_template else DEFAULT_CONFIG
    config_text = render_config(template, values)
    config_path = tmpdir / "relay.yaml"
    config_path.write_text(config_text)
    values["config"] = str(config_path)

    # 1. sink
    sink_log = tmpdir / "sink.log"
    sink_url = f"http://127.0.0.1:{sink_port}"
    sink = procs.start(
        "sink", [py, str(BENCH_DIR / "sink.py"), "--port", str(sink_port)], BENCH_DIR, sink_log
    )
    wait_ready(sink_url + "/stats", sink, 15, "sink", sink_log)

    # 2. relay
    try:
        relay_cmd = [tok.format(**values) for tok in shlex.split(args.relay_cmd)]
    except (KeyError, IndexError, ValueError) as exc:
        raise BenchError(
            f"--relay-cmd: bad placeholder {exc}; known: {', '.join(sorted(values))}"
        ) from exc
    env = dict(os.environ)
    for kv in args.relay_env:
        k, sep, v = kv.partition("=")
        if not sep:
            raise BenchError(f"--relay-env wants KEY=VALUE, got {kv!r}")
        env[k] = v
    relay_log = tmpdir / "relay.log"
    print(f"relay: {shlex.join(relay_cmd)}  (cwd {args.relay_cwd})", file=sys.stderr)
    relay = procs.start("relay", relay_cmd, Path(args.relay_cwd), relay_log, env)
    admin = f"http://127.0.0.1:{admin_port}"
    ready_s = wait_ready(admin + args.ready_path, relay, args.ready_timeout, "relay", relay_log)
    relay_cpu0 = tree_cpu_s(relay.pid) or 0.0
    sink_cpu0 = proc_cpu_s(sink.pid) or 0.0

    # 3. load
    lg_cmd = [
        py,
        str(BENCH_DIR / "loadgen.py"),
        "--json",
        "--url",
        f"http://127.0.0.1:{port}{args.webhook_path}",
        "--secret",
        secret,
        "--duration",
        str(args.duration),
        "--concurrency",
        str(args.concurrency),
        "--max-requests",
        str(args.max_requests),
        "--events-per-batch",
        str(args.events_per_batch),
    ]
    if args.rate:
        lg_cmd += ["--rate", str(args.rate)]
    if args.wrap:
        lg_cmd.append("--wrap")
    print(
        f"load: {args.duration:g}s, concurrency {args.concurrency}, rate {args.rate or 'max'}",
        file=sys.stderr,
    )
    lg = procs.start("loadgen", lg_cmd, BENCH_DIR, None)
    # The relay's resident memory while the load runs, every --rss-every s: flat or growing.
    rss_samples: list[tuple[float, int]] = []
    t_load = time.monotonic()
    load_deadline = t_load + args.duration + 40
    while lg.poll() is None and time.monotonic() < load_deadline:
        rss_kb = tree_status_kb(relay.pid, "VmRSS")
        if rss_kb is not None:
            rss_samples.append((round(time.monotonic() - t_load, 1), rss_kb))
        with suppress(subprocess.TimeoutExpired):
            lg.wait(timeout=args.rss_every)
    try:
        out, err = lg.communicate(timeout=max(1.0, load_deadline - time.monotonic()))
    except subprocess.TimeoutExpired as exc:
        raise BenchError("load generator overran its time budget") from exc
    if lg.returncode not in (0, 1):
        raise BenchError(f"load generator failed ({lg.returncode}): {err.decode()[-2000:]}")
    load = json.loads(out)

    # 4. drain: wait until the sink holds what the relay accepted and the route keeps
    expected = load["events_accepted_kept" if args.expect == "kept" else "events_accepted"]
    t_load_end = time.monotonic()
    deadline = t_load_end + args.drain_timeout
    sink_stats: dict[str, Any] = {}
    while True:
        status, body = http_get(sink_url + "/stats")
        if status == 200:
            sink_stats = json.loads(body)
        if sink_stats.get("events", 0) >= expected or time.monotonic() >= deadline:
            break
        if relay.poll() is not None:
            break
        time.sleep(0.1)
    drained = sink_stats.get("events", 0) >= expected
    drain_wait_s = time.monotonic() - t_load_end
    if drained and args.settle > 0:  # catch late duplicates or over-delivery
        time.sleep(args.settle)
        status, body = http_get(sink_url + "/stats")
        if status == 200:
            sink_stats = json.loads(body)

    # 5. relay footprint and metrics
    relay_alive = relay.poll() is None
    tree = proc_tree(relay.pid) if relay_alive else []
    # Peak RSS of the relay's processes, summed (each process's own peak: an upper bound).
    hwm_kb = tree_status_kb(relay.pid, "VmHWM") if relay_alive else None
    threads = proc_status_int(relay.pid, "Threads") if relay_alive else None
    tree_hwm_kb = sum(proc_status_int(p, "VmHWM") or 0 for p in tree)
    relay_cpu = (tree_cpu_s(relay.pid) or relay_cpu0) - relay_cpu0 if relay_alive else None
    sink_cpu = (proc_cpu_s(sink.pid) or sink_cpu0) - sink_cpu0
    metrics_text = ""
    if relay_alive:
        status, body = http_get(admin + args.metrics_path, timeout=5)
        if status == 200:
            metrics_text = body.decode(errors="replace")
    t0 = time.monotonic()
    relay_exit = procs.stop(relay, timeout=args.stop_timeout)
    relay_stop_s = time.monotonic() - t0

    delivered = int(sink_stats.get("events", 0))
    first_send = load.get("first_send_ts")
    last_ts = sink_stats.get("last_ts")
    e2e_s = (last_ts - first_send) if (last_ts and first_send) else None
    lat = load["latency_ms"]
    e2e_rate = delivered / e2e_s if e2e_s else 0.0
    # The same window, counted in events that came in (the bar's unit: 100k in, 25 % filtered,
    # the rest out). Only meaningful once everything is delivered.
    e2e_in_rate = load["events_accepted"] / e2e_s if (e2e_s and drained) else 0.0
    rss_mb = hwm_kb / 1024 if hwm_kb else None
    # Soak: RSS once warmed up (the first sample after 10 % of the load) and at the end of it.
    warm = [kb for t, kb in rss_samples if t >= args.duration * 0.1]
    warm = warm or [kb for _, kb in rss_samples]
    cpu_us = (
        round(relay_cpu * 1e6 / load["events_accepted"], 2)
        if relay_cpu and load["events_accepted"]
        else None
    )
    load_cpu = load.get("cpu_s")
    summary = {
        "ingest_events_per_s": load["events_per_s"],
        "e2e_events_per_s": round(e2e_rate, 1),
        "e2e_input_events_per_s": round(e2e_in_rate, 1),
        "ingest_p50_ms": lat["p50"],
        "ingest_p99_ms": lat["p99"],
        "peak_rss_mb": round(rss_mb, 1) if rss_mb else None,
        "delivered": delivered,
        "expected": expected,
        "missing": max(0, expected - delivered),
        "excess": max(0, delivered - expected),
        "drained": drained,
        "relay_cpu_s": round(relay_cpu, 2) if relay_cpu is not None else None,
        "relay_cpu_us_per_event": cpu_us,
        "rss_warm_mb": round(warm[0] / 1024, 1) if warm else None,
        "rss_end_mb": round(warm[-1] / 1024, 1) if warm else None,
        "meets_bar": {
            "e2e_input_events_per_s>=100k": e2e_in_rate >= BAR_E2E_EVENTS_S,
            "p99_ms<=10": lat["p99"] is not None and lat["p99"] <= BAR_P99_MS,
            "peak_rss_mb<=80": rss_mb is not None and rss_mb <= BAR_RSS_MB,
            "cpu_us_per_event<=3.5": cpu_us is not None and cpu_us <= BAR_CPU_US_PER_EVENT,
            "all_delivered": drained,
        },
    }
    return {
        "summary": summary,
        "command": shlex.join([sys.executable, *sys.argv]),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "loadavg_after": os.getloadavg(),
        },
        "code": git_info(Path(args.relay_cwd)),
        "relay": {
            "cmd": shlex.join(relay_cmd),
            "cwd": str(args.relay_cwd),
            "ready_s": round(ready_s, 3),
            "alive_after_drain": relay_alive,
            "peak_rss_kb": hwm_kb,
            "threads": threads,
            "tree_pids": len(tree),
            "tree_peak_rss_kb": tree_hwm_kb,
            "cpu_s_during_run": relay_cpu,
            "stop_s": round(relay_stop_s, 3),
            "exit_code": relay_exit,
            "log_tail": tail(relay_log, 20),
        },
        "config": config_text.replace(secret, "<secret>"),
        "load": load,
        "rss_samples_kb": rss_samples,
        "sink": {**sink_stats, "cpu_s_during_run": round(sink_cpu, 3)},
        "drain": {
            "expect": args.expect,
            "wait_s": round(drain_wait_s, 3),
            "timeout_s": args.drain_timeout,
            "e2e_window_s": e2e_s,
        },
        "cpu_s": {"relay": summary["relay_cpu_s"], "sink": round(sink_cpu, 2), "loadgen": load_cpu},
        "metrics": parse_metrics(metrics_text),
    }


def markdown(r: dict[str, Any]) -> str:
    s, load, relay = r["summary"], r["load"], r["relay"]

    def mark(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    bar = s["meets_bar"]
    rss = f"{s['peak_rss_mb']} MB" if s["peak_rss_mb"] is not None else "n/a"
    return "\n".join(
        (
            f"## statsig-relay bench {r['started_at']}",
            "",
            f"`{r['command']}`",
            "",
            f"relay `{relay['cmd']}` at commit {r['code']['commit']} "
            f"({r['code']['dirty_files']} uncommitted files); {r['machine']['cpus']} CPUs",
            "",
            "| metric | value | bar |",
            "| --- | --- | --- |",
            f"| ingest events/s | {s['ingest_events_per_s']:,.0f} | |",
            f"| end-to-end events/s, delivered | {s['e2e_events_per_s']:,.0f} | |",
            f"| end-to-end events/s, input | {s['e2e_input_events_per_s']:,.0f} | ≥ 100,000 "
            f"{mark(bar['e2e_input_events_per_s>=100k'])} |",
            f"| ingest latency p50 / p99 | {s['ingest_p50_ms']} / {s['ingest_p99_ms']} ms | "
            f"p99 ≤ 10 ms {mark(bar['p99_ms<=10'])} |",
            f"| relay peak RSS (VmHWM) | {rss} | ≤ 80 MB {mark(bar['peak_rss_mb<=80'])} |",
            f"| relay RSS warm → end of load | {s['rss_warm_mb']} → {s['rss_end_mb']} MB | flat |",
            f"| delivered / expected | {s['delivered']:,} / {s['expected']:,} "
            f"(missing {s['missing']:,}, excess {s['excess']:,}) | all "
            f"{mark(bar['all_delivered'])} |",
            f"| requests ok / non-2xx / errors | {load['ok']:,} / {load['non_2xx'] or 0} / "
            f"{load['errors'] or 0} | |",
            f"| CPU s relay / sink / loadgen | {r['cpu_s']['relay']} / {r['cpu_s']['sink']} / "
            f"{r['cpu_s']['loadgen']} ({s['relay_cpu_us_per_event']} µs/event in relay) | "
            f"≤ 3.5 µs/event {mark(bar['cpu_us_per_event<=3.5'])} |",
            "",
        )
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=20.0, help="load seconds (max 900)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rate", type=float, default=None, help="requests/s cap (default: max)")
    p.add_argument("--max-requests", type=int, default=1_000_000)
    p.add_argument("--events-per-batch", type=int, default=100)
    p.add_argument("--wrap", action="store_true", help='send {"data": [...]} bodies')
    p.add_argument(
        "--relay-cmd",
        default=DEFAULT_RELAY_CMD,
        help="relay command; placeholders {python} {config} {tmpdir} {listen} "
        "{admin_listen} {port} {admin_port} {sink_url} {bench_dir}",
    )
    p.add_argument("--relay-cwd", default=str(BENCH_DIR.parent), help="default: this checkout")
    p.add_argument(
        "--synchronous",
        choices=("full", "normal"),
        default="full",
        help="the SQLite spool's synchronous setting (full: fsync every commit)",
    )
    p.add_argument("--rss-every", type=float, default=5.0, help="RSS sample interval, s")
    p.add_argument("--relay-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--config-template",
        default=None,
        help="relay config file with {{name}} tokens (default: built-in sqlite one)",
    )
    p.add_argument("--webhook-path", default="/webhooks/statsig")
    p.add_argument("--ready-path", default="/readyz")
    p.add_argument("--metrics-path", default="/metrics")
    p.add_argument(
        "--expect",
        choices=("kept", "all"),
        default="kept",
        help="kept: the route filters statsig::diagnostics; all: nothing filtered",
    )
    p.add_argument("--ready-timeout", type=float, default=30.0)
    p.add_argument("--drain-timeout", type=float, default=60.0)
    p.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds to keep watching the sink after it is complete (duplicates)",
    )
    p.add_argument("--stop-timeout", type=float, default=15.0)
    p.add_argument("--tmp-root", default=None, help="where the temp dir (spool) goes")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, spool)")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = p.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION_S:
        p.error(f"--duration must be in (0, {MAX_DURATION_S:g}]")
    for name in ("ready_timeout", "drain_timeout", "stop_timeout"):
        if not 0 < getattr(args, name) <= 600:
            p.error(f"--{name.replace('_', '-')} must be in (0, 600]")
    if not 0 <= args.settle <= 30:
        p.error("--settle must be in [0, 30]")
    return args


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)  # even when started with SIGINT ignored
    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="relay-bench-", dir=args.tmp_root)
    tmpdir = Path(tmp)
    try:
        result = run_bench(args, procs, tmpdir)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep_tmp:
            print(f"kept {tmpdir}", file=sys.stderr)
        else:
            shutil.rmtree(tmpdir, ignore_errors=True)
    md = markdown(result)
    print(md)
    if not args.no_save:
        RESULTS_DIR.mkdir(exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        (RESULTS_DIR / f"{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS_DIR / f"{stamp}.md").write_text(md)
        print(f"wrote {RESULTS_DIR / stamp}.json and .md", file=sys.stderr)
    return 0 if result["summary"]["drained"] else 1


if __name__ == "__main__":
    sys.exit(main())
