"""systemd integration without a dependency: sd_notify over $NOTIFY_SOCKET and the watchdog."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable


def notify(*states: str) -> bool:
    """Send ``READY=1``-style states to systemd; a no-op when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract socket namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
        return True
    except OSError:
        return False


async def watchdog_loop(healthy: Callable[[], bool]) -> None:
    """Ping the watchdog at half its interval while ``healthy()``; systemd restarts us if not."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return
    interval = int(usec) / 1_000_000 / 2
    while True:
        if healthy():
            notify("WATCHDOG=1")
        await asyncio.sleep(interval)
