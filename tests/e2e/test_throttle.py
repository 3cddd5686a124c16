"""The failed-attempt throttle against a real daphne: floods of bad handshakes from
one address cost that address, never a valid token from it, and store nothing."""

import asyncio
import json
import urllib.request

import pytest
from asgiref.sync import sync_to_async
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from accounts.middleware import AUTH_REFUSALS
from accounts.services import api_token_create
from tests.e2e.servers import drain, run_daphne
from tests.helpers import eventually
from transcription.models import AudioSession, SessionError

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

LIMIT = 20


@pytest.fixture
def raw_token(django_user_model):
    user = django_user_model.objects.create_user(username="nat-neighbour")
    return api_token_create(user=user, name="e2e")[1]


@pytest.fixture
def server(transactional_db):
    env = {
        "TRANSCRIPTION_ENGINE": "echo",
        "AUTH_FAILURES_PER_MINUTE": str(LIMIT),
        "AUTH_FAILURE_DELAY_SECONDS": "0.2",
    }
    with run_daphne(env) as server:
        yield server


def bad_token(n: int) -> str:
    return f"vp_guessed{n:033d}"  # shaped like a token: it is looked up


async def refusal(url: str) -> tuple[str, int | None]:
    """The one {"error"} a refused connection gets, and its close code."""
    async with connect(url) as ws:
        messages = await drain(ws)
        assert len(messages) == 1, messages
        return messages[0]["error"], ws.close_code


async def streams(url: str) -> bool:
    async with connect(url) as ws:
        await ws.send(b"\0" * 1024)
        first = json.loads(await ws.recv())
        await ws.send("END_OF_STREAM")
        rest = await drain(ws)
        return (
            first == {"partialTranscript": "1024 bytes"}
            and rest[-1] == {"transcript": "received 1024 bytes"}
            and ws.close_code == 1000
        )


def ended_codes(*, count: int) -> list[int] | None:
    """The close codes of the ended sessions, once there are `count` of them."""
    codes = AudioSession.objects.exclude(status="active").values_list("close_code")
    return [code for (code,) in codes] if len(codes) == count else None


def rows() -> tuple[int, int]:
    return AudioSession.objects.count(), SessionError.objects.count()


def scrape(server) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as r:  # noqa: S310
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def lookups(figures, kind: str) -> float:
    return figures.get(("voiceproject_token_lookups_total", (("kind", kind),)), 0.0)


def refused(figures, reason: str) -> float:
    return figures.get(("voiceproject_auth_refused_total", (("reason", reason),)), 0.0)


async def test_200_bad_tokens_then_a_valid_one_from_the_same_address(server, raw_token):
    before = await sync_to_async(rows)()
    results = []
    for start in range(0, 200, 20):  # 20 at a time, from this one address
        results += await asyncio.gather(
            *(
                refusal(f"{server.ws_url}/?token={bad_token(n)}")
                for n in range(start, start + 20)
            )
        )
    assert {code for _, code in results} == {1008}
    errors = [error for error, _ in results]
    assert errors.count(AUTH_REFUSALS["bad_token"]) == LIMIT
    assert errors.count(AUTH_REFUSALS["throttled"]) == 200 - LIMIT
    # No credentials, or bad parameters without them: the same, over the limit.
    for query in ("", "?sampleRate=fast"):
        assert await refusal(f"{server.ws_url}/{query}") == (
            AUTH_REFUSALS["throttled"],
            1008,
        )
    # A client that leaves while it waits: nothing to send it, nothing to store.
    async with connect(f"{server.ws_url}/?token={bad_token(999)}"):
        pass
    assert await sync_to_async(rows)() == before  # nothing stored per attempt

    # A valid token from the same address is not locked out, by query or header.
    assert await streams(f"{server.ws_url}/?token={raw_token}&sendPartials=true")
    headers = {"Authorization": f"Bearer {raw_token}"}
    async with connect(f"{server.ws_url}/", additional_headers=headers) as ws:
        await ws.send("END_OF_STREAM")
        assert (await drain(ws))[-1] == {"transcript": "received 0 bytes"}
        assert ws.close_code == 1000
    # Recorded just after their close: wait for both.
    codes = await eventually(lambda: ended_codes(count=before[0] + 2))
    assert codes == [1000, 1000]
    assert await sync_to_async(rows)() == (before[0] + 2, before[1])

    figures = await asyncio.to_thread(scrape, server)
    assert refused(figures, "bad_token") == LIMIT
    assert refused(figures, "throttled") == 200 - LIMIT + 3
    log = server.output()
    assert "Traceback" not in log
    assert "throttling authentication from 127.0.0.1" in log
    assert raw_token not in log
    assert bad_token(7) not in log


async def test_bad_handshakes_opened_at_once_get_no_more_lookups_than_the_limit(
    server, raw_token
):
    before = await asyncio.to_thread(scrape, server)
    flood = [refusal(f"{server.ws_url}/?token={bad_token(n)}") for n in range(200)]
    results = await asyncio.gather(
        *flood, streams(f"{server.ws_url}/?token={raw_token}")
    )
    assert results[-1] is True  # the valid token, in the middle of the flood
    errors = [error for error, _ in results[:-1]]
    within = errors.count(AUTH_REFUSALS["bad_token"])
    # LIMIT, or one less when the valid attempt was still in flight among the first.
    assert LIMIT - 1 <= within <= LIMIT
    assert errors.count(AUTH_REFUSALS["throttled"]) == 200 - within

    after = await asyncio.to_thread(scrape, server)
    # Only the bad tokens within the limit were authenticated, and the valid one.
    authenticated = lookups(after, "authenticate") - lookups(before, "authenticate")
    assert authenticated == within + 1
    # Over the limit, attempts are checked in batches: never more than one query each.
    probes = lookups(after, "probe") - lookups(before, "probe")
    assert probes <= 200 - LIMIT + 1
    assert await sync_to_async(rows)() == (1, 0)  # the valid session alone
