"""Floor server: the least a durable relay can do per small request on aiohttp, for
``bench/small.py --floor``. NOT a relay: one source shape per path, no config, no metrics.

What a small request costs the relay is compared with what it cannot avoid on the same stack
(uvloop, aiohttp's low-level server, orjson, SQLite): check the key, parse the body and map its
events to Statsig's shape, commit them with an fsync (the ``track`` path also checks and stores
its ``messageId``, as the relay's dedup does) in group commits, answer, and
forward what was committed to the sink in batches, deleting it once the sink took it. Whatever
the relay spends above this floor is its own work (validation, routing, metrics, status,
per-target rows and retries); below it nothing a Python relay on aiohttp does can go.

Each ``--stage`` stops a step earlier, to see what each step costs (the default is the floor).

    python bench/floor.py --port 8080 --admin-port 8081 --sink http://127.0.0.1:9/ingest \\
        --spool /tmp/floor.db --write-key wk --client-key client-k --origin https://a.example
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sqlite3
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

try:
    import uvloop
except ImportError:  # pragma: no cover - the relay depends on it
    uvloop = None  # type: ignore[assignment]

LINGER_S = 0.2
STAGES = ("read", "parse", "commit", "dedup")
BATCH_ROWS = 1000


class Spool:
    """Rows in SQLite (WAL, synchronous=FULL); the writes that arrived while the loop was busy
    share one commit. Commits run on the event loop itself, which stalls for every fsync: the
    least CPU per request (a writer thread costs ~40 µs more per request in handoffs and GIL
    waits on this shape), which a daemon that must also deliver and answer /metrics and
    /readyz on time cannot afford."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS queue (id INTEGER PRIMARY KEY, body BLOB)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, expires INTEGER) WITHOUT ROWID"
        )
        self._pending: list[tuple[bytes, str, asyncio.Future[bool]]] = []
        self._running = False
        self.committed = asyncio.Event()

    async def add(self, body: bytes, key: str = "") -> bool:
        """Commit ``body`` (unless ``key`` was stored before); False for a duplicate."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((body, key, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._commit_groups())
        return await future

    async def _commit_groups(self) -> None:
        """Runs once the handlers that were ready have added their writes."""
        while self._pending:
            group, self._pending = self._pending, []
            fresh = self._commit(group)
            for (_, _, future), new in zip(group, fresh, strict=True):
                future.set_result(new)
            self.committed.set()
        self._running = False

    def _commit(self, group: list[tuple[bytes, str, Any]]) -> list[bool]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        keys = [key for _, key, _ in group if key]
        seen: set[str] = set()
        if keys:
            query = f"SELECT key FROM seen WHERE key IN ({','.join('?' * len(keys))})"
            seen = {k for (k,) in db.execute(query, keys)}
        fresh = []
        for _, key, _ in group:
            fresh.append(not key or key not in seen)
            seen.add(key)
        kept = [(body, key) for (body, key, _), new in zip(group, fresh, strict=True) if new]
        db.executemany("INSERT INTO seen VALUES (?, 0)", [(k,) for _, k in kept if k])
        db.executemany("INSERT INTO queue (body) VALUES (?)", [(b,) for b, _ in kept])
        db.execute("COMMIT")
        return fresh

    def take(self) -> list[tuple[int, bytes]]:
        query = "SELECT id, body FROM queue ORDER BY id LIMIT ?"
        return self._db.execute(query, (BATCH_ROWS,)).fetchall()

    def delete(self, last_id: int) -> None:
        self._db.execute("DELETE FROM queue WHERE id <= ?", (last_id,))


def basic_header(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


def track_event(doc: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    user = {"userID": doc.get("userId"), "customIDs": {"stableID": doc.get("anonymousId")}}
    props = doc.get("properties") or {}
    event = {
        "eventName": doc["event"],
        "user": user,
        "time": doc.get("timestamp"),
        "metadata": {k: str(v) for k, v in props.items()},
    }
    return [event], str(doc["messageId"])


def rgstr_events(doc: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    return [e for e in doc["events"] if isinstance(e, dict) and "eventName" in e], ""


async def forward(spool: Spool, sink: str) -> None:
    """Committed rows to the sink, a batch per linger; deleted once the sink answered 2xx."""
    async with aiohttp.ClientSession() as session:
        while True:
            await spool.committed.wait()
            spool.committed.clear()
            await asyncio.sleep(LINGER_S)
            while rows := spool.take():
                body = b"[" + b",".join(body[1:-1] for _, body in rows) + b"]"
                async with session.post(sink, data=body) as answer:
                    if answer.status >= 300:
                        break
                spool.delete(rows[-1][0])


def handler(spool: Spool, args: argparse.Namespace) -> Callable[[web.BaseRequest], Any]:
    auth = basic_header(args.write_key)
    cors = {"Access-Control-Allow-Origin": args.origin, "Vary": "Origin"}
    ok = orjson.dumps({"success": True})
    stage = args.stage

    async def handle(request: web.BaseRequest) -> web.Response:
        if request.path == "/readyz":
            return web.Response(body=b"ok")
        body = await request.read()
        if request.path.endswith("/track"):
            if request.headers.get("Authorization") != auth:
                return web.Response(status=401)
            parse, headers = track_event, None
        elif request.path.endswith("/rgstr"):
            if request.headers.get("statsig-api-key") != args.client_key:
                return web.Response(status=401)
            if request.headers.get("Origin") != args.origin:
                return web.Response(status=403)
            parse, headers = rgstr_events, cors
        else:
            return web.Response(status=404)
        if stage == "read":
            return web.Response(body=ok, content_type="application/json", headers=headers)
        try:
            events, key = parse(orjson.loads(body))
        except (ValueError, KeyError, TypeError, AttributeError):
            return web.Response(status=400, headers=headers)
        row = orjson.dumps(events)
        if stage != "parse":
            await spool.add(row, key if stage == "dedup" else "")
        return web.Response(body=ok, content_type="application/json", headers=headers)

    return handle


async def serve(args: argparse.Namespace) -> None:
    spool = Spool(args.spool)
    server = web.Server(handler(spool, args), access_log=None)
    loop = asyncio.get_running_loop()
    public = await loop.create_server(server, "127.0.0.1", args.port)
    admin = await loop.create_server(server, "127.0.0.1", args.admin_port)
    forwarding = asyncio.create_task(forward(spool, args.sink))
    try:
        await forwarding
    finally:
        public.close()
        admin.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--admin-port", type=int, required=True, help="serves GET /readyz")
    p.add_argument("--sink", required=True)
    p.add_argument("--spool", required=True, help="SQLite file")
    p.add_argument("--write-key", required=True)
    p.add_argument("--client-key", required=True)
    p.add_argument("--origin", required=True)
    p.add_argument(
        "--stage",
        choices=STAGES,
        default="dedup",
        help="how far each request goes: read (the body, then answer), parse (and map), "
        "commit (and forward), dedup (commit with the messageId check; the floor)",
    )
    args = p.parse_args()
    if uvloop is not None:
        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
