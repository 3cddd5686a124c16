"""daphne's access log never carries a raw token, however the URL encodes it."""

import io
from urllib.parse import quote, unquote

import pytest
from daphne.access import AccessLogGenerator
from hypothesis import given
from hypothesis import strategies as st

from accounts.tokens import text_holds_token, token_generate
from voiceproject.server import access_log
from voiceproject.server.access_log import redact

RAW = "vp_Zx9-_abcDEF0123456789abcdefghijklmnopqrstuv"


def _decoded(text: str) -> str:
    for _ in range(20):
        text, previous = unquote(text), text
        if text == previous:
            break
    return text


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"/?token={RAW}&language=en-US", "/?token=[redacted]&language=en-US"),
        (f"/?TOKEN={RAW}", "/?TOKEN=[redacted]"),
        (f"/?language=en-US&Token={RAW}", "/?language=en-US&Token=[redacted]"),
        (
            f"/accounts/login/?next=%2F%3Ftoken%3D{RAW}",
            "/accounts/login/?next=%2F%3Ftoken%3D[redacted]",
        ),
        (
            f"/accounts/login/?next=%252F%253Ftoken%253D{RAW}%2526x%253D1",
            "/accounts/login/?next=%252F%253Ftoken%253D[redacted]%2526x%253D1",
        ),
        (f"/?token%3d{RAW}", "/?token%3d[redacted]"),
        (f"/some/{RAW}/path", "/some/[redacted]/path"),
        (f"/?a={quote(RAW, safe='')}", "/?a=[redacted]"),
        ("/?a=%76%70%5F" + RAW[3:], "/?a=[redacted]"),  # every character encoded
        ("/?tok%65n=no-tag-at-all", "/?[redacted]"),  # caught by the check
        ("/?token=", "/?token=[redacted]"),
    ],
)
def test_redacts_every_encoding(path, expected):
    assert redact(path) == expected


@pytest.mark.parametrize(
    "path",
    ["/", "/history/?page=2", "/static/js/app.js", "/accounts/login/?next=/history/"],
)
def test_leaves_paths_without_tokens_alone(path):
    assert redact(path) == path


def _encoded(text: str, times: int, safe: str) -> str:
    for _ in range(times):
        text = quote(text, safe=safe)
    return text


@given(
    before=st.text(alphabet=st.sampled_from("abc/?&=%._-+"), max_size=20),
    key=st.sampled_from(["token", "TOKEN", "next", "a"]),
    times=st.integers(min_value=0, max_value=6),
    safe=st.sampled_from(["", "/", "/=&?"]),
    after=st.text(alphabet=st.sampled_from("abc/&=%"), max_size=10),
)
def test_no_encoding_of_a_token_survives(before, key, times, safe, after):
    raw = token_generate()
    inner = f"/?{key}={raw}" if key != "a" else raw
    path = f"/{before}?next={_encoded(inner, times, safe)}&{after}"
    logged = redact(path)
    assert raw not in _decoded(logged)
    assert raw[3:11] not in _decoded(logged)
    assert not text_holds_token(logged)


@given(st.text(max_size=200))
def test_redacted_output_never_holds_a_token(path):
    assert not text_holds_token(redact(path))


def test_installed_access_log_writes_redacted_lines():
    access_log.install()
    access_log.install()  # once only
    stream = io.StringIO()
    log = AccessLogGenerator(stream)
    log(
        "http",
        "complete",
        {
            "path": f"/accounts/login/?next=%2F%3Ftoken%3D{RAW}",
            "status": 200,
            "method": "GET",
            "client": "127.0.0.1:1",
            "size": 10,
        },
    )
    log("websocket", "connecting", {"path": f"/?token={RAW}", "client": None})
    written = stream.getvalue()
    assert RAW not in written
    assert written.count("[redacted]") == 2
