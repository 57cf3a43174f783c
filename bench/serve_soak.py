"""Soak: `elmforge serve` under a steady mixed load for N minutes, leak and latency drift.

    .venv/bin/python bench/serve_soak.py [--minutes 10] [--clients 8] [--disconnect 0.1]

Builds a small random OpenELM (two layers of width 64, a BPE tokenizer trained on the built-in
corpus) in a temporary directory and starts a real `elmforge serve` process on 127.0.0.1. Each of
``--clients`` threads sends requests back to back (after a warm-up request of each endpoint) until the time is up, each one drawn at random:
completions or chat, streamed or not, 8-32 tokens; ``--disconnect`` of the streamed ones are
dropped by the client after their first chunks (a client going away mid-stream). The server's
resident memory (``/proc/PID/status`` VmRSS) is sampled every few seconds. Reports the memory at
the end of the first minute and at the end, its growth, p50/p99 latency of the requests that
finished in the first and in the last minute, the request count, and errors (anything but a
200 answer and a complete stream; a planned disconnect is no error): they must be 0, and after
the load the server must have no request left running or waiting. Writes
``bench/results/serve_soak.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, running_server, write_json

WORDS = ["the", "cat", "dog", "sun", "moon", "tree", "river", "stone", "bird", "fish", "apple"]


def build_model(directory: Path) -> None:
    import torch

    from elmforge import OpenELMConfig, OpenELMForCausalLM
    from elmforge.data.sources import iter_texts
    from elmforge.data.tokenizer import train_bpe_tokenizer

    texts = list(itertools.islice(iter_texts({"name": "builtin:python-docs"}, "train"), 200))
    tokenizer = train_bpe_tokenizer(texts, 512, directory / "tokenizer")
    torch.manual_seed(0)
    config = OpenELMConfig.from_name(
        "OpenELM-tiny", num_transformer_layers=2, model_dim=64, head_dim=16, ffn_dim_divisor=32,
        vocab_size=len(tokenizer), max_context_length=128, rope_max_length=256,
    )  # fmt: skip
    OpenELMForCausalLM(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Load:
    """The clients' shared record: (finish time, latency s, kind) per request, and errors."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: list[tuple[float, float, str]] = []
        self.errors: list[str] = []
        self.disconnects = 0

    def client(self, url: str, stop_at: float, seed: int, disconnect: float) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=300) as http:
            while time.monotonic() < stop_at:
                chat, stream = rng.random() < 0.5, rng.random() < 0.5
                words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
                body: dict = {"max_tokens": rng.randint(8, 32), "temperature": 0.7,
                              "seed": rng.randrange(2**31), "stream": stream}  # fmt: skip
                if chat:
                    body["messages"] = [{"role": "user", "content": words}]
                else:
                    body["prompt"] = words
                drop = stream and rng.random() < disconnect
                kind = ("chat" if chat else "completion") + (" stream" if stream else "")
                started = time.monotonic()
                try:
                    ok = self._request(http, chat, body, drop)
                except httpx.HTTPError as err:
                    ok = f"{type(err).__name__}: {err}"
                with self.lock:
                    if ok is True:
                        self.done.append((time.monotonic(), time.monotonic() - started, kind))
                    elif ok == "dropped":
                        self.disconnects += 1
                    else:
                        self.errors.append(f"{kind}: {ok}")

    @staticmethod
    def _request(http: httpx.Client, chat: bool, body: dict, drop: bool) -> bool | str:
        path = "/v1/chat/completions" if chat else "/v1/completions"
        if not body["stream"]:
            response = http.post(path, json=body)
            if response.status_code != 200:
                return f"HTTP {response.status_code}: {response.text[:200]}"
            return True if response.json()["choices"] else "no choices"
        with http.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                return f"HTTP {response.status_code}"
            chunks = 0
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    return True
                json.loads(line[6:])
                chunks += 1
                if drop and chunks == 2:
                    return "dropped"  # leaving the with-block closes the connection mid-stream
        return "the stream ended without [DONE]"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load (10)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (8)")
    parser.add_argument("--disconnect", type=float, default=0.1,
                        help="share of streamed requests dropped mid-stream (0.1)")  # fmt: skip
    parser.add_argument("--out", help="JSON path (bench/results/serve_soak.json)")
    args = parser.parse_args()
    window = min(60.0, args.minutes * 60 / 3)  # "first/last minute" (shorter for short runs)

    with tempfile.TemporaryDirectory(prefix="elmforge-soak-") as tmp:
        model = Path(tmp) / "model"
        build_model(model)
        command = [sys.executable, "-m", "elmforge.cli.main", "serve", str(model), "--port", "0",
                   "--max-batch", str(args.clients)]  # fmt: skip
        with running_server(command, Path(tmp) / "serve.log") as (process, url):
            # Warm-up outside the clock: the first requests build kernels and caches.
            for path, body in (("/v1/completions", {"prompt": "the cat"}),
                               ("/v1/chat/completions", {"messages": [{"role": "user",
                                                                       "content": "hi"}]})):  # fmt: skip
                httpx.post(f"{url}{path}", json={**body, "max_tokens": 4}, timeout=600)
            load = Load()
            start = time.monotonic()
            stop_at = start + args.minutes * 60
            threads = [threading.Thread(target=load.client,
                                        args=(url, stop_at, seed, args.disconnect))
                       for seed in range(args.clients)]  # fmt: skip
            for thread in threads:
                thread.start()
            memory: list[tuple[float, float]] = []
            while any(t.is_alive() for t in threads):
                memory.append((time.monotonic() - start, resident_mib(process.pid)))
                time.sleep(5)
            for thread in threads:
                thread.join()
            time.sleep(2)  # the server sees the last disconnects
            health = httpx.get(f"{url}/health", timeout=30).json()
            memory.append((time.monotonic() - start, resident_mib(process.pid)))
            log = (Path(tmp) / "serve.log").read_text(errors="replace")

    elapsed = max(t for t, _ in memory)
    first = [lat for at, lat, _ in load.done if at - start <= window]
    last = [lat for at, lat, _ in load.done if at - start >= args.minutes * 60 - window]
    warm = [mib for t, mib in memory if t <= window][-1]
    end = memory[-1][1]
    tracebacks = log.count("Traceback")
    rows = [
        {"measure": "requests completed", "value": len(load.done)},
        {"measure": "client disconnects mid-stream", "value": load.disconnects},
        {"measure": "errors", "value": len(load.errors) + tracebacks},
        {"measure": "left running/waiting", "value": health["running"] + health["waiting"]},
        {"measure": f"RSS after {window:.0f} s (MiB)", "value": warm},
        {"measure": "RSS at the end (MiB)", "value": end},
        {"measure": "RSS growth (MiB)", "value": end - warm},
        {"measure": f"p50 latency, first {window:.0f} s (s)", "value": percentile(first, 0.5)},
        {"measure": f"p99 latency, first {window:.0f} s (s)", "value": percentile(first, 0.99)},
        {"measure": f"p50 latency, last {window:.0f} s (s)", "value": percentile(last, 0.5)},
        {"measure": f"p99 latency, last {window:.0f} s (s)", "value": percentile(last, 0.99)},
    ]
    print(f"\nelmforge serve soak: {args.clients} clients, {elapsed / 60:.1f} min")
    print_table(rows, ["measure", "value"])
    for error in load.errors[:10]:
        print("error:", error)
    payload = {
        "settings": vars(args) | {"window_s": window},
        "results": {row["measure"]: row["value"] for row in rows},
        "by_kind": {
            kind: len([1 for *_, k in load.done if k == kind])
            for kind in sorted({k for *_, k in load.done})
        },
        "memory_mib": memory,
        "errors": load.errors,
        "mean_latency_s": statistics.fmean(lat for _, lat, _ in load.done) if load.done else None,
    }
    print(f"wrote {write_json('serve_soak', payload, args.out)}")
    if load.errors or tracebacks or health["running"] + health["waiting"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
