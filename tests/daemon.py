"""Run the relay as a real subprocess, for tests of what only a process shows: readiness,
SIGTERM drain, kill -9 and restart, exit codes, logs.

    async with DaemonProcess(config_text, tmp_path, env={"X": "1"}) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin_port}/readyz")
        ...
        assert await daemon.terminate() == 0
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp

__all__ = ["DaemonProcess", "free_port"]

REPO_ROOT = Path(__file__).resolve().parent.parent


class _PortPicker:
    """Hands out loopback ports below the kernel's ephemeral range, each once per process.

    A port chosen by ``bind(port 0)`` lies in the ephemeral range, so a fake server or an
    outgoing connection started after it was handed out can be given the same port before
    the daemon binds it. Ports below that range are never picked by the kernel; starting at
    an offset from the pid keeps concurrent test processes apart.
    """

    def __init__(self) -> None:
        low, _high = _ephemeral_range()
        self._low, self._high = 10_000, max(10_500, low)
        span = self._high - self._low
        self._next = self._low + (os.getpid() * 997) % span

    def pick(self) -> int:
        span = self._high - self._low
        for _ in range(span):
            port = self._next
            self._next = self._low + (self._next - self._low + 1) % span
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
        raise RuntimeError(f"no free loopback port in {self._low}-{self._high}")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_PICKER = _PortPicker()


def free_port() -> int:
    """A loopback port free now and outside the range the kernel hands to ``bind(0)``."""
    return _PICKER.pick()


class DaemonProcess:
    """The relay daemon (``python -m relay run -c relay.yaml``) run in ``tmp_path``.

    The config is written to ``tmp_path/relay.yaml`` and the process runs with cwd=tmp_path,
    so relative paths in the config (spool files) land in the test's directory. stdout and
    stderr go to ``tmp_path/relay.log``, appended across restarts, so a failure message can
    show what the daemon said. ``argv`` replaces the command (tests use a stand-in script).
    ``start()`` may be called again after ``kill()`` to prove recovery across restarts.
    Used as an async context manager, the process is always killed on exit.
    """

    def __init__(
        self,
        config_text: str,
        tmp_path: Path | str,
        env: Mapping[str, str] | None = None,
        argv: Sequence[str] | None = None,
    ) -> None:
        self.tmp_path = Path(tmp_path)
        self.config_path = self.tmp_path / "relay.yaml"
        self.log_path = self.tmp_path / "relay.log"
        self.config_path.write_text(config_text)
        self.argv: list[str] = (
            list(argv)
            if argv is not None
            else [sys.executable, "-m", "relay", "run", "-c", str(self.config_path)]
        )
        # cwd is tmp_path, so put the repo on the path: `-m relay` must work uninstalled too.
        pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        self.env: dict[str, str] = {
            **os.environ,
            "PYTHONPATH": pythonpath,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        """Exit code once the process has exited (negative signal number if killed)."""
        return self.proc.poll() if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    async def start(self, ready_url: str, timeout: float = 15.0) -> None:
        """Spawn the process and wait until ``GET ready_url`` answers 200.

        Fails with the log tail as soon as the process exits, or at the deadline (after killing
        it), so a broken config or a crash shows its cause instead of a bare timeout.
        """
        if self.running():
            raise RuntimeError(f"daemon already running (pid {self.pid})")
        with self.log_path.open("ab") as log:
            log.write(f"--- start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.tmp_path,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        await self.wait_ready(ready_url, timeout)

    async def wait_ready(self, ready_url: str, timeout: float = 15.0) -> None:
        """Poll ``ready_url`` until 200; AssertionError with the log tail on exit or deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "no answer yet"
        per_try = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=per_try) as session:
            while True:
                code = self.returncode
                if code is not None:
                    raise AssertionError(
                        f"daemon exited with {code} before ready ({ready_url});"
                        f" log tail:\n{self.log_tail()}"
                    )
                try:
                    async with session.get(ready_url) as resp:
                        if resp.status == 200:
                            return
                        last = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last = repr(exc)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    self.kill()
                    raise AssertionError(
                        f"daemon not ready at {ready_url} after {timeout:g}s (last: {last});"
                        f" log tail:\n{self.log_tail()}"
                    )
                await asyncio.sleep(min(0.05, remaining))

    def kill(self) -> int | None:
        """SIGKILL (a crash, as kill -9) and reap; returns the exit code, None if never started.

        Synchronous on purpose: nothing needs the event loop while a killed process dies.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(timeout=10)

    async def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for exit; returns the exit code. SIGKILLs and fails at the deadline.

        Waits without blocking the loop, because a draining daemon may still be delivering to
        fake targets served by this same loop.
        """
        if self.proc is None:
            raise RuntimeError("daemon was never started")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (code := self.proc.poll()) is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.kill()
                raise AssertionError(
                    f"daemon did not exit within {timeout:g}s of SIGTERM; log tail:\n"
                    f"{self.log_tail()}"
                )
            await asyncio.sleep(min(0.02, remaining))
        return code

    async def __aenter__(self) -> DaemonProcess:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.kill()
