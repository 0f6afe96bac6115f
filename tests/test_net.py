import socket
import time

from cnnvit.net import offline_reason, unreachable


def test_offline_reason_names_the_variable(monkeypatch):
    for var in ("CNNVIT_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    assert offline_reason() is None
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
    assert offline_reason() == "TRANSFORMERS_OFFLINE"


def test_listening_host_is_reachable_and_closed_port_is_not():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert unreachable(f"http://127.0.0.1:{port}/x", 2.0) is None
    start = time.monotonic()
    assert isinstance(unreachable(f"http://127.0.0.1:{port}/x", 2.0), OSError)
    assert time.monotonic() - start < 2.5
    assert isinstance(unreachable("not a url", 1.0), OSError)
