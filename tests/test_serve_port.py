"""`medpt serve` checks that it can listen on --host/--port before it loads anything: a busy port, an unknown host
or another machine's address is one line and exit 2, in a second, not an exit 3 after the model has loaded."""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from medpt.cli import main  # noqa: E402


@pytest.fixture
def loaded(monkeypatch):
    """Records whether serve got as far as loading the run (it must not, when the port is unusable)."""
    calls = []

    def build(config, log=print):
        calls.append(config)
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("medpt.serve.server.build", build)
    return calls


def _listening(host: str, family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen()
    return sock


@pytest.mark.parametrize("host, family", [("127.0.0.1", socket.AF_INET), ("0.0.0.0", socket.AF_INET)])
def test_a_busy_port_is_one_line_before_anything_loads(tiny_model_dir, loaded, capsys, host, family):
    from tests.test_safety import one_line_error

    with _listening("127.0.0.1", family) as taken:  # a listener on the loopback blocks the wildcard address too
        port = taken.getsockname()[1]
        assert main(["serve", "--model_name_or_path", str(tiny_model_dir), "--host", host, "--port", str(port)]) == 2
    line = one_line_error(capsys, f"port {port} on {host} is in use", "--port 0 picks one")
    assert line.startswith("medpt: error: ") and loaded == []


def test_a_busy_ipv6_port_is_one_line(tiny_model_dir, loaded, capsys):
    from tests.test_safety import one_line_error

    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        taken = _listening("::1", socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with taken:
        port = taken.getsockname()[1]
        assert main(["serve", "--model_name_or_path", str(tiny_model_dir), "--host", "::1", "--port", str(port)]) == 2
    one_line_error(capsys, f"port {port} on ::1 is in use")
    assert loaded == []


@pytest.mark.parametrize(
    "host, needle",
    [
        ("no-such-host.invalid", "--host no-such-host.invalid: no such host"),
        ("192.0.2.1", "--host 192.0.2.1 is not an address of this machine"),  # TEST-NET-1: never assigned
    ],
)
def test_a_host_that_cannot_be_listened_on_is_one_line(tiny_model_dir, loaded, capsys, host, needle):
    from tests.test_safety import one_line_error

    assert main(["serve", "--model_name_or_path", str(tiny_model_dir), "--host", host, "--port", "8765"]) == 2
    one_line_error(capsys, needle)
    assert loaded == []


def test_a_free_port_goes_on_to_load_the_run(tiny_model_dir, loaded):
    with _listening("127.0.0.1") as probe:
        port = probe.getsockname()[1]
    # the port is free again (closed); the check lets it through and serve loads the run (stopped here)
    with pytest.raises(AssertionError, match="the model was loaded"):
        main(["serve", "--model_name_or_path", str(tiny_model_dir), "--port", str(port)])
    assert len(loaded) == 1
