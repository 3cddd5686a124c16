"""Running sessions lose their access: the check of grants, and the per-loop watch."""

import asyncio
import datetime as dt
import logging
import threading

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.db import OperationalError, connection
from django.test import Client
from django.utils import timezone

from accounts.services import api_token_create, api_token_revoke
from transcription.selectors import AccessEnded, grants_revoked
from transcription.streaming.access import AccessWatch, Grant, access_watch

User = get_user_model()


def token_grant(token) -> Grant:
    return Grant(token_id=token.pk, user_id=token.user_id)


def login_grant(user) -> tuple[Grant, Client]:
    """A browser logged in as `user` (through Django's login), and its grant."""
    client = Client()
    client.force_login(user)
    key = client.session.session_key
    return Grant(token_id=None, user_id=user.pk, session_key=key), client


# --- grants_revoked ------------------------------------------------------------


@pytest.mark.django_db
def test_usable_grants_are_not_revoked(api_token, user):
    cookie, _ = login_grant(user)
    assert grants_revoked([token_grant(api_token[0]), cookie]) == {}
    assert grants_revoked([]) == {}


@pytest.mark.django_db
def test_revoked_token(api_token):
    token = api_token_revoke(token=api_token[0])
    grant = token_grant(token)
    assert grants_revoked([grant]) == {grant: "Your API token was revoked."}


@pytest.mark.django_db
def test_deleted_token_counts_as_revoked(api_token):
    grant = token_grant(api_token[0])
    api_token[0].delete()
    assert grants_revoked([grant]) == {grant: AccessEnded.REVOKED}


@pytest.mark.django_db
def test_expired_token(user):
    expires = timezone.now() + dt.timedelta(hours=1)
    token, _ = api_token_create(user=user, expires_at=expires)
    grant = token_grant(token)
    assert grants_revoked([grant], now=expires - dt.timedelta(seconds=1)) == {}
    assert grants_revoked([grant], now=expires) == {grant: "Your API token expired."}


@pytest.mark.django_db
def test_deactivated_user_ends_tokens_and_logins(api_token, user):
    cookie, _ = login_grant(user)
    user.is_active = False
    user.save()
    grant = token_grant(api_token[0])
    reason = "Your account was deactivated."
    assert grants_revoked([grant, cookie]) == {grant: reason, cookie: reason}


@pytest.mark.django_db
def test_deleted_user_counts_as_deactivated(api_token, user):
    cookie, _ = login_grant(user)
    grant = token_grant(api_token[0])
    user.delete()
    ended = AccessEnded.DEACTIVATED
    assert grants_revoked([grant, cookie]) == {grant: ended, cookie: ended}


@pytest.mark.parametrize(
    "engine",
    [
        "django.contrib.sessions.backends.db",
        "django.contrib.sessions.backends.cached_db",
        "django.contrib.sessions.backends.cache",
    ],
)
@pytest.mark.django_db
def test_logout_through_the_logout_view(settings, user, engine):
    settings.SESSION_ENGINE = engine
    grant, client = login_grant(user)
    assert grants_revoked([grant]) == {}
    assert client.post("/accounts/logout/").status_code == 302
    assert grants_revoked([grant]) == {grant: "You were logged out."}


@pytest.mark.django_db
def test_flushed_session_is_logged_out(user):
    grant, _ = login_grant(user)
    SessionStore(session_key=grant.session_key).flush()
    assert grants_revoked([grant]) == {grant: AccessEnded.LOGGED_OUT}


@pytest.mark.django_db
def test_expired_session_is_logged_out(user):
    grant, _ = login_grant(user)
    later = timezone.now() + dt.timedelta(days=365)
    assert grants_revoked([grant], now=later) == {grant: AccessEnded.LOGGED_OUT}


@pytest.mark.django_db
def test_session_now_holding_another_users_login(user):
    grant, _ = login_grant(user)
    bob = User.objects.create_user(username="bob")
    store = SessionStore(session_key=grant.session_key)
    store[SESSION_KEY] = str(bob.pk)
    store.save()
    assert grants_revoked([grant]) == {grant: AccessEnded.LOGGED_OUT}


@pytest.mark.django_db
def test_password_change_logs_other_sessions_out(user):
    # What Django's own get_user() does at the next request of that browser.
    grant, _ = login_grant(user)
    user.set_password("a-new-password-2")
    user.save()
    assert grants_revoked([grant]) == {grant: AccessEnded.LOGGED_OUT}


@pytest.mark.django_db
def test_one_query_per_kind_whatever_the_number_of_grants(
    django_assert_max_num_queries,
):
    users = [User.objects.create_user(username=f"u{n}") for n in range(25)]
    grants = [token_grant(api_token_create(user=u)[0]) for u in users]
    grants += [login_grant(u)[0] for u in users]
    api_token_revoke(token=users[3].api_tokens.get())
    with django_assert_max_num_queries(3):
        revoked = grants_revoked(grants)
    assert revoked == {grants[3]: AccessEnded.REVOKED}


def test_grant_from_scope(api_token, user):
    token = api_token[0]
    assert Grant.from_scope({"auth_method": "token", "api_token": token}) == Grant(
        token_id=token.pk, user_id=user.pk
    )
    session = SessionStore(session_key="k" * 32)
    cookie = Grant.from_scope(
        {"auth_method": "session", "user": user, "session": session}
    )
    assert cookie == Grant(token_id=None, user_id=user.pk, session_key="k" * 32)
    assert "k" * 32 not in repr(cookie)  # the session key is a credential
    assert Grant.from_scope({"auth_method": "bad_token", "api_token": None}) is None


# --- AccessWatch ---------------------------------------------------------------

watch_db = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fast_checks(settings):
    settings.ACCESS_CHECK_SECONDS = 0.05


class Calls:
    """Records a callback's reasons; `wait(n)` until n calls came, bounded."""

    def __init__(self, error: Exception | None = None) -> None:
        self.reasons: list[str] = []
        self.changed = asyncio.Event()
        self.error = error

    async def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.changed.set()
        if self.error:
            raise self.error

    async def wait(self, count: int = 1, seconds: float = 2) -> None:
        async def until() -> None:
            while len(self.reasons) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), seconds)


@pytest.fixture
async def watch():
    watch = AccessWatch()
    yield watch
    await watch.aclose()


def live_watch_tasks() -> list[asyncio.Task]:
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name() == "access-watch" and not t.done()
    ]


@watch_db
async def test_revocation_reaches_the_callback_within_the_interval(
    fast_checks, watch, api_token
):
    calls = Calls()
    watch.watch(token_grant(api_token[0]), calls, label="session test")
    await sync_to_async(api_token_revoke)(token=api_token[0])
    loop = asyncio.get_running_loop()
    revoked_at = loop.time()
    await calls.wait()
    assert loop.time() - revoked_at < 1  # interval 0.05 s; generous for a busy CI
    assert calls.reasons == ["Your API token was revoked."]
    assert not watch.running  # nothing left to watch


@watch_db
async def test_one_callback_per_watch_and_only_for_revoked_grants(
    fast_checks, watch, api_token, user
):
    other = await sync_to_async(api_token_create)(user=user, name="other")
    first, second, unaffected = Calls(), Calls(), Calls()
    watch.watch(token_grant(api_token[0]), first)
    watch.watch(token_grant(api_token[0]), second)  # two sessions of one token
    watch.watch(token_grant(other[0]), unaffected)
    await sync_to_async(api_token_revoke)(token=api_token[0])
    await first.wait()
    await second.wait()
    for _ in range(3):  # several more checks: none calls back again
        await watch.check()
        await asyncio.sleep(0)  # a callback would have started
    assert first.reasons == second.reasons == [AccessEnded.REVOKED]
    assert unaffected.reasons == []
    assert watch.running


@watch_db
async def test_logout_and_deactivation_reach_the_callback(fast_checks, watch, user):
    grant, client = await sync_to_async(login_grant)(user)
    bob = await User.objects.acreate(username="bob")
    bob_token, _ = await sync_to_async(api_token_create)(user=bob)
    logged_out, deactivated = Calls(), Calls()
    watch.watch(grant, logged_out)
    watch.watch(token_grant(bob_token), deactivated)
    await sync_to_async(client.post)("/accounts/logout/")
    await User.objects.filter(pk=bob.pk).aupdate(is_active=False)
    await logged_out.wait()
    await deactivated.wait()
    assert logged_out.reasons == [AccessEnded.LOGGED_OUT]
    assert deactivated.reasons == [AccessEnded.DEACTIVATED]


@watch_db
async def test_a_raising_callback_is_logged_and_the_watch_goes_on(
    fast_checks, watch, api_token, user, caplog
):
    other = await sync_to_async(api_token_create)(user=user, name="other")
    raising, later = Calls(error=RuntimeError("socket gone")), Calls()
    watch.watch(token_grant(api_token[0]), raising, label="session one")
    watch.watch(token_grant(other[0]), later, label="session two")
    await sync_to_async(api_token_revoke)(token=api_token[0])
    await raising.wait()
    await sync_to_async(api_token_revoke)(token=other[0])
    await later.wait()
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failed] == [
        "session one: the access-ended callback failed"
    ]


@watch_db
async def test_a_failing_check_is_logged_and_tried_again(
    fast_checks, watch, api_token, caplog
):
    failures = 0

    def database_down(execute, sql, params, many, context):
        nonlocal failures
        if failures < 2 and sql.startswith("SELECT"):  # the checks, not the revoke
            failures += 1
            raise OperationalError("the database is down")
        return execute(sql, params, many, context)

    # The watch's queries run in asgiref's database thread: break that connection.
    def break_database(broken: bool) -> None:
        if broken:
            connection.execute_wrappers.append(database_down)
        else:
            connection.execute_wrappers.remove(database_down)

    await sync_to_async(break_database)(True)
    calls = Calls()
    watch.watch(token_grant(api_token[0]), calls)
    try:
        await sync_to_async(api_token_revoke)(token=api_token[0])
        await calls.wait()
    finally:
        await sync_to_async(break_database)(False)
    assert failures == 2
    assert calls.reasons == [AccessEnded.REVOKED]
    away = "access check of 1 grants: database unavailable (OperationalError)"
    assert sum(away in m for m in caplog.messages) == 2


@watch_db
async def test_the_task_runs_only_while_something_is_watched(watch, api_token):
    grant = token_grant(api_token[0])
    assert not watch.running
    first = watch.watch(grant, Calls())
    second = watch.watch(grant, Calls())
    assert watch.running
    assert len(live_watch_tasks()) == 1  # one task, whatever the number of watches
    first.cancel()
    assert watch.running
    second.cancel()
    second.cancel()  # harmless
    assert not watch.running
    await asyncio.sleep(0)  # the cancelled task finishes
    assert live_watch_tasks() == []
    watch.watch(grant, Calls())
    assert watch.running


async def test_access_watch_is_one_per_event_loop():
    mine = access_watch()
    assert access_watch() is mine
    theirs: list[AccessWatch] = []

    async def other_loop() -> None:
        theirs.append(access_watch())

    thread = threading.Thread(target=asyncio.run, args=(other_loop(),))
    thread.start()
    thread.join()
    assert theirs[0] is not mine
