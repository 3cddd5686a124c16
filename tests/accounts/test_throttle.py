"""The in-memory counter of failed authentications per address."""

import logging

from hypothesis import given
from hypothesis import strategies as st

from accounts.throttle import FailureCounter, address_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_refuses_at_the_limit_until_the_window_ends():
    clock = Clock()
    counter = FailureCounter(window_seconds=60, clock=clock)
    for _ in range(4):
        counter.record_failure("203.0.113.7")
    assert not counter.refuses("203.0.113.7", limit=5)
    counter.record_failure("203.0.113.7")
    assert counter.refuses("203.0.113.7", limit=5)
    assert not counter.refuses("203.0.113.8", limit=5)
    clock.now += 59.9
    assert counter.refuses("203.0.113.7", limit=5)
    clock.now += 0.1
    assert not counter.refuses("203.0.113.7", limit=5)
    counter.record_failure("203.0.113.7")  # a new window: one failure so far
    assert not counter.refuses("203.0.113.7", limit=2)


def test_one_warning_per_address_and_window(caplog):
    clock = Clock()
    counter = FailureCounter(window_seconds=60, clock=clock)
    counter.record_failure("203.0.113.7")
    with caplog.at_level(logging.WARNING, logger="accounts.throttle"):
        for _ in range(50):
            assert counter.refuses("203.0.113.7", limit=1)
        clock.now += 60
        counter.record_failure("203.0.113.7")
        assert counter.refuses("203.0.113.7", limit=1)
    assert len(caplog.records) == 2


def test_ipv6_addresses_count_per_64():
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2::ffff")
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("203.0.113.7") == "203.0.113.7"
    assert address_key("unknown") == "unknown"
    counter = FailureCounter()
    counter.record_failure("2001:db8::1")
    assert counter.refuses("2001:db8::2", limit=1)


@given(st.lists(st.ip_addresses().map(str), max_size=300))
def test_memory_is_bounded_whatever_the_addresses(addresses):
    counter = FailureCounter(max_addresses=50)
    for address in addresses:
        counter.record_failure(address)
        assert counter.tracked() <= 50
    if addresses:  # the most recent failure is never the one forgotten
        assert counter.refuses(addresses[-1], limit=1)
