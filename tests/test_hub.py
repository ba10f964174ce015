"""Hub access goes where HF_ENDPOINT says (a mirror), and errors say what to do. A local HTTP server plays the hub."""

import http.server
import os
import subprocess
import sys
import threading

import pytest

from medpt.samples import SAMPLE_QA


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server standing in for the hub (every repository missing); yields (env, paths asked for)."""
    seen = []

    class Mirror(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            seen.append(self.path)
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Error-Code", "RepoNotFound")
            self.end_headers()
            self.wfile.write(b'{"error": "Repository not found"}')

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}", HF_HOME=str(tmp_path / "hf"))
    try:
        yield env, seen
    finally:
        server.shutdown()


def test_download_asks_the_mirror_named_by_hf_endpoint(mirror):
    env, seen = mirror
    run = subprocess.run([sys.executable, "-m", "medpt", "download", "someone/some-model"],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert run.returncode == 2
    assert any("someone/some-model" in path for path in seen), seen
    assert f"{env['HF_ENDPOINT'].removeprefix('http://')}" in run.stderr and "someone/some-model" in run.stderr


def test_offline_flag_keeps_train_off_the_network(mirror, tmp_path):
    env, seen = mirror
    argv = [
        sys.executable,
        "-m",
        "medpt",
        "train",
        "--offline",
        "--model_name_or_path",
        "someone/some-model",
        "--train_file_dir",
        str(SAMPLE_QA),
        "--learning_rate",
        "1e-4",
        "--output_dir",
        str(tmp_path / "run"),
    ]
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert run.returncode == 2 and "someone/some-model" in run.stderr
    assert seen == []  # not one request, although HF_ENDPOINT points at a live server


def test_offline_mode_fails_fast_with_advice(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run([sys.executable, "-m", "medpt", "download", "someone/some-model"],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert run.returncode == 2 and "HF_HUB_OFFLINE" in run.stderr and "HF_ENDPOINT" in run.stderr
