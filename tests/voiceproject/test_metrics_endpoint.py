"""/metrics: who may read it (the socket's peer, or the bearer token), and what."""

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _metrics_settings(settings):
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1", "::1", "10.9.0.0/16"]
    settings.METRICS_TOKEN = "s3cret-metrics-token"


def test_loopback_is_served(client):
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.content.decode()
    assert "# TYPE voiceproject_sessions_total counter" in text
    assert "voiceproject_batches_due 0.0" in text
    assert "voiceproject_oldest_due_batch_seconds 0.0" in text


@pytest.mark.parametrize("peer", ["::1", "::ffff:127.0.0.1", "10.9.200.1"])
def test_allowed_addresses_and_networks(client, peer):
    assert client.get("/metrics", REMOTE_ADDR=peer).status_code == 200


def test_other_peer_is_refused_even_with_a_loopback_forwarded_for(client):
    response = client.get(
        "/metrics", REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR="127.0.0.1"
    )
    assert response.status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.7").status_code == 403


def test_forwarded_requests_are_never_admitted_by_address(client):
    # daphne --proxy-headers puts X-Forwarded-For's first entry (the client's own
    # writing) in REMOTE_ADDR: a forwarded request needs the token.
    response = client.get(
        "/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="127.0.0.1"
    )
    assert response.status_code == 403


def test_bearer_token_is_accepted_from_anywhere(client):
    response = client.get(
        "/metrics",
        REMOTE_ADDR="203.0.113.7",
        HTTP_X_FORWARDED_FOR="198.51.100.1",
        HTTP_AUTHORIZATION="Bearer s3cret-metrics-token",
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "authorization",
    ["Bearer wrong", "Bearer s3cret-metrics-token-", "Basic s3cret-metrics-token", ""],
)
def test_wrong_token_is_refused(client, authorization):
    response = client.get(
        "/metrics", REMOTE_ADDR="203.0.113.7", HTTP_AUTHORIZATION=authorization
    )
    assert response.status_code == 403


def test_no_token_configured_accepts_no_token(client, settings):
    settings.METRICS_TOKEN = ""
    response = client.get(
        "/metrics", REMOTE_ADDR="203.0.113.7", HTTP_AUTHORIZATION="Bearer "
    )
    assert response.status_code == 403


def test_token_in_the_url_is_not_a_credential(client):
    response = client.get(
        "/metrics?token=s3cret-metrics-token", REMOTE_ADDR="203.0.113.7"
    )
    assert response.status_code == 403
