"""Spool backends by name: ``sqlite`` (embedded default) and ``redis`` (several replicas)."""

from __future__ import annotations

from typing import Any

from ..schema import ConfigError, build
from .base import Spool
from .sqlite import SqliteSpool, SqliteSpoolConfig


def spool_config(data: Any, path: str = "spool") -> Any:
    """Validate the ``spool:`` section for the backend it names."""
    data = dict(data or {})
    backend = data.get("backend", "sqlite")
    if backend == "sqlite":
        return build(SqliteSpoolConfig, data, path)
    if backend == "redis":
        from .redis import RedisSpoolConfig

        return build(RedisSpoolConfig, data, path)
    raise ConfigError(f"{path}.backend", f"unknown spool backend {backend!r}; use sqlite or redis")


def create_spool(config: Any, lock: bool = True) -> Spool:
    """The spool for a validated ``spool:`` section (``lock=False`` for the DLQ commands)."""
    if isinstance(config, SqliteSpoolConfig):
        return SqliteSpool(config, lock=lock)
    from .redis import RedisSpool

    return RedisSpool(config)
