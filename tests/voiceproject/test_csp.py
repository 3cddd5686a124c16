"""The Content-Security-Policy header (voiceproject/csp.py) on pages and the admin."""

import pytest

from voiceproject.csp import header_value

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/", "/nope/"])
def test_every_page_has_the_policy(client, settings, path):
    response = client.get(path)
    policy = response["Content-Security-Policy"]
    assert policy == header_value(settings.CONTENT_SECURITY_POLICY)
    assert "script-src 'self';" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe" not in policy


def test_pages_hold_no_inline_script_or_style(admin_client, user):
    for path in ("/", "/history/", "/accounts/tokens/", "/admin/"):
        client_page = admin_client.get(path, follow=True).content.decode()
        assert "<style" not in client_page, path
        assert "<script>" not in client_page, path
        assert " onfocus=" not in client_page
        assert " onclick=" not in client_page


def test_header_value():
    policy = {"default-src": ["'self'"], "img-src": ["'self'", "data:"]}
    assert header_value(policy) == "default-src 'self'; img-src 'self' data:"
