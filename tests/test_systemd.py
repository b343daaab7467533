"""systemd: READY/RELOADING/STOPPING and the watchdog over $NOTIFY_SOCKET; the unit verifies."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.daemon import DaemonProcess, free_port
from tests.fakes import FakeTargetFactory, poll_until

REPO = Path(__file__).resolve().parents[1]


async def test_daemon_notifies_ready_reloading_stopping_and_pings_the_watchdog(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.setblocking(False)
    messages: list[str] = []

    def drain() -> str:
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                return "\n".join(messages)

    port, admin = free_port(), free_port()
    config = f"""
server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}"}}
spool: {{path: ./spool.db}}
sources: {{statsig: {{type: statsig_webhook}}}}
targets: {{out: {{type: webhook, url: "{fake.url}/in"}}}}
routes: [{{name: all, from: statsig, to: out}}]
"""
    env = {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"}
    try:
        async with DaemonProcess(config, tmp_path, env=env) as daemon:
            await daemon.start(f"http://127.0.0.1:{admin}/readyz")
            await poll_until(lambda: "READY=1" in drain())
            await poll_until(lambda: "WATCHDOG=1" in drain(), timeout=5)
            os.kill(daemon.pid, signal.SIGHUP)  # type: ignore[arg-type]
            await poll_until(lambda: "RELOADING=1" in drain(), timeout=5)
            assert await daemon.terminate() == 0
            await poll_until(lambda: "STOPPING=1" in drain(), timeout=2)
        text = drain()
    finally:
        sock.close()
    assert text.index("READY=1") < text.index("RELOADING=1") < text.index("STOPPING=1")


def test_the_unit_file_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is part of this machine's image (systemd package)"
    unit = (REPO / "systemd" / "statsig-relay.service").read_text()
    # Point the unit at this checkout's executable so verify can check ExecStart.
    exe = str(Path(sys.executable).with_name("statsig-relay"))
    unit = unit.replace("/opt/statsig-relay/bin/statsig-relay", exe)
    path = tmp_path / "statsig-relay.service"
    path.write_text(unit)
    result = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in result.stderr.splitlines() if "statsig-relay.service" in line]
    assert result.returncode == 0 and not problems, result.stderr
    assert "Type=notify" in unit and "ExecStartPre=" in unit and "StateDirectory=" in unit
