"""Health and metrics on a real daphne: a host's processes add up in /metrics."""

import asyncio
import json
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from accounts.services import api_token_create
from tests.e2e.servers import ROOT, drain, run_daphne, server_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

# Another process of the host: counts one session, three finals, and holds one
# session open as it exits (its atexit hook marks it dead).
OTHER_PROCESS = """
from transcription import metrics
metrics.ACTIVE_SESSIONS.inc()
metrics.FINALS.inc(3)
metrics.session_ended(close_code=1000, engine="echo", audio_seconds=2.0)
"""


@pytest.fixture
def raw_token(django_user_model):
    user = django_user_model.objects.create_user(username="olga")
    return api_token_create(user=user, name="e2e")[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _scrape_until(url: str, done) -> dict:
    """Scrape until `done(samples)`: the server counts a session just after its
    close, so the client may ask first. Bounded."""

    async def poll():
        while True:
            _status, text = await asyncio.to_thread(_get, url)
            figures = samples(text)
            if done(figures):
                return figures
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), 20)


SESSIONS_1000 = (
    "voiceproject_sessions_total",
    (("close_code", "1000"), ("engine", "echo")),
)


async def test_metrics_of_a_host_add_up(tmp_path, raw_token):
    env = {"TRANSCRIPTION_ENGINE": "echo", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", OTHER_PROCESS],
        cwd=ROOT,
        env=server_env(env),
        check=True,
        timeout=60,
    )
    with run_daphne(env) as server:
        assert _get(f"{server.http_url}/healthz") == (200, '{"status": "ok"}')
        status, body = _get(f"{server.http_url}/readyz")
        assert status == 200, body
        assert json.loads(body)["status"] == "ok"

        headers = {"Authorization": f"Bearer {raw_token}"}
        async with connect(f"{server.ws_url}/", additional_headers=headers) as ws:
            for _ in range(4):
                await ws.send(b"\0" * 16000)  # 2 s of audio at 16 kHz
            await ws.send("END_OF_STREAM")
            await drain(ws)
            assert ws.close_code == 1000

        figures = await _scrape_until(
            f"{server.http_url}/metrics", lambda f: f.get(SESSIONS_1000) == 2
        )
    assert figures[("voiceproject_finals_total", ())] == 4  # 3 + this session's 1
    assert figures[("voiceproject_audio_seconds_total", ())] == 4.0  # 2 + 2
    assert figures[("voiceproject_first_partial_seconds_count", ())] == 1
    assert figures[("voiceproject_final_latency_seconds_count", ())] == 1
    # The other process is gone (marked dead), this session closed.
    assert figures[("voiceproject_active_sessions", ())] == 0
    assert figures[("voiceproject_batches_due", ())] == 0
    # daphne too marked itself dead as it stopped: no live gauge is left.
    assert not list(tmp_path.glob("gauge_livesum_*.db"))
    assert list(tmp_path.glob("counter_*.db"))  # counters stay, until the next start
