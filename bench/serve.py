"""Serving speed: aggregate tokens/s and time to first token at 1, 4, 8 and 16 concurrent streaming clients, for
`medpt serve` (each batching mode) and, given a GGUF, llama.cpp's server on the same prompts.

    python bench/serve.py [--adapter RUN] [--clients 1 4 8 16] [--batching continuous dynamic] [--max_tokens 64]
                          [--llamacpp_gguf model.gguf]

Without --adapter it builds the tiny 25m model (`medpt.model.init_tiny.init_tiny`) and a short LoRA run on the bundled
sample in --work_dir, once. Every client sends --requests_per_client streaming /v1/completions requests one after
another:
the bundled comparison questions in the training template (问:{q}\\n答:), greedy, --max_tokens tokens each (the
special tokens, end-of-text among them, are banned with logit_bias: every answer has the same length on every server,
and every token is text the client sees). tokens/s is all
clients' tokens over the level's wall time; TTFT is from sending a request to its first text.

llama.cpp: `python -m llama_cpp.server` from llama-cpp-python[server] (skipped, with a message, when not installed).
The GGUF must hold the same tokenizer (`medpt export`), so that the banned ids are the same tokens.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from measure import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", help="a medpt LoRA run; default: build the tiny 25m model and a short run")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--batching", nargs="*", default=["continuous", "dynamic"], help="none: only llama.cpp")
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--requests_per_client", type=int, default=3)
    parser.add_argument("--server_flags", default="", help="more `medpt serve` flags, e.g. '--num_threads 2'")
    parser.add_argument("--llamacpp_gguf", help="also measure llama.cpp's server on this GGUF")
    parser.add_argument("--work_dir", default="bench/results/serve")
    args = parser.parse_args()

    work = Path(args.work_dir)
    gguf = llamacpp_ready(args.llamacpp_gguf)
    run = Path(args.adapter) if args.adapter else tiny_run(work)
    prompts, banned, model_id = workload(run)
    results = []
    for batching in args.batching:
        command = [sys.executable, "-m", "medpt", "serve", "--adapter", str(run), "--port", "0", "--batching",
                   batching, *args.server_flags.split()]  # fmt: skip
        with server(command, "Uvicorn running on ") as url:
            results += measure(f"medpt serve, {batching}", url, model_id, prompts, banned, args)
    if gguf is not None:
        results += llamacpp(gguf, prompts, banned, args)
    report(results, args, work)


# --- the workload -------------------------------------------------------------------------------------------------
def tiny_run(work: Path, size: str = "25m") -> Path:
    """The tiny model (25m unless told) and a 20-step LoRA run on the bundled sample, built once."""
    from medpt.cli import main as medpt
    from medpt.data.pipeline import read_texts
    from medpt.model.init_tiny import init_tiny
    from medpt.samples import SAMPLE_QA

    model, run = work / f"tiny-{size}", work / "run"
    if not (model / "medpt_tiny.json").is_file():
        init_tiny(model, size, read_texts([str(SAMPLE_QA)]), seed=0)
    if not (run / "adapter_model.safetensors").is_file():
        argv = ["train", "--model_name_or_path", str(model), "--train_file_dir", str(SAMPLE_QA), "--block_size", "128",
                "--per_device_train_batch_size", "8", "--max_steps", "20", "--learning_rate", "2e-3",
                "--output_dir", str(run), "--overwrite_output_dir", "--report_to", "none", "--save_strategy", "no",
                "--plot", "false", "--disable_tqdm", "true", "--data_cache_dir", str(work / "cache")]  # fmt: skip
        assert medpt(argv) == 0
    return run


def workload(run: Path) -> tuple[list[int], list[str], str]:
    """The prompts (the bundled questions in the training template), the special token ids, the adapter's id."""
    from medpt.model.loading import load_tokenizer
    from medpt.samples import SAMPLE_QUESTIONS

    lines = Path(SAMPLE_QUESTIONS).read_text(encoding="utf-8").splitlines()
    prompts = [f"问:{json.loads(line)['question']}\n答:" for line in lines if line.strip()]
    return prompts, load_tokenizer(str(run)).all_special_ids, run.resolve().name


class server:
    """A server in a subprocess: the URL once it is up; stopped with Ctrl-C (SIGINT) at the end."""

    def __init__(self, command: list[str], ready: str, url: str | None = None):
        self.command, self.ready, self.url = command, ready, url

    def __enter__(self) -> str:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=env)  # fmt: skip
        for line in self.process.stdout:
            if self.ready in line:
                self.url = self.url or line.split(self.ready)[1].split()[0]
                break
        else:
            raise SystemExit(f"the server did not start: {' '.join(self.command)}")
        threading.Thread(target=self.process.stdout.read, daemon=True).start()  # keep its pipe from filling up
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- the load -----------------------------------------------------------------------------------------------------
def measure(server_name: str, url: str, model: str, prompts: list[str], banned: list[int], args: Any) -> list:
    one_request(url, request_body(model, prompts[0], banned, args))  # warm-up: first-call allocations, lazy imports
    rows = []
    for clients in args.clients:
        timings: list[tuple[float, float, int]] = []
        lock = threading.Lock()

        def client(k: int) -> None:
            for r in range(args.requests_per_client):
                timing = one_request(url, request_body(model, prompts[(k + r) % len(prompts)], banned, args))
                with lock:
                    timings.append(timing)

        start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        rows.append(summary(server_name, clients, timings, wall))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def request_body(model: str, prompt: str, banned: list[int], args: Any) -> dict:
    return {"model": model, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "logit_bias": {str(t): -100 for t in banned}}  # fmt: skip


def one_request(url: str, body: dict) -> tuple[float, float, int]:
    """(time to first text, total time, tokens) of one streaming completion."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    start = time.perf_counter()
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise SystemExit(f"{url}: HTTP {response.status}: {response.read()[:300]!r}")
    first, pieces, usage = None, 0, None
    for line in response:
        if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
            continue
        chunk = json.loads(line[5:])
        if chunk.get("usage"):
            usage = chunk["usage"]["completion_tokens"]
        if chunk.get("choices") and chunk["choices"][0].get("text"):
            first = first or time.perf_counter() - start
            pieces += 1
    connection.close()
    return first or 0.0, time.perf_counter() - start, usage or pieces  # a server without usage streams a token a chunk


def summary(server_name: str, clients: int, timings: list[tuple[float, float, int]], wall: float) -> dict:
    ttft = sorted(t[0] for t in timings)
    return {
        "server": server_name,
        "clients": clients,
        "requests": len(timings),
        "tokens": sum(t[2] for t in timings),
        "tokens_per_s": sum(t[2] for t in timings) / wall,
        "ttft_p50_ms": 1000 * statistics.median(ttft),
        "ttft_p95_ms": 1000 * ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))],
        "latency_p50_s": statistics.median(t[1] for t in timings),
    }


# --- llama.cpp ----------------------------------------------------------------------------------------------------
def llamacpp_ready(gguf: str | None) -> Path | None:
    """The GGUF to serve with llama.cpp, or None (not asked, or llama-cpp-python's server is not installed)."""
    if gguf is None:
        return None
    if not Path(gguf).is_file():
        raise SystemExit(f"--llamacpp_gguf {gguf}: no such file")
    # llama_cpp.server imports its extra's packages (starlette_context, sse_starlette, ...) only when it starts
    check = subprocess.run([sys.executable, "-c", "import llama_cpp.server.app"], capture_output=True, text=True)
    if check.returncode != 0:
        reason = (check.stderr.strip().splitlines() or ["?"])[-1]
        print(f"llama.cpp: skipped, its server does not import ({reason}): pip install 'llama-cpp-python[server]'")
        return None
    return Path(gguf)


def llamacpp(gguf: Path, prompts: list[str], banned: list[int], args: Any) -> list:
    port = free_port()
    threads = str(max(1, (os.cpu_count() or 2) - 1))  # as medpt serve: leave a core to the HTTP side
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port",
               str(port), "--n_ctx", "4096", "--n_threads", threads,
               # its default lets every new request cancel the one running (the answer ends after a few tokens);
               # llama-cpp-python's server then serves requests one at a time, in arrival order
               "--interrupt_requests", "False"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with server(command, "Uvicorn running on ", url):
        with urllib.request.urlopen(url + "/v1/models", timeout=60) as response:
            model = json.loads(response.read())["data"][0]["id"]
        return measure("llama.cpp server", url, model, prompts, banned, args)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the table ----------------------------------------------------------------------------------------------------
def report(rows: list[dict], args: argparse.Namespace, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / "serve.json").write_text(json.dumps({"machine": machine(), "args": vars(args), "rows": rows}, indent=1))
    print(f"\n{machine()}; {args.max_tokens} tokens per answer, {args.requests_per_client} answers per client\n")
    print("| server | clients | tokens/s | × 1 client | TTFT p50 | TTFT p95 | latency p50 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        one = next(r for r in rows if r["server"] == row["server"] and r["clients"] == min(args.clients))
        print(f"| {row['server']} | {row['clients']} | {row['tokens_per_s']:.0f} | "
              f"{row['tokens_per_s'] / one['tokens_per_s']:.1f}× | {row['ttft_p50_ms']:.0f} ms | "
              f"{row['ttft_p95_ms']:.0f} ms | {row['latency_p50_s']:.2f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
