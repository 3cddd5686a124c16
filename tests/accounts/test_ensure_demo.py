"""ensure_demo: the demo login and token made once, kept in .env, new on --rotate."""

import io
import logging
import stat

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from accounts.models import ApiToken
from accounts.services import api_token_authenticate, api_token_revoke

pytestmark = pytest.mark.django_db


@pytest.fixture
def env_file(tmp_path):
    path = tmp_path / ".env"
    path.write_text("DJANGO_SECRET_KEY=kept-as-it-is\n")
    path.chmod(0o644)
    return path


def ensure_demo(env_file, *args) -> dict[str, str]:
    out = io.StringIO()
    call_command("ensure_demo", "--env-file", str(env_file), *args, stdout=out)
    printed = {}
    for line in out.getvalue().splitlines():
        label, _, value = line.strip().partition("  ")
        printed[label] = value.strip()
    return printed


def login_and_token(printed) -> tuple[str, str]:
    username, password = printed["log in"].split(" / ")
    assert username == "demo"
    return password, printed["API token"]


def test_first_run_makes_them_and_keeps_them_in_env_0600(env_file):
    password, raw = login_and_token(ensure_demo(env_file))
    user = get_user_model().objects.get(username="demo")
    assert user.check_password(password)
    assert user.is_staff
    assert user.is_superuser
    assert api_token_authenticate(raw=raw).user == user
    assert env_file.read_text().splitlines() == [
        "DJANGO_SECRET_KEY=kept-as-it-is",
        "# make run's demo login and API token (local use only; make demo-reset)",
        f"DEMO_PASSWORD={password}",
        f"DEMO_TOKEN={raw}",
    ]
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600


def test_a_second_run_reuses_them_without_touching_the_password(env_file):
    first = login_and_token(ensure_demo(env_file))
    hashed = get_user_model().objects.get(username="demo").password
    printed = ensure_demo(env_file)
    assert login_and_token(printed) == first
    assert "the same on every run" in printed["kept in"]
    # The stored hash is unchanged, so browser sessions (keyed on it) survive.
    assert get_user_model().objects.get(username="demo").password == hashed
    assert ApiToken.objects.usable().filter(user__username="demo").count() == 1
    assert env_file.read_text().count("DEMO_TOKEN=") == 1


def test_rotate_makes_new_ones_and_revokes_the_old_token(env_file):
    old_password, old_raw = login_and_token(ensure_demo(env_file))
    new_password, new_raw = login_and_token(ensure_demo(env_file, "--rotate"))
    assert (new_password, new_raw) != (old_password, old_raw)
    assert api_token_authenticate(raw=old_raw) is None
    assert api_token_authenticate(raw=new_raw) is not None
    assert get_user_model().objects.get(username="demo").check_password(new_password)
    assert f"DEMO_TOKEN={new_raw}" in env_file.read_text()
    assert login_and_token(ensure_demo(env_file)) == (new_password, new_raw)


def test_a_new_database_gets_the_kept_login_and_token_again(env_file):
    kept = login_and_token(ensure_demo(env_file))
    get_user_model().objects.all().delete()  # as `make clean` does to the database
    password, raw = login_and_token(ensure_demo(env_file))
    assert (password, raw) == kept
    assert api_token_authenticate(raw=raw).user.username == "demo"


def test_a_revoked_demo_token_is_replaced(env_file):
    password, raw = login_and_token(ensure_demo(env_file))
    api_token_revoke(token=ApiToken.objects.get(user__username="demo"))
    new_password, new_raw = login_and_token(ensure_demo(env_file))
    assert new_password == password
    assert new_raw != raw
    assert api_token_authenticate(raw=new_raw) is not None


def test_nothing_is_logged_with_the_secrets(env_file, caplog):
    caplog.set_level(logging.DEBUG)
    password, raw = login_and_token(ensure_demo(env_file))
    login_and_token(ensure_demo(env_file))
    assert raw not in caplog.text
    assert password not in caplog.text
