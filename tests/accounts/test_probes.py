"""Over-limit token probes: many attempts, one query on the prefix index."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from prometheus_client import REGISTRY

from accounts.probes import TokenProbe
from accounts.services import api_token_revoke

pytestmark = pytest.mark.django_db(transaction=True)


def probes() -> float:
    value = REGISTRY.get_sample_value(
        "voiceproject_token_lookups_total", {"kind": "probe"}
    )
    return value or 0.0


async def test_attempts_that_wait_together_are_checked_in_one_query(api_token):
    token, raw = api_token
    probe = TokenProbe()
    before = probes()
    guesses = [f"vp_guess{n:040d}" for n in range(100)]
    same_prefix = raw[:12] + "x" * (len(raw) - 12)  # a real prefix, a wrong token
    answers = await asyncio.gather(
        *(probe.matches(guess) for guess in guesses),
        probe.matches(raw),
        probe.matches(same_prefix),
    )
    assert answers == [False] * 100 + [True, False]
    assert probes() - before == 1

    await sync_to_async(api_token_revoke)(token=token)
    assert not await probe.matches(raw)  # usable tokens only
    assert probes() - before == 2
