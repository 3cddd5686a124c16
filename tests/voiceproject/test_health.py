"""/healthz and /readyz: every check named, 503 naming the one that failed."""

import datetime as dt

import pytest
from django.utils import timezone

from tests.transcription.sessions import record_session
from transcription import services
from transcription.models import ReceiverBatch, WorkerHeartbeat

# Also on PostgreSQL and the Redis channel layer (`make test`'s second run).
# Committed rows: the checks read on a connection of their own.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]


@pytest.fixture(autouse=True)
def _echo(settings):
    settings.TRANSCRIPTION_ENGINE = "echo"
    settings.RECEIVER_HOST = settings.RECEIVER_URL = ""


def test_healthz_needs_no_login_and_no_known_host(client, settings):
    settings.ALLOWED_HOSTS = ["speech.example.com"]
    response = client.get("/healthz", HTTP_HOST="10.1.2.3:8765")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Cache-Control"] == "no-store"


def test_readyz_ok_names_every_check(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {
            "database": {"status": "ok"},
            "channel_layer": {"status": "ok"},
            "engine": {"status": "ok"},
            "worker": {"status": "skipped", "reason": "no receiver is configured"},
            "batches": {"status": "ok"},
        },
    }


def test_readyz_with_a_receiver_wants_a_recent_worker(client, settings):
    settings.RECEIVER_HOST = "127.0.0.1"
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "failed"
    assert body["checks"]["worker"] == {
        "status": "failed",
        "reason": "no batch worker has run",
    }
    assert body["checks"]["database"] == {"status": "ok"}

    services.worker_heartbeat(worker_id="host:1:abc")
    assert client.get("/readyz").status_code == 200

    WorkerHeartbeat.objects.update(seen_at=timezone.now() - dt.timedelta(seconds=90))
    body = client.get("/readyz").json()
    assert body["checks"]["worker"]["status"] == "failed"
    assert body["checks"]["worker"]["reason"].startswith("no batch worker seen for 9")


def test_readyz_fails_on_a_batch_due_too_long(client, settings, user):
    settings.READY_MAX_BATCH_AGE = 120
    session = record_session(user=user, close_code=None)
    batch = ReceiverBatch.objects.create(
        session=session, due_at=timezone.now() - dt.timedelta(seconds=60)
    )
    assert client.get("/readyz").status_code == 200  # due, but young enough

    ReceiverBatch.objects.filter(pk=batch.pk).update(
        due_at=timezone.now() - dt.timedelta(seconds=300)
    )
    response = client.get("/readyz")
    assert response.status_code == 503
    check = response.json()["checks"]["batches"]
    assert check["status"] == "failed"
    assert "oldest waiting 300 s (READY_MAX_BATCH_AGE 120 s)" in check["reason"]


def test_readyz_says_which_engine_failed_without_its_message(client, settings):
    settings.TRANSCRIPTION_ENGINE = "tests.voiceproject.test_health.BrokenEngine"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["engine"] == {
        "status": "failed",
        "reason": "ConnectionError",
    }


class BrokenEngine:
    name = "broken"

    async def warm_up(self) -> None:
        raise ConnectionError("https://user:secret@engine.internal/ is down")
