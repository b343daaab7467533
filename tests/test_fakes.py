"""The test-support code proves itself here: fake targets and the daemon-process harness."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.daemon import DaemonProcess, free_port
from tests.fakes import (
    Answer,
    FakeTarget,
    FakeTargetFactory,
    RecordedRequest,
    fake_targets_fixture,  # noqa: F401  (registers the `fake_targets` fixture here)
    poll_until,
)


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    async with session.post(url, data=body, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


# -- FakeTarget -----------------------------------------------------------------------------


async def test_scripted_429_retry_after_then_500_then_200_then_default() -> None:
    async with FakeTarget() as fake, aiohttp.ClientSession() as session:
        fake.script(Answer(429, headers={"Retry-After": "1"}), 500, 200)
        results = [await post(session, f"{fake.url}/v1/log_event", b"{}") for _ in range(4)]

    assert [status for status, _, _ in results] == [429, 500, 200, 200]
    assert results[0][1]["Retry-After"] == "1"
    assert orjson.loads(results[3][2]) == {}
    assert fake.pending_answers == 0
    assert [req.status for req in fake.requests] == [429, 500, 200, 200]


async def test_default_answer_is_configurable_and_json_body_is_sent() -> None:
    fake = FakeTarget(default=Answer(202, json={"success": True}))
    async with fake, aiohttp.ClientSession() as session:
        status, _, body = await post(session, fake.url, b"[]")
    assert (status, orjson.loads(body)) == (202, {"success": True})


async def test_records_method_path_query_headers_case_insensitively() -> None:
    async with FakeTarget() as fake, aiohttp.ClientSession() as session:
        await post(session, f"{fake.url}/hook?a=1&a=2", b'{"x": 1}', **{"STATSIG-API-KEY": "k"})

    (req,) = fake.requests
    assert (req.method, req.path, req.query.getall("a")) == ("POST", "/hook", ["1", "2"])
    assert req.headers["statsig-api-key"] == "k"
    assert (req.is_json, req.json) == (True, {"x": 1})


async def test_gzip_body_is_recorded_raw_and_decompressed() -> None:
    events = [{"eventName": "a"}, {"eventName": "b"}]
    compressed = gzip.compress(orjson.dumps({"events": events}))
    async with FakeTarget() as fake, aiohttp.ClientSession() as session:
        status, _, _ = await post(
            session,
            fake.url,
            compressed,
            **{"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    (req,) = fake.requests
    assert status == 200
    assert req.raw == compressed
    assert orjson.loads(req.body) == {"events": events}
    assert req.json == {"events": events}
    assert fake.events() == events
    assert fake.failures == []


async def test_invalid_gzip_is_a_recorded_failure() -> None:
    async with FakeTarget() as fake, aiohttp.ClientSession() as session:
        status, _, _ = await post(session, fake.url, b"not gzip", **{"Content-Encoding": "gzip"})
    assert status == 400
    assert len(fake.failures) == 1 and "gzip" in fake.failures[0]


async def test_events_flattens_lists_events_and_data_bodies_and_skips_the_rest() -> None:
    bodies = [b'[{"n": 1}, 7]', b'{"events": [{"n": 2}]}', b'{"data": [{"n": 3}]}', b"plain"]
    async with FakeTarget() as fake, aiohttp.ClientSession() as session:
        for body in bodies:
            await post(session, fake.url, body)
    assert fake.events() == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert fake.requests[-1].is_json is False and fake.requests[-1].text == "plain"


async def test_delay_answer_outlasts_a_client_timeout_and_close_does_not_wait() -> None:
    async with FakeTarget() as fake:
        fake.script(Answer(200, delay=float("inf")))
        timeout = aiohttp.ClientTimeout(total=0.3)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            with pytest.raises(TimeoutError):
                await post(session, fake.url, b"{}")
            # Same client, same timeout: the next (default) answer is fast, so the delay did it.
            status, _, _ = await post(session, fake.url, b"{}")
        assert status == 200
        assert len(await fake.wait_for_requests(2)) == 2


async def test_short_delay_still_answers() -> None:
    async with FakeTarget(Answer(503, delay=0.05)) as fake, aiohttp.ClientSession() as session:
        status, _, _ = await post(session, fake.url, b"{}")
    assert status == 503


async def test_callable_answer_rejects_batch_with_a_poison_event() -> None:
    def answer(req: RecordedRequest) -> int | Answer:
        if any(e.get("eventName") == "poison" for e in req.events()):
            return Answer(400, json={"error": "poison"})
        return 202

    async with FakeTarget(default=answer) as fake, aiohttp.ClientSession() as session:
        bad, _, body = await post(
            session, fake.url, b'[{"eventName": "ok"}, {"eventName": "poison"}]'
        )
        good, _, _ = await post(session, fake.url, b'[{"eventName": "ok"}]')
    assert (bad, good) == (400, 202)
    assert orjson.loads(body) == {"error": "poison"}


async def test_async_callable_answer_is_awaited() -> None:
    async def answer(req: RecordedRequest) -> int:
        return 201

    async with FakeTarget(answer) as fake, aiohttp.ClientSession() as session:
        status, _, _ = await post(session, fake.url, b"{}")
    assert status == 201


async def test_check_failure_answers_400_records_it_and_keeps_the_script() -> None:
    def check(req: RecordedRequest) -> None:
        assert req.headers.get("statsig-api-key") == "secret-1", "missing server key"

    async with FakeTarget(202, check=check) as fake, aiohttp.ClientSession() as session:
        bad, _, body = await post(session, fake.url, b"{}")
        good, _, _ = await post(session, fake.url, b"{}", **{"statsig-api-key": "secret-1"})

    assert bad == 400 and "missing server key" in orjson.loads(body)["error"]
    assert good == 202  # the scripted answer was not spent on the rejected request
    # pytest's assertion rewriting appends the compared values to the message: keep them.
    assert len(fake.failures) == 1
    assert fake.failures[0].startswith("POST /: missing server key")
    assert (fake.requests[0].check_error or "").startswith("missing server key")
    assert fake.requests[1].check_error is None


async def test_wait_for_times_out_with_a_clear_message() -> None:
    async with FakeTarget() as fake:
        with pytest.raises(AssertionError, match=r"got 0/1 requests"):
            await fake.wait_for_requests(1, timeout=0.1)
        with pytest.raises(AssertionError, match=r"still false after 0.1s"):
            await fake.wait_for(lambda: len(fake.events()) > 0, timeout=0.1)


async def test_poll_until_accepts_async_predicates() -> None:
    calls = 0

    async def third_time() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3

    await poll_until(third_time, timeout=5, interval=0.001)
    assert calls == 3


async def test_explicit_start_close_and_factory_fixture(fake_targets: FakeTargetFactory) -> None:
    fake = FakeTarget()
    await fake.start()
    made = await fake_targets(204)
    try:
        async with aiohttp.ClientSession() as session:
            assert (await post(session, made.url, b""))[0] == 204
            assert (await post(session, fake.url, b""))[0] == 200
    finally:
        await fake.close()
    await fake.close()  # idempotent
    assert fake.url.startswith("http://127.0.0.1:")


# -- DaemonProcess ----------------------------------------------------------------------------

STANDIN = """
import asyncio, os, signal, sys
import yaml
from aiohttp import web

conf = yaml.safe_load(open("relay.yaml"))  # relative: proves cwd is tmp_path
print("standin greeting:", os.environ.get("STANDIN_GREETING"), flush=True)
if conf.get("crash"):
    print("config error: boom", file=sys.stderr, flush=True)
    sys.exit(2)
probes = 0

async def readyz(request):
    global probes
    probes += 1
    return web.Response(status=200 if probes > 2 else 503)  # not ready at first

async def main():
    app = web.Application()
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", conf["admin_port"]).start()
    stop = asyncio.Event()
    if conf.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
    print("standin drained", flush=True)
    sys.exit(3)

asyncio.run(main())
"""


def standin(tmp_path: Path, port: int, **conf: object) -> tuple[DaemonProcess, str]:
    script = tmp_path / "standin.py"
    script.write_text(STANDIN)
    config = "".join(f"{k}: {orjson.dumps(v).decode()}\n" for k, v in conf.items())
    config += f"admin_port: {port}\n"
    daemon = DaemonProcess(
        config, tmp_path, env={"STANDIN_GREETING": "hello"}, argv=[sys.executable, str(script)]
    )
    return daemon, f"http://127.0.0.1:{port}/readyz"


async def test_daemon_becomes_ready_and_sigterm_returns_its_exit_code(tmp_path: Path) -> None:
    daemon, ready = standin(tmp_path, free_port())
    async with daemon:
        await daemon.start(ready)
        assert daemon.running()
        assert await daemon.terminate() == 3
    assert "standin greeting: hello" in daemon.log_text()
    assert "standin drained" in daemon.log_text()


async def test_daemon_sigkill_then_restart(tmp_path: Path) -> None:
    daemon, ready = standin(tmp_path, free_port())
    async with daemon:
        await daemon.start(ready)
        first = daemon.pid
        assert daemon.kill() == -9
        assert not daemon.running()
        await daemon.start(ready)
        assert daemon.pid != first and daemon.running()
    assert daemon.returncode == -9  # the context manager killed it
    assert daemon.log_text().count("--- start:") == 2


async def test_daemon_that_exits_early_fails_start_with_the_log_tail(tmp_path: Path) -> None:
    daemon, ready = standin(tmp_path, free_port(), crash=True)
    async with daemon:
        with pytest.raises(AssertionError, match=r"(?s)exited with 2.*config error: boom"):
            await daemon.start(ready)


async def test_daemon_never_ready_fails_at_the_deadline_and_is_killed(tmp_path: Path) -> None:
    daemon, _ = standin(tmp_path, free_port())
    wrong = f"http://127.0.0.1:{free_port()}/readyz"
    async with daemon:
        with pytest.raises(AssertionError, match=r"not ready .* after 0.5s"):
            await daemon.start(wrong, timeout=0.5)
        assert not daemon.running()


async def test_terminate_that_is_ignored_fails_and_kills(tmp_path: Path) -> None:
    daemon, ready = standin(tmp_path, free_port(), ignore_term=True)
    async with daemon:
        await daemon.start(ready)
        with pytest.raises(AssertionError, match=r"did not exit within 0.3s"):
            await daemon.terminate(timeout=0.3)
        assert daemon.returncode == -9
