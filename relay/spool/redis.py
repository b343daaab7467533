"""The shared spool: one Redis, several relay replicas, one durable queue.

Why sorted sets and not Streams: a row needs a *claimable-at* time for two reasons, a retry
(next attempt) and a lease (claim expiry), and both are one sorted-set score. Streams give
leases (the pending list, XAUTOCLAIM) but no delayed retry: a retried entry would have to be
re-added under a new id, and settle/DLQ/byte accounting would need the same side structures
anyway. So, per target (as the arq job queue does it):

* ``{prefix}:row:{id}`` — hash: target, route, body (the JSON array), count, first receive time,
  attempts, last error. Ids come from ``{prefix}:seq`` (INCRBY), so they follow receive order.
* ``{prefix}:ready:{target}`` — zset, score = id: due rows nobody holds. Claims take from here
  in id (receive) order.
* ``{prefix}:wait:{target}`` — zset, score = epoch ms when the row becomes claimable again: the
  lease expiry of a claimed row or the next attempt of a retried one. Each claim first moves
  rows whose time has come back to ``ready`` — this is how a crashed replica's claims are taken
  over.
* ``{prefix}:age:{target}`` — zset, score = first receive time: every queued row (depth, oldest).
* ``{prefix}:dead:{id}``, ``{prefix}:dlq:{target}`` (score = id), ``{prefix}:dlqage:{target}``:
  the dead-letter queue, the same way.
* ``{prefix}:events`` (hash ``q:{target}`` / ``d:{target}`` → events), ``{prefix}:bytes``
  (body bytes of queued and dead rows), ``{prefix}:targets`` (set): counters kept by the same
  scripts that write the rows, so stats never scan.
* ``{prefix}:key:{key}`` — a dedup / first-exposure key, value = its expiry, ``SET … PXAT``.

Every operation is one Lua script (one round trip, atomic across replicas: two relays never
claim the same row while its lease is live). Concurrent ingest requests share one script call
(group commit), as with SQLite. Times are the relays' clocks, so keep replicas NTP-synced.

A replica whose lease ran out may still settle its rows after another replica took them over:
rows that no longer exist are skipped, and a settle whose rows are all gone does nothing (the
other replica accounted for every event). Duplicates stay possible, loss does not.

Durability: an enqueue is acknowledged once Redis has applied the script, i.e. it is in Redis
memory. Surviving a Redis crash or restart depends on Redis persistence: ``appendonly yes`` with
``appendfsync always`` (no loss) or ``everysec`` (up to ~1 s of acknowledged events lost on a
power cut). Redis must not evict: ``maxmemory-policy noeviction``. Scripts name keys they
compute, so this needs one Redis server (with replicas/Sentinel if you like), not Cluster.
Replication is asynchronous: ``replica_acks`` makes an ingest commit wait (WAIT) until replicas
have it, so a Sentinel failover cannot lose what was acknowledged (see redis_connect.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..events import now_ms
from ..schema import ByteSize, ConfigError, Duration, secret
from .base import GroupCommit, Spool, SpoolFull
from .records import DeadRow, NewRow, SpoolRow, SpoolStats, TargetDepth
from .redis_connect import (
    CLUSTER_REFUSED,
    DEFAULT_URL,
    RedisConnection,
    RedisEndpoint,
    redis_endpoint,
    scrub,
)

logger = logging.getLogger(__name__)

_Enqueue = tuple[Sequence[NewRow], Sequence[tuple[str, int]]]  # one caller's rows and keys

_CLAIM_SCAN = 500  # rows looked at per claim, as in the SQLite spool
_DLQ_CHUNK = 1000  # dead rows replayed or purged per script call, so Redis never stalls long


@dataclass(kw_only=True)
class RedisSpoolConfig:
    backend: Literal["redis"] = "redis"
    # One server (redis://, rediss://, unix://) or Sentinel (redis+sentinel://); may carry the
    # password. With ``sentinels``, only the master's password, db and TLS.
    url: str = secret(default=DEFAULT_URL)
    sentinels: list[str] = field(default_factory=list)  # "host:port" of each Sentinel
    service_name: str = ""  # the master's name in Sentinel ("mymaster")
    sentinel_password: str | None = secret(default=None)  # the sentinels' own requirepass
    # Before acknowledging an ingest commit, wait until this many replicas have it (WAIT), so a
    # failover to one of them cannot lose it; none in time within the timeout: ingest answers 503.
    replica_acks: int = 0
    replica_ack_timeout: Duration = Duration(1.0)
    prefix: str = "relay"  # every key is under "{prefix}:"; replicas sharing a queue share it
    max_size: ByteSize = ByteSize(1024**3)  # body bytes of queued + dead rows
    # How long a claim holds rows; a replica that dies mid-send loses them to the others after
    # this. Must be longer than a send with its in-process retries.
    lease: Duration = Duration(120.0)

    def __post_init__(self) -> None:
        self.endpoint()  # raises ConfigError naming the key
        if not self.prefix or any(c.isspace() for c in self.prefix):
            raise ConfigError("prefix", "must be non-empty and without spaces")
        if self.lease <= 0:
            raise ConfigError("lease", "must be positive")
        if self.replica_acks < 0:
            raise ConfigError("replica_acks", "must be 0 or more")
        if self.replica_ack_timeout <= 0:
            raise ConfigError("replica_ack_timeout", "must be positive")

    def endpoint(self) -> RedisEndpoint:
        return redis_endpoint(self.url, self.sentinels, self.service_name, self.sentinel_password)


# Shared helpers, prepended to each script. ARGV[1] is always the key prefix.
_LIB = """
local p = ARGV[1]
local function add_row(id, t, r, b, n, f, a, e, next_at)
  redis.call('HSET', p..':row:'..id, 't', t, 'r', r, 'b', b, 'n', n, 'f', f, 'a', a, 'e', e)
  if tonumber(next_at) > 0 then
    redis.call('ZADD', p..':wait:'..t, next_at, id)
  else
    redis.call('ZADD', p..':ready:'..t, id, id)
  end
  redis.call('ZADD', p..':age:'..t, f, id)
  redis.call('HINCRBY', p..':events', 'q:'..t, n)
  redis.call('SADD', p..':targets', t)
  return #b
end
local function del_row(t, id)
  local key = p..':row:'..id
  local n = redis.call('HGET', key, 'n')
  if not n then return nil end
  local len = redis.call('HSTRLEN', key, 'b')
  redis.call('DEL', key)
  redis.call('ZREM', p..':ready:'..t, id)
  redis.call('ZREM', p..':wait:'..t, id)
  redis.call('ZREM', p..':age:'..t, id)
  redis.call('HINCRBY', p..':events', 'q:'..t, 0 - tonumber(n))
  return len
end
local function add_dead(id, t, r, b, n, f, a, d, x)
  redis.call('HSET', p..':dead:'..id, 't', t, 'r', r, 'b', b, 'n', n, 'f', f, 'a', a,
             'd', d, 'x', x)
  redis.call('ZADD', p..':dlq:'..t, id, id)
  redis.call('ZADD', p..':dlqage:'..t, f, id)
  redis.call('HINCRBY', p..':events', 'd:'..t, n)
  redis.call('SADD', p..':targets', t)
  return #b
end
local function del_dead(id)
  local key = p..':dead:'..id
  local d = redis.call('HMGET', key, 't', 'r', 'b', 'n', 'f', 'x')
  if not d[1] then return nil end
  redis.call('DEL', key)
  redis.call('ZREM', p..':dlq:'..d[1], id)
  redis.call('ZREM', p..':dlqage:'..d[1], id)
  redis.call('HINCRBY', p..':events', 'd:'..d[1], 0 - tonumber(d[4]))
  return d
end
-- From ARGV[at]: a count n, n new rows (8 values each), then dead rows (8 each) to the end.
-- Returns the bytes added.
local function add_new_and_dead(at)
  local delta, i = 0, at + 1
  for _ = 1, tonumber(ARGV[at]) do
    delta = delta + add_row(redis.call('INCR', p..':seq'), ARGV[i], ARGV[i+1], ARGV[i+2],
                            ARGV[i+3], ARGV[i+4], ARGV[i+5], ARGV[i+6], ARGV[i+7])
    i = i + 8
  end
  while i <= #ARGV do
    delta = delta + add_dead(redis.call('INCR', p..':seq'), ARGV[i], ARGV[i+1], ARGV[i+2],
                             ARGV[i+3], ARGV[i+4], ARGV[i+5], ARGV[i+6], ARGV[i+7])
    i = i + 8
  end
  return delta
end
-- Dead ids matching (target, ids), at most chunk when ids are not given.
local function select_dead(target, chunk, first_id_arg)
  local out = {}
  if #ARGV >= first_id_arg then
    for i = first_id_arg, #ARGV do
      local t = redis.call('HGET', p..':dead:'..ARGV[i], 't')
      if t and (target == '' or t == target) then out[#out + 1] = ARGV[i] end
    end
    return out
  end
  local targets = {target}
  if target == '' then targets = redis.call('SMEMBERS', p..':targets') end
  for _, t in ipairs(targets) do
    if #out >= chunk then break end
    for _, id in ipairs(redis.call('ZRANGE', p..':dlq:'..t, 0, chunk - #out - 1)) do
      out[#out + 1] = id
    end
  end
  return out
end
"""

# ARGV: prefix, max_size, now, nrows, nrows * (t r b n f a e next), nkeys, nkeys * (key exp)
_ENQUEUE = """
local used = tonumber(redis.call('GET', p..':bytes') or '0')
if used >= tonumber(ARGV[2]) then return {0, used} end
local now = tonumber(ARGV[3])
local nrows = tonumber(ARGV[4])
local i = 5
local added = 0
if nrows > 0 then
  local id = redis.call('INCRBY', p..':seq', nrows) - nrows
  for _ = 1, nrows do
    id = id + 1
    added = added + add_row(id, ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4],
                            ARGV[i+5], ARGV[i+6], ARGV[i+7])
    i = i + 8
  end
end
local nkeys = tonumber(ARGV[i])
i = i + 1
for _ = 1, nkeys do
  local exp = tonumber(ARGV[i+1])
  if exp > now then
    redis.call('SET', p..':key:'..ARGV[i], ARGV[i+1], 'PXAT', ARGV[i+1])
  else
    redis.call('DEL', p..':key:'..ARGV[i])
  end
  i = i + 2
end
return {1, redis.call('INCRBY', p..':bytes', added)}
"""

# ARGV: prefix, target, now, lease_ms, max_events, max_bytes, scan
_CLAIM = """
local t, now = ARGV[2], tonumber(ARGV[3])
local lease_until = now + tonumber(ARGV[4])
local max_events, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
local ready, wait = p..':ready:'..t, p..':wait:'..t
local due = redis.call('ZRANGEBYSCORE', wait, '-inf', now, 'LIMIT', 0, 500)
for _, id in ipairs(due) do redis.call('ZADD', ready, id, id) end
if #due > 0 then redis.call('ZREM', wait, unpack(due)) end
local out, events, size, taken = {}, 0, 0, 0
for _, id in ipairs(redis.call('ZRANGE', ready, 0, tonumber(ARGV[7]) - 1)) do
  local r = redis.call('HMGET', p..':row:'..id, 'n', 'b', 'r', 'f', 'a')
  if not r[1] then
    redis.call('ZREM', ready, id)
  else
    local n = tonumber(r[1])
    if taken > 0 and (events + n > max_events or size + #r[2] > max_bytes) then break end
    taken, events, size = taken + 1, events + n, size + #r[2]
    redis.call('ZREM', ready, id)
    redis.call('ZADD', wait, lease_until, id)
    out[#out + 1] = id
    out[#out + 1] = r[3]
    out[#out + 1] = r[2]
    out[#out + 1] = r[1]
    out[#out + 1] = r[4]
    out[#out + 1] = r[5]
  end
end
return out
"""

# ARGV: prefix, lease_until, triples of (target, id, held_until) → one 1/0 per triple.
# A row is still this claim's while its wait score is the lease the claim set.
_RENEW = """
local out = {}
for i = 3, #ARGV, 3 do
  local wait = p..':wait:'..ARGV[i]
  local held = redis.call('ZSCORE', wait, ARGV[i+1])
  if held and tonumber(held) == tonumber(ARGV[i+2]) then
    redis.call('ZADD', wait, 'XX', ARGV[2], ARGV[i+1])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

# ARGV: prefix, next_at, error, pairs of (target, id)
_RETRY = """
for i = 4, #ARGV, 2 do
  local t, id = ARGV[i], ARGV[i+1]
  local key = p..':row:'..id
  if redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBY', key, 'a', 1)
    redis.call('HSET', key, 'e', ARGV[3])
    redis.call('ZREM', p..':ready:'..t, id)
    redis.call('ZADD', p..':wait:'..t, ARGV[2], id)
  end
end
return 1
"""

# ARGV: prefix, ndel, ndel * (t id), nreq, nreq * (t r b n f a e next), ndead * (t r b n f a d x)
_SETTLE = """
local ndel = tonumber(ARGV[2])
local i, found, delta = 3, 0, 0
for _ = 1, ndel do
  local len = del_row(ARGV[i], ARGV[i+1])
  if len then found, delta = found + 1, delta - len end
  i = i + 2
end
if ndel > 0 and found == 0 then
  return tonumber(redis.call('GET', p..':bytes') or '0')
end
return redis.call('INCRBY', p..':bytes', delta + add_new_and_dead(i))
"""

# ARGV: prefix, target or '', chunk, ids...  → {events, rows, targets...}
_REPLAY = """
local events, seen, targets = 0, {}, {}
local ids = select_dead(ARGV[2], tonumber(ARGV[3]), 4)
for _, id in ipairs(ids) do
  local d = del_dead(id)
  add_row(id, d[1], d[2], d[3], d[4], d[5], 0, 'replayed: '..d[6], 0)
  events = events + tonumber(d[4])
  if not seen[d[1]] then seen[d[1]] = true; targets[#targets + 1] = d[1] end
end
local out = {events, #ids}
for _, t in ipairs(targets) do out[#out + 1] = t end
return out
"""

# ARGV: prefix, target or '', chunk, ids...  → {events, rows, bytes}
_PURGE = """
local events, size = 0, 0
local ids = select_dead(ARGV[2], tonumber(ARGV[3]), 4)
for _, id in ipairs(ids) do
  local d = del_dead(id)
  events, size = events + tonumber(d[4]), size + #d[3]
end
return {events, #ids, redis.call('DECRBY', p..':bytes', size)}
"""

# ARGV: prefix, dead id, n, n new rows (8 each), dead rows (8 each) → {done, bytes}
_SPLIT_DEAD = """
local d = del_dead(ARGV[2])
if not d then return {0, tonumber(redis.call('GET', p..':bytes') or '0')} end
local delta = 0 - #d[3]
return {1, redis.call('INCRBY', p..':bytes', delta + add_new_and_dead(3))}
"""

# ARGV: prefix → {bytes, then per target: t, rows, events, oldest, dead rows, events, oldest}
_STATS = """
local out = {tonumber(redis.call('GET', p..':bytes') or '0')}
for _, t in ipairs(redis.call('SMEMBERS', p..':targets')) do
  local qn = redis.call('ZCARD', p..':age:'..t)
  local dn = redis.call('ZCARD', p..':dlqage:'..t)
  if qn == 0 and dn == 0 then
    redis.call('SREM', p..':targets', t)
  else
    local ev = redis.call('HMGET', p..':events', 'q:'..t, 'd:'..t)
    local qo = redis.call('ZRANGE', p..':age:'..t, 0, 0, 'WITHSCORES')[2] or ''
    local do_ = redis.call('ZRANGE', p..':dlqage:'..t, 0, 0, 'WITHSCORES')[2] or ''
    for _, v in ipairs({t, qn, ev[1] or '0', qo, dn, ev[2] or '0', do_}) do out[#out + 1] = v end
  end
end
return out
"""

# ARGV: prefix, target or '', limit → flat (id t r b n f a d x) per row, in id order
_DEAD_ROWS = """
local limit = tonumber(ARGV[3])
local targets = {ARGV[2]}
if ARGV[2] == '' then targets = redis.call('SMEMBERS', p..':targets') end
local ids = {}
for _, t in ipairs(targets) do
  local page = redis.call('ZRANGEBYSCORE', p..':dlq:'..t, '('..ARGV[4], '+inf', 'LIMIT', 0, limit)
  for _, id in ipairs(page) do
    ids[#ids + 1] = tonumber(id)
  end
end
table.sort(ids)
local out = {}
for i = 1, math.min(limit, #ids) do
  local id = string.format('%d', ids[i])
  local d = redis.call('HMGET', p..':dead:'..id, 't', 'r', 'b', 'n', 'f', 'a', 'd', 'x')
  out[#out + 1] = id
  for j = 1, 8 do out[#out + 1] = d[j] end
end
return out
"""


def _row_args(row: NewRow) -> tuple[Any, ...]:
    return (
        row.target,
        row.route,
        row.body,
        row.count,
        row.first_received_ms,
        row.attempts,
        row.last_error[:500],
        row.next_attempt_ms,
    )


def _dead_args(row: DeadRow) -> tuple[Any, ...]:
    return (
        row.target,
        row.route,
        row.body,
        row.count,
        row.first_received_ms,
        row.attempts,
        row.dead_at_ms,
        row.reason[:500],
    )


class ReplicaAckTimeout(RuntimeError):
    """Rows are on the master but not yet on ``replica_acks`` replicas: not acknowledged (the
    sender resends; a duplicate is possible, a loss at failover is not)."""


class RedisSpool(Spool):
    """Spool on Redis; see the module docstring for the data layout and its guarantees."""

    def __init__(self, config: RedisSpoolConfig) -> None:
        super().__init__()
        self.config = config
        self.lease_s = float(config.lease)
        self._prefix = config.prefix
        self._connection: RedisConnection | None = None
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._bytes = 0
        self._group_commit: GroupCommit[_Enqueue] = GroupCommit(self._write_group)

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        try:
            import redis  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "the redis spool needs the redis package: pip install 'statsig-relay[redis]'"
            ) from None
        endpoint = self.config.endpoint()
        where = endpoint.where
        connection = endpoint.connect()
        client = connection.client
        try:
            await client.ping()
        except Exception as exc:
            await connection.aclose()
            reason = scrub(str(exc), endpoint.secrets())
            raise RuntimeError(f"cannot reach the redis spool at {where}: {reason}") from None
        cluster: dict[str, Any] = {}
        with contextlib.suppress(Exception):  # INFO may be restricted on managed Redis
            cluster = await client.info("cluster")
        if int(cluster.get("cluster_enabled", 0) or 0):
            await connection.aclose()
            raise RuntimeError(f"the redis spool at {where}: {CLUSTER_REFUSED}")
        self._connection = connection
        self._client = client
        sources = {
            "enqueue": _ENQUEUE,
            "claim": _CLAIM,
            "renew": _RENEW,
            "retry": _RETRY,
            "settle": _SETTLE,
            "replay": _REPLAY,
            "purge": _PURGE,
            "split_dead": _SPLIT_DEAD,
            "stats": _STATS,
            "dead_rows": _DEAD_ROWS,
        }
        self._scripts = {name: client.register_script(_LIB + src) for name, src in sources.items()}
        await self._check_eviction(where)
        await self.stats()

    async def _check_eviction(self, where: str) -> None:
        """Warn when Redis may evict keys: evicted rows are lost events."""
        with contextlib.suppress(Exception):  # CONFIG is often disabled on managed Redis
            found = await self._client.config_get("maxmemory-policy")
            policy = found.get("maxmemory-policy") or found.get(b"maxmemory-policy")
            if isinstance(policy, bytes):
                policy = policy.decode()
            if policy and policy != "noeviction":
                logger.warning(
                    "redis spool %s has maxmemory-policy %s: set noeviction, or evicted rows "
                    "are lost events",
                    where,
                    policy,
                )

    async def close(self, grace: float | None = None) -> None:
        await self._group_commit.idle(grace)
        if self._connection is not None:
            await self._connection.aclose()
            self._connection = self._client = None

    async def _call(self, script: str, *args: Any) -> Any:
        if self._client is None:
            raise RuntimeError("spool is not open")
        return await self._scripts[script](args=(self._prefix, *args))

    # -- ingest ----------------------------------------------------------------------------
    def is_full(self) -> bool:
        return self._bytes >= self.config.max_size

    async def enqueue(
        self, rows: Sequence[NewRow], state_keys: Sequence[tuple[str, int]] = ()
    ) -> None:
        if not rows and not state_keys:
            return
        if self.is_full():
            raise SpoolFull(f"spool is over its size limit of {self.config.max_size} bytes")
        await self._group_commit.submit((rows, state_keys))

    async def _write_group(self, batch: list[_Enqueue]) -> None:
        """One script call for a group of concurrent enqueues (group commit)."""
        row_args: list[Any] = []
        key_args: list[Any] = []
        nrows = nkeys = 0
        for rows, state_keys in batch:
            for row in rows:
                row_args.extend(_row_args(row))
            nrows += len(rows)
            for key, expires in state_keys:
                key_args.extend((key, expires))
            nkeys += len(state_keys)
        args = (self.config.max_size, now_ms(), nrows, *row_args, nkeys, *key_args)
        if self.config.replica_acks:
            ok, used = await self._enqueue_replicated(args)
        else:
            ok, used = await self._call("enqueue", *args)
        self._bytes = int(used)
        if not ok:
            raise SpoolFull(f"spool is over its size limit of {self.config.max_size} bytes")
        self._notify({row.target for rows, _ in batch for row in rows})

    async def _enqueue_replicated(self, args: tuple[Any, ...]) -> tuple[int, int]:
        """The enqueue script and WAIT on one connection (WAIT counts that connection's
        writes): acknowledged only once ``replica_acks`` replicas have the rows."""
        if self._client is None:
            raise RuntimeError("spool is not open")
        want = self.config.replica_acks
        timeout_ms = max(1, int(self.config.replica_ack_timeout * 1000))
        async with self._client.pipeline(transaction=False) as pipe:
            await self._scripts["enqueue"](args=(self._prefix, *args), client=pipe)
            pipe.wait(want, timeout_ms)
            (ok, used), acked = await pipe.execute()
        if ok and int(acked) < want:
            self._bytes = int(used)
            raise ReplicaAckTimeout(
                f"{acked} of {want} redis replicas confirmed the write within "
                f"{self.config.replica_ack_timeout:g}s"
            )
        return ok, used

    async def seen_keys(self, keys: Sequence[str], now_ms: int) -> set[str]:
        if not keys:
            return set()
        if self._client is None:
            raise RuntimeError("spool is not open")
        keys = list(keys)
        seen: set[str] = set()
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            values = await self._client.mget([f"{self._prefix}:key:{k}" for k in chunk])
            seen.update(k for k, v in zip(chunk, values, strict=True) if v and int(v) > now_ms)
        return seen

    # -- delivery --------------------------------------------------------------------------
    async def claim(
        self, target: str, max_events: int, max_bytes: int, lease_s: float
    ) -> list[SpoolRow]:
        scan = max(1, min(_CLAIM_SCAN, max_events))
        now = now_ms()
        lease_ms = int(lease_s * 1000)
        flat = await self._call("claim", target, now, lease_ms, max_events, max_bytes, scan)
        return [
            SpoolRow(
                int(flat[i]),
                target,
                flat[i + 1].decode(),
                flat[i + 2],
                int(flat[i + 3]),
                int(flat[i + 4]),
                int(flat[i + 5]),
                now + lease_ms,
            )
            for i in range(0, len(flat), 6)
        ]

    async def renew(self, rows: Sequence[SpoolRow], lease_s: float) -> int:
        if not rows:
            return 0
        lease_until = now_ms() + int(lease_s * 1000)
        args: list[Any] = []
        for row in rows:
            args.extend((row.target, row.id, row.lease_until_ms))
        flags = await self._call("renew", lease_until, *args)
        renewed = 0
        for row, flag in zip(rows, flags, strict=True):
            if int(flag):
                row.lease_until_ms = lease_until
                renewed += 1
        return renewed

    async def ack(self, rows: Sequence[SpoolRow]) -> None:
        await self.settle(rows, (), ())

    async def retry(self, rows: Sequence[SpoolRow], next_attempt_ms: int, error: str) -> None:
        if not rows:
            return
        pairs = [x for row in rows for x in (row.target, row.id)]
        await self._call("retry", next_attempt_ms, error[:500], *pairs)

    async def settle(
        self, rows: Sequence[SpoolRow], requeue: Sequence[NewRow], dead: Sequence[DeadRow]
    ) -> None:
        if not rows and not requeue and not dead:
            return
        args: list[Any] = [len(rows)]
        for row in rows:
            args.extend((row.target, row.id))
        args.append(len(requeue))
        for new in requeue:
            args.extend(_row_args(new))
        for gone in dead:
            args.extend(_dead_args(gone))
        self._bytes = int(await self._call("settle", *args))
        if requeue:
            self._notify({r.target for r in requeue})

    # -- observation and the dead-letter queue ---------------------------------------------
    async def stats(self) -> SpoolStats:
        flat = await self._call("stats")
        self._bytes = int(flat[0])
        stats = SpoolStats(bytes_used=self._bytes)
        for i in range(1, len(flat), 7):
            target = flat[i].decode()
            rows, events, oldest, dead_rows, dead_events, dead_oldest = flat[i + 1 : i + 7]
            if rows:
                stats.queued[target] = TargetDepth(int(rows), int(events), _ms(oldest))
            if dead_rows:
                stats.dead[target] = TargetDepth(int(dead_rows), int(dead_events), _ms(dead_oldest))
        return stats

    async def dead_rows(
        self, target: str | None = None, limit: int = 100, after_id: int = 0
    ) -> list[DeadRow]:
        flat = await self._call("dead_rows", target or "", max(0, limit), int(after_id))
        out = []
        for i in range(0, len(flat), 9):
            row_id, t, route, body, count, first, attempts, dead_at, reason = flat[i : i + 9]
            if t is None:  # purged between the listing and the read
                continue
            out.append(
                DeadRow(
                    int(row_id),
                    t.decode(),
                    route.decode(),
                    body,
                    int(count),
                    int(first),
                    int(attempts),
                    int(dead_at),
                    reason.decode(),
                )
            )
        return out

    async def replay_dead(self, target: str | None = None, ids: Iterable[str] = ()) -> int:
        id_list = [str(int(i)) for i in ids]
        moved, targets = 0, set()
        while True:  # chunked so one huge DLQ does not block Redis in one script
            result = await self._call("replay", target or "", _DLQ_CHUNK, *id_list)
            moved += int(result[0])
            targets.update(t.decode() for t in result[2:])
            if id_list or int(result[1]) < _DLQ_CHUNK:
                break
        self._notify(targets)
        return moved

    async def purge_dead(self, target: str | None = None, ids: Iterable[str] = ()) -> int:
        id_list = [str(int(i)) for i in ids]
        deleted = 0
        while True:
            events, rows, used = await self._call("purge", target or "", _DLQ_CHUNK, *id_list)
            deleted += int(events)
            self._bytes = int(used)
            if id_list or int(rows) < _DLQ_CHUNK:
                break
        return deleted

    async def split_dead(
        self, dead_id: int | str, requeue: Sequence[NewRow], remainder: Sequence[DeadRow]
    ) -> bool:
        args: list[Any] = [str(int(dead_id)), len(requeue)]
        for new in requeue:
            args.extend(_row_args(new))
        for dead in remainder:
            args.extend(_dead_args(dead))
        done, used = await self._call("split_dead", *args)
        self._bytes = int(used)
        if done and requeue:
            self._notify({r.target for r in requeue})
        return bool(done)


def _ms(value: bytes | str) -> int | None:
    return int(float(value)) if value else None
