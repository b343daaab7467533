"""Where the spool's file lives: a writer process of its own (the daemon's default) or a thread
of the relay (the DLQ commands, ``writer: thread``).

Why a process: on a thread, every SQLite statement hands the GIL back and forth with the busy
event loop, and getting it back takes up to the 5 ms switch interval. At 8 connections a
commit whose fsync takes 0.4 ms took ~5 ms from hand-off to return, and every request waits
for one. A process has its own interpreter: the commit costs its fsync plus one round trip on a
Unix socket, and the statements' CPU leaves the event loop's core.

The process's side is :mod:`relay.spool.writer` (it says how the two sides speak).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
import sys
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .sqlite_file import SpoolFile
from .writer import HEADER_BYTES

logger = logging.getLogger(__name__)

_STOP_TIMEOUT_S = 10.0


class WriterGone(RuntimeError):
    """The writer process exited; the calls under way failed (ingest answers 503)."""


# What the writer process keeps of the relay's environment: what Python, SQLite and the C
# library read. Not the rest: the relay's secrets (``${VAR}`` in its config) stay out of it.
_WRITER_ENV_PREFIXES = ("PYTHON", "LC_", "LD_", "MALLOC_", "SQLITE_")
_WRITER_ENV_NAMES = frozenset(["PATH", "HOME", "LANG", "TZ", "TMPDIR", "VIRTUAL_ENV"])


def writer_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment the writer process starts with."""
    return {
        name: value
        for name, value in environ.items()
        if name in _WRITER_ENV_NAMES or name.startswith(_WRITER_ENV_PREFIXES)
    }


class FileHost(ABC):
    """Runs :class:`SpoolFile` operations somewhere other than the event loop's thread."""

    @property
    @abstractmethod
    def running(self) -> bool:
        """False once the host can no longer serve calls (its process exited)."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def call(self, operation: str, *args: Any) -> Any:
        """Run ``operation`` (a name from :meth:`SpoolFile.operations`) and return its result."""

    @abstractmethod
    async def stop(self) -> None:
        """Close the file and let go of the thread or process."""


class ThreadHost(FileHost):
    """The file on one thread of this process."""

    def __init__(self, path: str, synchronous: str, lock: bool) -> None:
        self._operations = SpoolFile(path, synchronous, lock).operations()
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._executor is not None

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-sqlite")

    async def call(self, operation: str, *args: Any) -> Any:
        if self._executor is None:
            raise RuntimeError("spool is not open")
        function = self._operations[operation]
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def stop(self) -> None:
        if self._executor is None:
            return
        try:
            await self.call("close")
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None


class ProcessHost(FileHost):
    """The file in a child process (``python -m relay.spool.writer``)."""

    def __init__(self, path: str, synchronous: str, lock: bool) -> None:
        self._args = (path, synchronous, "lock" if lock else "nolock")
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._reader_task is not None and not self._reader_task.done()

    async def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "relay.spool.writer",
                str(theirs.fileno()),
                *self._args,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=writer_environment(os.environ),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, self._writer = await asyncio.open_connection(sock=ours, limit=2**20)
        self._stopping = False
        self._reader_task = asyncio.create_task(self._read_replies(reader))

    async def call(self, operation: str, *args: Any) -> Any:
        if not self.running or self._writer is None:
            raise WriterGone("the spool's writer process is not running")
        frame = pickle.dumps((operation, args), protocol=pickle.HIGHEST_PROTOCOL)
        header = len(frame).to_bytes(HEADER_BYTES, "big")  # OverflowError before any queueing
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(future)  # before writing: replies come back in this order
        try:
            self._writer.writelines((header, frame))
            await self._writer.drain()
        except ConnectionError as exc:  # the reader fails ``future`` too, and says why
            raise WriterGone("the spool's writer process went away") from exc
        return await future

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(HEADER_BYTES), "big")
                ok, result = pickle.loads(await reader.readexactly(size))
                future = self._pending.popleft()
                if future.done():  # its caller was cancelled
                    continue
                if ok:
                    future.set_result(result)
                else:
                    future.set_exception(result)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        code = await self._process.wait() if self._process is not None else None
        if not self._stopping:
            logger.error("spool: the writer process exited (code %s); calls under way fail", code)
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(WriterGone(f"the spool's writer process exited ({code})"))

    async def stop(self) -> None:
        self._stopping = True
        try:
            if self.running:
                await asyncio.wait_for(self.call("close"), _STOP_TIMEOUT_S)
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            if self._process is not None:
                try:
                    await asyncio.wait_for(self._process.wait(), _STOP_TIMEOUT_S)
                except TimeoutError:
                    self._process.kill()
                    await self._process.wait()
                self._process = None
            if self._reader_task is not None:
                await self._reader_task
                self._reader_task = None
