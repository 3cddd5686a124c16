"""voiceproject.server.install(): every patch, in its order, once."""

import importlib

import voiceproject.server
from voiceproject.server import (
    access_log,
    flow_control,
    relay_speedups,
    shutdown,
    websocket_protocol,
)
from voiceproject.server import install as install_server


async def _drain(seconds: float) -> None:
    pass


async def _stopped() -> None:
    pass


def _patched_classes():
    for path, attributes in voiceproject.server.PATCHED.items():
        module, _, name = path.rpartition(".")
        yield path, getattr(importlib.import_module(module), name), attributes


def test_install_applies_the_patches_in_order_and_only_once(monkeypatch):
    monkeypatch.setattr(voiceproject.server, "_installed", False)
    calls = []
    for module, name, step in [
        (websocket_protocol, "install_close_codes", "close codes"),
        (access_log, "install", "access log"),
        (flow_control, "install", "flow control"),
        (relay_speedups, "install", "relay speedups"),
    ]:
        monkeypatch.setattr(module, name, lambda step=step: calls.append(step))
    monkeypatch.setattr(
        shutdown,
        "install",
        lambda *, drain, stopped: calls.append(("shutdown", drain, stopped)),
    )
    install_server(drain=_drain, stopped=_stopped)
    install_server(drain=_drain, stopped=_stopped)
    assert calls == [
        "close codes",
        "access log",
        "flow control",
        ("shutdown", _drain, _stopped),
        "relay speedups",
    ]


def test_after_install_every_patched_attribute_is_ours():
    install_server(drain=_drain, stopped=_stopped)
    for path, cls, attributes in _patched_classes():
        for attribute in attributes:
            module = getattr(cls, attribute).__module__
            assert module.startswith("voiceproject.server."), f"{path}.{attribute}"


def test_a_second_install_changes_nothing(monkeypatch):
    install_server(drain=_drain, stopped=_stopped)
    before = {
        (cls, attribute): getattr(cls, attribute)
        for _, cls, attributes in _patched_classes()
        for attribute in attributes
    }
    # Even with install() told it has not run: each patch applies itself once.
    monkeypatch.setattr(voiceproject.server, "_installed", False)
    install_server(drain=_drain, stopped=_stopped)
    for (cls, attribute), value in before.items():
        assert getattr(cls, attribute) is value, f"{cls.__name__}.{attribute}"


def test_handle_reply_is_one_composition_over_daphnes_own():
    from daphne.ws_protocol import WebSocketProtocol

    install_server(drain=_drain, stopped=_stopped)
    assert WebSocketProtocol._close_codes_patched
    assert WebSocketProtocol._fast_path
    daphne_reply = websocket_protocol.ORIGINALS["handle_reply"]
    assert daphne_reply.__module__ == "daphne.ws_protocol"
    assert daphne_reply.__qualname__ == "WebSocketProtocol.handle_reply"
