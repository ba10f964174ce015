"""Hub access goes where HF_ENDPOINT says (a mirror), and errors say what to do. A local HTTP server plays the hub."""

import http.server
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from medpt.model.hub import resolve_local
from medpt.model.loading import MODEL_FILES, TOKENIZER_FILES, TokenizerSource
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


# --- one resolution per command ------------------------------------------------------------------------------------
COMMIT = "0123456789abcdef0123456789abcdef01234567"

# Loaded by every Python process of the command (PYTHONPATH), spawned data workers included: logs each start and
# each snapshot_download call, one JSON line each, to the file $MEDPT_TEST_HUB_LOG.
SITECUSTOMIZE = """
import json, os, sys

def _log(**record):
    with open(os.environ["MEDPT_TEST_HUB_LOG"], "a") as f:
        f.write(json.dumps({"pid": os.getpid(), **record}) + "\\n")

_log(event="start", worker="--multiprocessing-fork" in sys.orig_argv)

import huggingface_hub

_real = huggingface_hub.snapshot_download

def snapshot_download(repo_id, **kwargs):
    _log(event="snapshot_download", repo_id=repo_id, allow_patterns=kwargs.get("allow_patterns"))
    return _real(repo_id, **kwargs)

huggingface_hub.snapshot_download = snapshot_download
"""


@pytest.fixture
def hub_home(tiny_model_dir, tmp_path):
    """HF_HOME holding the tiny model as huggingface_hub caches `org/tiny` (refs/main names the snapshot)."""
    home = tmp_path / "hf"
    repo = home / "hub" / "models--org--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return home


def test_train_with_a_hub_id_resolves_it_once_across_its_processes(hub_home, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    calls_log = tmp_path / "hub_calls.jsonl"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # Over 4 MiB (the pipeline's threshold for spawning workers), so the tokenizer loads in a worker process; the
    # copies are exact duplicates, dropped after reading, so only one copy is tokenized.
    (corpus / "qa.jsonl").write_bytes(SAMPLE_QA.read_bytes() * 30)
    env = {**os.environ, "HF_HOME": str(hub_home), "HF_HUB_OFFLINE": "1", "MEDPT_TEST_HUB_LOG": str(calls_log),
           "PYTHONPATH": os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
    argv = [sys.executable, "-m", "medpt", "train", "--model_name_or_path", "org/tiny", "--train_file_dir",
            str(corpus), "--preprocessing_num_workers", "2", "--block_size", "64", "--per_device_train_batch_size",
            "4", "--max_steps", "1", "--learning_rate", "1e-3", "--output_dir", str(tmp_path / "run"),
            "--data_cache_dir", str(tmp_path / "cache"), "--report_to", "none", "--disable_tqdm", "true", "--plot",
            "false", "--save_strategy", "no"]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in calls_log.read_text().splitlines()]
    assert sum(r["event"] == "start" and r["worker"] for r in records) == 2  # the worker path was exercised
    calls = [r for r in records if r["event"] == "snapshot_download"]
    parent = records[0]["pid"]
    # Two, in the parent only. The first request (model_facts, before anything else) fetches the model's files
    # (*.safetensors, *.json, *.model, *.txt, *.jinja, *.tiktoken): they cover every later request for the model (the
    # tokenizer's files with config.json, config.json alone, the weights to load and to fingerprint them). The worker
    # loads the tokenizer from the folder its parent resolved. The model card asks for README.md, which the model's
    # patterns do not select, so it must ask the hub. Each call is a hub round trip when online.
    assert [(c["pid"], c["repo_id"], c["allow_patterns"]) for c in calls] == [
        (parent, "org/tiny", MODEL_FILES),
        (parent, "org/tiny", ["README.md"]),
    ]


# --- the memo's rule: a request an earlier resolution covers asks nothing; anything else asks the hub -----------------
TOKENIZER = ["tokenizer.json", "tokenizer_config.json", "tokenizer.model", "merges.txt", "config.json"]


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """snapshot_download replaced by one that makes the snapshot folder (per cache and revision) and records
    each call's patterns."""
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, *, repo_type, revision, cache_dir, allow_patterns):
        calls.append(allow_patterns)
        home = Path(cache_dir or os.environ.get("HF_HOME") or tmp_path / "hf-default")
        folder = home / repo_id.replace("/", "--") / (revision or "main")
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-memo"))  # a key no other test resolved in this process
    return calls


def test_a_request_covered_by_an_earlier_one_asks_nothing(fake_hub):
    first = resolve_local("org/m", MODEL_FILES)
    assert resolve_local("org/m", TOKENIZER) == first  # literal names each matched by *.json, *.model, *.txt
    assert resolve_local("org/m", ["config.json"]) == first
    assert resolve_local("org/m", list(reversed(MODEL_FILES))) == first  # the same globs
    assert fake_hub == [MODEL_FILES]


def test_everything_covers_any_request(fake_hub):
    first = resolve_local("org/m", None)
    assert resolve_local("org/m", MODEL_FILES) == resolve_local("org/m", ["README.md"]) == first
    assert fake_hub == [None]


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        (TOKENIZER, MODEL_FILES),  # the weights after only the tokenizer (a superset)
        (MODEL_FILES, [*MODEL_FILES, "*.py"]),  # --trust_remote_code adds the model's code
        (MODEL_FILES, ["README.md"]),  # a literal no fetched glob matches
        (MODEL_FILES, None),  # everything
        (["*.safetensors"], ["model-*.safetensors"]),  # a glob within a glob: not judged, asked again
        (["sub/"], ["sub/*"]),
        (["config.json"], ["config.jso?"]),
    ],
)
def test_a_request_not_covered_asks_the_hub(fake_hub, earlier, later):
    resolve_local("org/m", earlier)
    resolve_local("org/m", later)
    assert fake_hub == [earlier, later]
    resolve_local("org/m", later)
    resolve_local("org/m", earlier)
    assert fake_hub == [earlier, later]  # both answers kept


def test_a_folder_pattern_covers_the_files_under_it(fake_hub):
    resolve_local("org/m", ["sub/"])
    resolve_local("org/m", ["sub/config.json", "sub/deeper/x.txt"])
    assert fake_hub == [["sub/"]]


@pytest.mark.parametrize(
    "change",
    [
        {"revision": "v2"},
        {"cache_dir": "other-cache"},
        {"env": ("HF_HOME", "other-home")},
        {"env": ("HF_HUB_CACHE", "other-hub-cache")},
        {"env": ("HF_ENDPOINT", "http://mirror.example")},
        {"env": ("HF_HUB_OFFLINE", "1")},
        {"offline": True},  # --offline sets huggingface_hub's own copy of the switch
        {"name": "org/other"},
    ],
)
def test_what_changes_the_answer_asks_again(fake_hub, monkeypatch, tmp_path, change):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    name, value = change.get("env", ("", ""))
    if name:
        monkeypatch.delenv(name, raising=False)  # (conftest sets HF_HUB_OFFLINE for every test)
    resolve_local("org/m", MODEL_FILES)
    if name:
        monkeypatch.setenv(name, str(tmp_path / value) if "other" in value else value)
    if change.get("offline"):
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache_dir = str(tmp_path / change["cache_dir"]) if "cache_dir" in change else None
    resolve_local(change.get("name", "org/m"), ["config.json"], change.get("revision"), cache_dir)
    assert fake_hub == [MODEL_FILES, ["config.json"]]


def test_a_vanished_snapshot_is_fetched_again(fake_hub):
    first = resolve_local("org/m", MODEL_FILES)
    shutil.rmtree(first)
    assert resolve_local("org/m", ["config.json"]) == first and first.is_dir()
    assert fake_hub == [MODEL_FILES, ["config.json"]]


def test_a_local_folder_never_asks_the_hub(fake_hub, tmp_path):
    assert resolve_local(str(tmp_path), MODEL_FILES) == tmp_path
    assert fake_hub == []


def test_a_tokenizer_source_carries_its_folder_to_another_process(fake_hub, monkeypatch):
    source = TokenizerSource("org/m")
    folder = source.local_dir()
    copy = pickle.loads(pickle.dumps(source))  # as sent to a spawned data worker, whose memo is empty
    monkeypatch.setenv("HF_ENDPOINT", "http://elsewhere.example")  # this process's memo would not serve it either
    assert copy.local_dir() == folder
    assert fake_hub == [[*TOKENIZER_FILES, "config.json"]]
