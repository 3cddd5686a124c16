"""The in-memory counter of failed authentications per address."""

import logging
import threading

from hypothesis import given
from hypothesis import strategies as st

from accounts.throttle import FailureCounter, address_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_over_the_limit_once_it_has_had_limit_failures_until_the_window_ends():
    clock = Clock()
    counter = FailureCounter(window_seconds=60, clock=clock)
    assert [counter.charge("203.0.113.7", limit=3).over_limit for _ in range(4)] == [
        False,
        False,
        False,
        True,
    ]
    assert not counter.charge("203.0.113.8", limit=3).over_limit
    clock.now += 59.9
    assert counter.charge("203.0.113.7", limit=3).over_limit
    clock.now += 0.1
    assert not counter.charge("203.0.113.7", limit=3).over_limit  # a new window
    assert counter.failures("203.0.113.7") == 1


def test_an_attempt_that_succeeds_is_no_failure():
    counter = FailureCounter()
    for _ in range(5):
        counter.succeeded(counter.charge("203.0.113.7", limit=2))
    assert counter.failures("203.0.113.7") == 0
    assert counter.tracked() == 0  # an address without failures is not kept
    counter.charge("203.0.113.7", limit=2)
    counter.charge("203.0.113.7", limit=2)
    valid = counter.charge("203.0.113.7", limit=2)
    assert valid.over_limit  # it shares the address with two failures…
    counter.succeeded(valid)  # …and gives its own charge back, not theirs
    assert counter.failures("203.0.113.7") == 2


def test_a_success_after_its_window_ended_leaves_the_next_window_alone():
    clock = Clock()
    counter = FailureCounter(window_seconds=60, clock=clock)
    late = counter.charge("203.0.113.7", limit=5)
    clock.now += 61
    counter.charge("203.0.113.7", limit=5)
    counter.succeeded(late)
    assert counter.failures("203.0.113.7") == 1


def test_check_and_count_are_one_step_under_concurrency():
    """200 attempts at once from one address: exactly `limit` are within it."""
    counter = FailureCounter()
    start = threading.Barrier(200)
    within: list[bool] = []

    def attempt():
        start.wait()
        within.append(not counter.charge("203.0.113.7", limit=20).over_limit)

    threads = [threading.Thread(target=attempt) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert within.count(True) == 20
    assert counter.failures("203.0.113.7") == 200


def test_refusals_are_logged_at_powers_of_two_per_window(caplog):
    clock = Clock()
    counter = FailureCounter(window_seconds=60, clock=clock)
    with caplog.at_level(logging.WARNING, logger="accounts.throttle"):
        for _ in range(50):
            counter.refused(counter.charge("203.0.113.7", limit=0), limit=0)
        clock.now += 60
        counter.refused(counter.charge("203.0.113.7", limit=0), limit=0)
    # 1, 2, 4, 8, 16, 32 of the first window; 1 of the next.
    assert len(caplog.records) == 7
    assert "32 of them refused" in caplog.records[5].getMessage()
    assert all("203.0.113.7" in r.getMessage() for r in caplog.records)


def test_ipv6_addresses_count_per_64():
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2::ffff")
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("203.0.113.7") == "203.0.113.7"
    assert address_key("unknown") == "unknown"
    counter = FailureCounter()
    counter.charge("2001:db8::1", limit=1)
    assert counter.charge("2001:db8::2", limit=1).over_limit


@given(st.lists(st.ip_addresses().map(str), max_size=300))
def test_memory_is_bounded_whatever_the_addresses(addresses):
    counter = FailureCounter(max_addresses=50)
    for address in addresses:
        counter.charge(address, limit=1)
        assert counter.tracked() <= 50
    if addresses:  # the most recent attempt is never the one forgotten
        assert counter.charge(addresses[-1], limit=1).over_limit
