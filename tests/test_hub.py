"""Hub access goes where HF_ENDPOINT says (a mirror), and errors say what to do. A local HTTP server plays the hub."""

import http.server
import os
import subprocess
import sys
import threading


def test_download_asks_the_mirror_named_by_hf_endpoint(tmp_path):
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
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB_OFFLINE")}
        env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}", HF_HOME=str(tmp_path / "hf"))
        run = subprocess.run([sys.executable, "-m", "medpt", "download", "someone/some-model"],
                             capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    finally:
        server.shutdown()
    assert run.returncode == 2
    assert any("someone/some-model" in path for path in seen), seen
    assert f"127.0.0.1:{server.server_port}" in run.stderr and "someone/some-model" in run.stderr


def test_offline_mode_fails_fast_with_advice(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run([sys.executable, "-m", "medpt", "download", "someone/some-model"],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert run.returncode == 2 and "HF_HUB_OFFLINE" in run.stderr and "HF_ENDPOINT" in run.stderr
