"""Stopping `medpt serve` (a real `medpt serve` process): SIGTERM and Ctrl-C (SIGINT), idle, with streamed and whole
answers in flight (those that end within --shutdown_grace_s finish; the others end with an error event and
`data: [DONE]`, or a 503), a second Ctrl-C, and a signal while the model loads. Every path exits 0, prints
`medpt serve: stopped` last, and logs no traceback and no error."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

pytest.importorskip("fastapi")

from tests.servers import post  # noqa: E402

GRACE_S = 4  # long enough for a 24-token answer on a loaded CI machine, far too short for a 4,000-token one
SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}


class Served:
    """`medpt serve` in a subprocess: its URL, and everything it prints."""

    def __init__(self, run, *flags: str):
        command = [sys.executable, "-m", "medpt", "serve", "--adapter", str(run), "--port", "0", *flags]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        self.lines: list[str] = []
        self.url: str | None = None
        self.ready, self.loading = threading.Event(), threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith("medpt serve: loading"):
                self.loading.set()
            if "Uvicorn running on " in line:
                self.url = line.split("Uvicorn running on ")[1].split()[0]
                self.ready.set()

    def start(self) -> Served:
        assert self.ready.wait(180), "".join(self.lines)
        return self

    def stop(self, sig: int, timeout: float = 60) -> str:
        """Send `sig`; the process's exit status and its whole output."""
        self.process.send_signal(sig)
        return self.finish(timeout)

    def finish(self, timeout: float = 60) -> str:
        try:
            self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        time.sleep(0.2)  # the reader thread takes the last lines
        return "".join(self.lines)


def assert_clean_stop(process: subprocess.Popen, output: str) -> None:
    assert process.returncode == 0, output
    assert output.rstrip().endswith("medpt serve: stopped"), output
    for bad in ("Traceback", "Exception in ASGI application", "ERROR", "CancelledError"):
        assert bad not in output, output


@pytest.fixture
def eos_banned(trained_run) -> dict:
    """logit_bias that bans the end of text: an answer runs to max_tokens (the server is another process)."""
    from medpt.model.loading import load_tokenizer

    return {str(load_tokenizer(str(trained_run)).eos_token_id): -100}


@pytest.mark.parametrize("name", list(SIGNALS))
def test_an_idle_server_stops_cleanly(trained_run, name):
    served = Served(trained_run).start()
    assert post(served.url + "/health", b"", method="GET")[0] == 200
    assert_clean_stop(served.process, served.stop(SIGNALS[name]))


def streamed(url: str, body: dict, out: dict, key: str, started: threading.Event) -> None:
    """A streamed completion's events, and when each came."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    connection.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                       {"Content-Type": "application/json"})  # fmt: skip
    events, times = [], []
    for line in connection.getresponse():
        if line.startswith(b"data: "):
            events.append(line[6:].strip())
            times.append(time.monotonic())
            started.set()
    out[key], out[key + " times"] = events, times


def whole(url: str, body: dict, out: dict, key: str) -> None:
    out[key] = post(url + "/v1/completions", body)


@pytest.mark.parametrize("name", list(SIGNALS))
def test_answers_in_flight_finish_within_the_grace_period_and_the_rest_are_ended(trained_run, tiny_model_dir,
                                                                                eos_banned, name):  # fmt: skip
    served = Served(trained_run, "--shutdown_grace_s", str(GRACE_S)).start()
    ask = {"model": tiny_model_dir.name, "prompt": "问:头痛\n答:", "logit_bias": eos_banned, "temperature": 0}
    short, long = {**ask, "max_tokens": 24}, {**ask, "max_tokens": 4000}
    out: dict = {}
    started = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=whole, args=(served.url, short, out, "short whole")),
               threading.Thread(target=whole, args=(served.url, long, out, "long whole")),
               threading.Thread(target=streamed, args=(served.url, short, out, "short stream", started[0])),
               threading.Thread(target=streamed, args=(served.url, long, out, "long stream", started[1]))]  # fmt: skip
    for t in threads:
        t.start()
        time.sleep(0.1)  # in this order
    assert all(e.wait(60) for e in started)
    signalled = time.monotonic()
    served.process.send_signal(SIGNALS[name])
    time.sleep(0.5)
    with pytest.raises(OSError):  # no new connections once stopping
        post(served.url + "/health", b"", method="GET")
    for t in threads:
        t.join(60)
    assert_clean_stop(served.process, served.finish())
    # within the grace period: the answers ran to their end
    assert out["short whole"][0] == 200 and out["short whole"][1]["usage"]["completion_tokens"] == 24
    events = out["short stream"]
    assert events[-1] == b"[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
    assert out["short stream times"][-1] > signalled  # it was still being written when the signal came
    # past it: an error the client can read
    status, reply = out["long whole"]
    assert status == 503 and reply["error"]["code"] == "shutting_down", reply
    events = out["long stream"]
    assert events[-1] == b"[DONE]" and json.loads(events[-2])["error"]["code"] == "shutting_down"
    assert all(json.loads(e)["choices"][0]["finish_reason"] is None for e in events[:-2])


@pytest.mark.parametrize("signals", [2, 3], ids=["second signal", "third signal"])
def test_more_signals_stop_sooner_without_a_traceback(trained_run, tiny_model_dir, eos_banned, signals):
    """A second Ctrl-C ends the answers in flight at once instead of after the grace period (10 s by default); a
    third exits without waiting for anything (uvicorn cancels what still runs). Either way the stream ends with an
    error event and [DONE], and nothing is logged as an error."""
    served = Served(trained_run).start()
    ask = {"model": tiny_model_dir.name, "prompt": "问:头痛\n答:", "logit_bias": eos_banned, "max_tokens": 4000}
    out: dict = {}
    started = threading.Event()
    stream = threading.Thread(target=streamed, args=(served.url, ask, out, "stream", started))
    stream.start()
    assert started.wait(60)
    first = time.monotonic()
    for _ in range(signals):
        served.process.send_signal(signal.SIGINT)
        time.sleep(0.3 if signals == 2 else 0.02)
    stream.join(60)
    assert out["stream times"][-1] - first < 5  # well before the 10 s grace period
    assert out["stream"][-1] == b"[DONE]" and json.loads(out["stream"][-2])["error"]["code"] == "shutting_down"
    assert_clean_stop(served.process, served.finish())


@pytest.mark.parametrize("name", list(SIGNALS))
def test_a_signal_while_the_model_loads_stops_cleanly(trained_run, name):
    served = Served(trained_run)
    assert served.loading.wait(180), "".join(served.lines)
    assert_clean_stop(served.process, served.stop(SIGNALS[name]))
