"""Room on the SQLite spool's filesystem, so that deliveries can always record their acks.

Why: in WAL mode every commit, a delete too, first appends pages to the WAL, and a checkpoint
copies them into the database file, which may have to grow. On a full disk neither can happen:
acks failed, delivered rows were sent again once their lease ran out, and ingest stayed
refused. Measured on a 16 MiB tmpfs with the old settings, the WAL had taken the whole disk
(a 4000-page autocheckpoint is 16 MiB) and not even a checkpoint could run.

So the file side keeps two things in proportion to the filesystem:

* the WAL budget: the autocheckpoint is at most 1/32 of the filesystem (16 MiB on large
  disks, as before), so the WAL can never hold the disk hostage;
* a reserve file (``<spool>.reserve``, twice the WAL budget) allocated beside the spool. When a
  commit fails with ``SQLITE_FULL``, the reserve is released and the WAL checkpointed and
  truncated: that is room for the checkpoint to grow the database and for the deletes that
  follow (measured: a 1 MiB reserve was enough for a 1 MiB WAL and 720 queued 20 KB rows).

Ingest stays refused until the spool's free pages are given back to the filesystem
(``incremental_vacuum``) and the reserve can be allocated again with a WAL budget to spare.

Imported by the writer process: standard library only.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PAGE_BYTES = 4096  # SQLite's default page size, which the spool keeps
_MIN_WAL_BYTES = 256 * 1024
_MAX_WAL_BYTES = 4000 * PAGE_BYTES  # the autocheckpoint large spools have always had


class Room:
    """The reserve file and the WAL budget of one spool file."""

    def __init__(self, spool_path: Path) -> None:
        self.path = Path(str(spool_path) + ".reserve")
        total = _filesystem_bytes(spool_path.parent)
        self.wal_bytes = max(_MIN_WAL_BYTES, min(_MAX_WAL_BYTES, total // 32))
        self.reserve_bytes = 2 * self.wal_bytes

    @property
    def wal_pages(self) -> int:
        return self.wal_bytes // PAGE_BYTES

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer may still allocate on the spool's filesystem."""
        stat = os.statvfs(self.path.parent)
        return stat.f_bavail * stat.f_frsize

    def reserved(self) -> bool:
        try:
            return self.path.stat().st_size >= self.reserve_bytes
        except FileNotFoundError:
            return False

    def reserve(self) -> bool:
        """Allocate the reserve file (blocks really taken, not a sparse file); False when the
        filesystem has no room for it."""
        if self.reserved():
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.reserve_bytes)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            self.release()
            return False
        os.close(fd)
        return True

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def can_take_writes(self) -> bool:
        """Room for the reserve and a WAL budget beyond it."""
        free = self.free_bytes() + (self.reserve_bytes if self.reserved() else 0)
        return free >= self.reserve_bytes + 2 * self.wal_bytes


def _filesystem_bytes(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_blocks * stat.f_frsize
