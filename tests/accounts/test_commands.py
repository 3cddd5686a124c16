"""create_token, list_tokens, revoke_token: outputs, failures, no raw token shown."""

import io
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import ApiToken
from accounts.services import api_token_authenticate, api_token_create

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_create_token_prints_the_raw_token_alone_on_the_last_line(user):
    output = run("create_token", "alice", "--name", "laptop")
    raw = output.strip().splitlines()[-1]
    token = api_token_authenticate(raw=raw)
    assert token is not None
    assert (token.user, token.name) == (user, "laptop")
    assert token.prefix in output.splitlines()[0]
    assert output.count(raw) == 1


def test_create_token_with_create_user_and_expiry(db):
    raw = run("create_token", "bob", "--create-user", "--expires-days", "30")
    token = ApiToken.objects.get(user__username="bob")
    assert token.name == "default"
    assert token.expires_at is not None
    assert api_token_authenticate(raw=raw.strip().splitlines()[-1]) == token


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nobody"], "no user named 'nobody' (add --create-user)"),
        (["alice", "--name", " "], "--name must be 1 to 100 characters"),
        (["alice", "--expires-days", "0"], "--expires-days must be at least 1"),
    ],
)
def test_create_token_refuses_bad_input(user, args, message):
    with pytest.raises(
        CommandError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        run("create_token", *args)
    assert not ApiToken.objects.exists()


def test_list_tokens_shows_prefix_and_state_never_the_raw_token(user, api_token):
    token, raw = api_token
    revoked, revoked_raw = api_token_create(user=user, name="old")
    run("revoke_token", revoked.prefix)
    output = run("list_tokens")
    lines = output.splitlines()
    assert lines[0].split() == [
        "prefix",
        "name",
        "user",
        "status",
        "created",
        "last",
        "used",
        "expires",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[token.prefix][1:4] == ["tests", "alice", "active"]
    assert rows[revoked.prefix][1:4] == ["old", "alice", "revoked"]
    assert raw not in output
    assert revoked_raw not in output


def test_list_tokens_of_one_user(user, api_token, django_user_model):
    bob = django_user_model.objects.create_user(username="bob")
    api_token_create(user=bob, name="bobs")
    output = run("list_tokens", "bob")
    assert "bobs" in output
    assert "alice" not in output
    assert run("list_tokens", "alice").count("\n") == 2  # header and one token


def test_list_tokens_unknown_user_fails():
    with pytest.raises(CommandError, match="no user named 'carol'"):
        run("list_tokens", "carol")


def test_revoke_token_by_prefix_or_raw(user, api_token):
    token, raw = api_token
    output = run("revoke_token", raw)
    assert output == f"Token {token.prefix} ('tests', alice) revoked.\n"
    assert raw not in output
    assert api_token_authenticate(raw=raw) is None
    again = run("revoke_token", token.prefix)
    assert "was already revoked" in again


def test_revoke_token_unknown_does_not_echo_what_was_given(user):
    secret = "vp_" + "x" * 40
    with pytest.raises(CommandError) as info:
        run("revoke_token", secret)
    assert str(info.value) == "no token has that prefix"


def test_bad_arguments_exit_non_zero_with_one_line():
    """From a shell: a one-line message on stderr, status non-zero, no usage dump."""
    result = subprocess.run(
        [sys.executable, "manage.py", "revoke_token"],
        capture_output=True,
        text=True,
        env={"DJANGO_SETTINGS_MODULE": "tests.settings", "PATH": ""},
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "manage.py revoke_token: error: the following arguments are required: "
        "PREFIX_OR_RAW_TOKEN"
    ]


@pytest.mark.parametrize("command", ["create_token", "list_tokens", "revoke_token"])
def test_help_text(command):
    from django.core.management import load_command_class

    cmd = load_command_class("accounts", command)
    assert len(cmd.help) > 40
    assert "usage" in cmd.create_parser("manage.py", command).format_help()


def test_create_token_beyond_the_limit_fails_in_one_line(user, settings):
    settings.MAX_TOKENS_PER_USER = 1
    api_token_create(user=user)
    with pytest.raises(CommandError) as info:
        run("create_token", "alice")
    assert str(info.value) == (
        "alice has reached the limit of 1 usable API tokens: "
        "revoke one before creating another."
    )
    assert ApiToken.objects.filter(user=user).count() == 1
