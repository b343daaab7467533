"""File target: JSON lines appended to a local file, for demos, debugging and audits."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .base import DELIVERED, Batch, Outcome, Target, TargetConfig, Verdict


@dataclass(kw_only=True)
class FileConfig(TargetConfig):
    type: Literal["file"] = "file"
    path: str
    fsync: bool = False  # fsync after each batch (slower; survives power loss)


class FileTarget(Target):
    """Appends one event per line; a batch is written with one write call."""

    kind = "file"
    config_class = FileConfig
    config: FileConfig

    async def open(self) -> None:
        Path(self.config.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        return None

    async def send(self, batch: Batch) -> Outcome:
        data = batch.json_lines() + b"\n" if batch.count else b""
        async with self._lock:
            try:
                await asyncio.to_thread(self._append, data)
            except OSError as exc:
                return Outcome(Verdict.RETRY, f"cannot write {self.config.path}: {exc.strerror}")
        return DELIVERED

    def _append(self, data: bytes) -> None:
        with open(self.config.path, "ab") as handle:
            handle.write(data)
            if self.config.fsync:
                handle.flush()
                os.fsync(handle.fileno())

    def describe(self) -> str:
        return f"file {self.config.path}"
