"""Corrupt compressed bodies as a process: each is answered 400/415 with the reason, counted in
``relay_bad_http_requests_total{listener="public"}``, and the log gets at most one short line a
minute, never aiohttp's "Unhandled exception" traceback."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import aiohttp
import brotli

from tests.conftest import get, sample
from tests.daemon import DaemonProcess, free_port
from tests.fakes import poll_until
from tests.test_process import SECRET

GOOD = gzip.compress(b'[{"eventName":"x","user":{"userID":"u"}}]' * 40)
CORRUPT = {
    "gzip": [
        b"\x1f\x8b\x08\x00" + os.urandom(60),  # a gzip header, then noise
        GOOD[:20] + b"\x00" * 30 + GOOD[50:],  # damaged in the middle
        GOOD[:-8] + b"\xde\xad\xbe\xef\x00\x00\x00\x00",  # a wrong checksum
        os.urandom(80),
    ],
    "br": [
        os.urandom(80),
        brotli.compress(b'[{"eventName":"x"}]' * 40)[:-6] + b"\xff" * 6,
        b"\xff" * 50,
    ],
}
# Segment takes compressed bodies (400 when they do not decode); a Statsig webhook takes none
# (415).
PATHS = {"/segment/v1/batch": 400, "/webhooks/statsig": 415}
ROUNDS = 3


def config(port: int, admin: int) -> str:
    return f"""
server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}"}}
spool: {{backend: sqlite, path: ./data/spool.db}}
sources:
  statsig: {{type: statsig_webhook, path: /webhooks/statsig, signing_secret: "${{HOOK_SECRET}}"}}
  segment: {{type: segment, write_keys: [wk]}}
targets:
  out: {{type: file, path: ./data/out.jsonl}}
routes:
  - {{name: all, from: [statsig, segment], to: out}}
"""


async def test_corrupt_gzip_and_brotli_bodies_get_4xx_are_counted_and_log_one_short_line(
    tmp_path: Path,
) -> None:
    port, admin = free_port(), free_port()
    async with DaemonProcess(config(port, admin), tmp_path, env={"HOOK_SECRET": SECRET}) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        sent = 0
        auth = {"Authorization": aiohttp.encode_basic_auth("wk", "")}
        async with aiohttp.ClientSession(headers=auth) as session:
            for _ in range(ROUNDS):
                for path, status in PATHS.items():
                    for encoding, bodies in CORRUPT.items():
                        for body in bodies:
                            headers = {
                                "Content-Type": "application/json",
                                "Content-Encoding": encoding,
                            }
                            url = f"http://127.0.0.1:{port}{path}"
                            async with session.post(url, data=body, headers=headers) as resp:
                                answer = await resp.json(content_type=None)
                                assert resp.status == status, (path, encoding, answer)
                                assert answer.get("error"), answer
                            sent += 1
        assert sent == ROUNDS * len(PATHS) * sum(map(len, CORRUPT.values()))
        counted = 0.0

        async def all_counted() -> bool:
            # aiohttp meets the broken body again after the answer went out: poll.
            nonlocal counted
            _, text = await get(f"http://127.0.0.1:{admin}/metrics")
            counted = sample(text, 'relay_bad_http_requests_total{listener="public"}')
            return counted >= sent

        await poll_until(all_counted, timeout=10, message=lambda: f"{counted}/{sent} counted")
        assert counted == sent
        assert await daemon.terminate() == 0
        log = daemon.log_text()
        assert "Traceback" not in log, log
        assert "Unhandled exception" not in log, log
        lines = [line for line in log.splitlines() if "cannot be decoded" in line]
        assert len(lines) == 1, lines
        assert "public listener: request body that cannot be decoded" in lines[0]
