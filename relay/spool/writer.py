"""The spool's writer process: runs :class:`~relay.spool.sqlite_file.SpoolFile` operations for
the relay that started it (``python -m relay.spool.writer <fd> <path> <synchronous> lock|nolock``,
by :class:`~relay.spool.file_host.ProcessHost`).

The two sides speak in frames (4-byte length, then a pickle of ``(operation, arguments)`` one
way and ``(ok, result or exception)`` the other), answered in order, one at a time. The
process ignores SIGINT and SIGTERM (the relay stops it with ``close`` after its last commit) and
exits when its socket closes, so a relay killed with -9 does not leave it behind.

It imports only the file's module and the standard library it needs (no asyncio, no aiohttp):
every module it loads is resident memory for the life of the relay.
"""

from __future__ import annotations

import io
import pickle
import signal
import socket
import sys

from .sqlite_file import SpoolFile

HEADER_BYTES = 4  # bytes of a frame's length, big-endian


def serve(sock: socket.socket, file: SpoolFile) -> None:
    """The writer process's loop: one call at a time, answered in order, until ``close`` or
    until the relay's end of the socket closes."""
    operations = file.operations()
    try:
        while True:
            head = _receive(sock, HEADER_BYTES)
            if head is None:
                return
            payload = _receive(sock, int.from_bytes(head, "big"))
            if payload is None:
                return
            operation, args = pickle.loads(payload)
            del payload
            try:
                reply = _frame((True, operations[operation](*args)))
            except Exception as exc:  # the relay's caller gets it, as from a thread
                reply = _frame((False, _portable(exc)))
            with reply.getbuffer() as view:
                sock.sendall(view)
            del reply, args  # nothing of this call stays resident while the next is awaited
            if operation == "close":
                return
    except ConnectionError:
        return  # the relay is gone (killed): nothing is waiting for an answer
    finally:
        file.close()


def _frame(message: object) -> io.BytesIO:
    """``message`` pickled behind its length, in one buffer: sent with one system call and no
    copy of the (up to megabytes of) row bodies it holds."""
    buffer = io.BytesIO()
    buffer.write(bytes(HEADER_BYTES))
    pickle.dump(message, buffer, pickle.HIGHEST_PROTOCOL)
    size = buffer.tell() - HEADER_BYTES
    with buffer.getbuffer() as view:
        view[:HEADER_BYTES] = size.to_bytes(HEADER_BYTES, "big")
    return buffer


def _receive(sock: socket.socket, size: int) -> bytearray | None:
    """Exactly ``size`` bytes (not copied again: pickle reads a bytearray), or None when the
    other end closed."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return buffer


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives a pickle round trip, else a RuntimeError naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def main(argv: list[str]) -> None:
    fd, path, synchronous, lock = argv
    # The relay decides when this process ends (close, or its socket closing), so a Ctrl-C or
    # a systemd stop sent to the whole group does not cut the relay's last commits short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with socket.socket(fileno=int(fd)) as sock:
        serve(sock, SpoolFile(path, synchronous, lock == "lock"))


if __name__ == "__main__":
    main(sys.argv[1:])
