"""No URL a browser is sent to carries a token (TokenOutOfUrlsMiddleware)."""

from urllib.parse import quote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accounts.middleware import url_without_token
from accounts.tokens import text_holds_token

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/?token=vp_abcdefghijklmnop", "/"),
        ("/?Token=x&language=en-US", "/?language=en-US"),
        ("/login/?next=/%3Ftoken%3Dvp_abcdefghijkl", "/login/?next=/"),
        (
            "/login/?next=%2F%3Flanguage%3Den-US%26token%3Dvp_abcdefghijkl",
            "/login/?next=/%3Flanguage%3Den-US",
        ),
        ("/login/?next=%252F%253Ftoken%253Dvp_abcdefghijkl", "/login/?next=/"),
        ("/x/?a=vp_abcdefghijklmnop&b=2", "/x/?b=2"),
        ("/x/?token=", "/x/"),
        ("/x/?page=2", None),
        ("/x/", None),
        ("/login/?next=/history/%3Fpage%3D2", None),
        # A path stays a path: never a network location (an open redirect).
        ("//evil.example/?token=1", "/%2Fevil.example/"),
        ("//evil.example/x?token=1#f", "/%2Fevil.example/x#f"),
        ("http://testserver/x?token=1", "http://testserver/x"),
    ],
)
def test_url_without_token(url, expected):
    assert url_without_token(url) == expected


def test_anonymous_token_url_ends_at_a_login_page_without_it(client, api_token):
    _, raw = api_token
    first = client.get(f"/?token={raw}")
    assert first.status_code == 302
    assert first["Location"] == "/"
    assert "no-store" in first["Cache-Control"]
    second = client.get(first["Location"])
    assert second["Location"] == f"{LOGIN}?next=/"
    page = client.get(second["Location"])
    assert page.status_code == 200
    assert 'name="next" value="/"' in page.content.decode()


@pytest.mark.parametrize(
    "next_value",
    [
        "/?token={raw}",
        "/?language=en-US&token={raw}",
        "/?TOKEN={raw}",
    ],
)
@pytest.mark.parametrize("times", [1, 2])
def test_login_page_never_shows_a_token_in_next(client, api_token, next_value, times):
    _, raw = api_token
    encoded = next_value.format(raw=raw)
    for _ in range(times):
        encoded = quote(encoded, safe="")
    response = client.get(f"{LOGIN}?next={encoded}", follow=True)
    assert response.status_code == 200
    assert raw not in response.content.decode()
    for url, _status in response.redirect_chain:
        assert raw not in url
    assert 'name="next" value="/' in response.content.decode()


def test_a_login_posted_with_a_token_in_next_redirects_without_it(
    client, user, api_token
):
    _, raw = api_token
    response = client.post(
        LOGIN,
        {"username": "alice", "password": "pw-alice-1", "next": f"/?token={raw}"},
    )
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_logged_in_token_url_is_redirected_too(client, user, api_token):
    _, raw = api_token
    client.force_login(user)
    response = client.get(f"/history/?page=1&token={raw}")
    assert response["Location"] == "/history/?page=1"


def test_a_post_with_a_token_in_its_url_is_sent_again_without_it(client, api_token):
    _, raw = api_token
    response = client.post(f"{LOGIN}?next=/&token={raw}", {"username": "x"})
    assert response.status_code == 307
    assert response["Location"] == f"{LOGIN}?next=/"


def test_deeply_nested_urls_are_cleaned_without_recursing_deeply():
    url = "/?next=/" + "?next=/" * 3000 + "?token=vp_abcdefghijkl"
    cleaned = url_without_token(url)
    assert cleaned is not None
    assert not text_holds_token(cleaned)
    assert len(cleaned) < 200


PIECES = [
    "/",
    "?",
    "&",
    "=",
    "next=",
    "token=",
    "Token",
    "%3D",
    "%3F",
    "%26",
    "%25",
    "%2F",
    "vp_abcdefghijk",
    "a=1",
    "x",
]


@given(st.lists(st.sampled_from(PIECES), max_size=25).map("".join))
def test_a_cleaned_url_is_clean_so_redirects_end(url):
    cleaned = url_without_token(url)
    if cleaned is not None:
        assert url_without_token(cleaned) is None
        assert not text_holds_token(urlsplit(cleaned).query)
