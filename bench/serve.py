"""Serving against llama.cpp's own `llama-server` (and mlx-lm's server where it runs) on the same
weights, the same threads and the same requests, in one run.

    .venv/bin/python bench/serve.py [--levels 1,4,8,16] [--tokens 32] [--threads 2]

Builds OpenELM-270M's shape with random weights (seed 0; speed does not depend on the weights)
and LLaMA-2's tokenizer in a work directory, exports it with `elmforge convert hf-to-gguf --type
f32` for llama-server (built once by ``bench/llama_server.py``) and starts every server on
127.0.0.1 (llama-server with ``-np`` slots = the largest level, ``-t`` = ``--threads``; elmforge
with the same thread count). Measures, engine after engine within each scenario (the order
alternating), streamed greedy `/v1/completions` with ``ignore_eos``:

- **levels**: at 1/4/8/16 concurrent clients, each sending ``--requests`` unique prompts of about
  100 tokens one after another: aggregate generated tokens/s, p50/p95 time to first token;
- **repeat**: one prompt sent twice, one after the other: TTFT of the second (prefix reuse);
- **system**: a shared 1,000-token system prompt before a unique question, 4 requests in turn:
  TTFT of the first and the mean of the later ones (their ratio);
- **long prompt**: 4 streams decoding while a 1,500-token prompt arrives: their median
  inter-token gap and the longest gap while it is read.

Targets (issue 20) are checked and printed. Writes ``bench/results/serve.json`` and ``serve.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, print_table, running_server, write_json
from llama_server import llama_server_binary

WORDS = ["the", "cat", "dog", "sun", "moon", "tree", "river", "stone", "bird", "fish", "apple",
         "house", "green", "quick", "slow", "water", "light", "night", "small", "over"]  # fmt: skip


def build_model(directory: Path, variant: str, tokenizer_path: Path) -> None:
    import torch

    from elmforge import OpenELMConfig, OpenELMForCausalLM
    from elmforge.data.tokenizer import sentencepiece_to_fast

    torch.manual_seed(0)
    OpenELMForCausalLM(OpenELMConfig.from_name(variant)).eval().save_pretrained(directory)
    sentencepiece_to_fast(tokenizer_path).save_pretrained(directory)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def one_request(url: str, model: str, prompt: str, tokens: int) -> dict:
    """One streamed greedy completion: time to first token, tokens, arrival times."""
    body = {
        "model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    started = time.perf_counter()
    arrivals: list[float] = []
    usage = None
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=900) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            usage = chunk.get("usage") or usage
            if any(choice.get("text") for choice in chunk.get("choices", [])):
                arrivals.append(time.perf_counter())
    generated = (usage or {}).get("completion_tokens") or len(arrivals)
    ttft = arrivals[0] - started if arrivals else float("nan")
    return {"started": started, "ttft": ttft, "tokens": generated, "arrivals": arrivals}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_level(url: str, model: str, clients: int, requests: int, tokens: int, seed: int) -> dict:
    rng = random.Random(seed)
    # About 100 tokens: 90 words of the list (one token each) and a unique label.
    prompts = [[f"{i}-{j}: {words(rng, 90)}" for j in range(requests)] for i in range(clients)]
    results: list[dict] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for prompt in prompts[i]:
            outcome = one_request(url, model, prompt, tokens)
            with lock:
                results.append(outcome)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - started
    ttfts = [r["ttft"] for r in results]
    generated = sum(r["tokens"] for r in results)
    return {
        "scenario": f"{clients} clients",
        "clients": clients,
        "requests": len(results),
        "generated_tokens": generated,
        "wall_s": round(wall, 3),
        "tokens_per_s": generated / wall,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p95_s": percentile(ttfts, 0.95),
    }


def run_repeat(url: str, model: str, seed: int) -> dict:
    prompt = f"repeat {seed}: {words(random.Random(seed), 90)}"
    first = one_request(url, model, prompt, 8)
    again = one_request(url, model, prompt, 8)
    return {"scenario": "prompt sent again", "ttft_first_s": first["ttft"],
            "ttft_again_s": again["ttft"]}  # fmt: skip


def run_system(url: str, model: str, seed: int, turns: int = 4) -> dict:
    rng = random.Random(seed)
    system = f"system {seed}: " + words(rng, 1000)
    ttfts = [one_request(url, model, f"{system}\nQ{i}: {words(rng, 20)}\nA:", 8)["ttft"]
             for i in range(turns)]  # fmt: skip
    later = statistics.mean(ttfts[1:])
    return {"scenario": "1,000-token system prompt", "ttft_first_s": ttfts[0],
            "ttft_later_s": later, "later_over_first": later / ttfts[0]}  # fmt: skip


def run_long_prompt(url: str, model: str, seed: int, streams: int = 4, tokens: int = 64) -> dict:
    """``streams`` decode while a 1,500-token prompt arrives; their gaps before and during it."""
    rng = random.Random(seed)
    results: list[dict] = []
    long_times: dict[str, float] = {}

    def stream(i: int) -> None:
        results.append(one_request(url, model, f"s{i}: {words(rng, 60)}", tokens))

    def long_prompt() -> None:
        time.sleep(1.0)  # the streams are decoding by now
        long_times["sent"] = time.perf_counter()
        outcome = one_request(url, model, f"long: {words(rng, 1500)}", 4)
        long_times["first"] = outcome["arrivals"][0] if outcome["arrivals"] else float("nan")

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    threads.append(threading.Thread(target=long_prompt))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    before, during = [], []
    for result in results:
        times = result["arrivals"]
        for a, b in itertools.pairwise(times):
            (during if long_times["sent"] <= b and a <= long_times["first"] else before).append(
                b - a
            )
    return {"scenario": "1,500-token prompt arrives", "itl_p50_s": statistics.median(before) if before else float("nan"),
            "itl_max_during_s": max(during) if during else float("nan"),
            "long_ttft_s": long_times["first"] - long_times["sent"]}  # fmt: skip


def mlx_unavailable() -> str | None:
    try:
        import mlx.core  # noqa: F401
        import mlx_lm  # noqa: F401
    except Exception as err:  # ImportError, or a broken native library
        return f"mlx-lm cannot be imported here ({type(err).__name__}: {err})"
    return None


def prepare(args: argparse.Namespace, work: Path, peers: list[str]) -> dict[str, list[str]]:
    """The model files each engine reads, and the command that serves them."""
    from elmforge.data.tokenizer import default_tokenizer_path

    tokenizer = Path(args.tokenizer) if args.tokenizer else default_tokenizer_path()
    if tokenizer is None:
        raise SystemExit("needs the LLaMA-2 tokenizer.model (--tokenizer, or shared/data)")
    hf_dir, gguf, mlx_dir = work / "hf", work / "model-f32.gguf", work / "mlx"
    slots = str(max(args.levels))
    if not (hf_dir / "model.safetensors").is_file():
        print(f"building {args.variant} (random weights) in {hf_dir}", flush=True)
        build_model(hf_dir, args.variant, tokenizer)
    engines = {"elmforge": [sys.executable, "-m", "elmforge.cli.main", "serve", str(hf_dir),
                            "--max-batch", slots, "--served-name", "model",
                            *args.elmforge_flags.split()]}  # fmt: skip
    if "llama-server" in peers:
        if not gguf.is_file():
            subprocess.run([sys.executable, "-m", "elmforge.cli.main", "convert", "hf-to-gguf",
                            str(hf_dir), str(gguf), "--type", "f32", "--tokenizer", str(tokenizer)],
                           check=True)  # fmt: skip
        # A context per slot big enough for the longest scenario (1,500 + 64 tokens).
        engines["llama-server"] = [str(llama_server_binary()), "-m", str(gguf), "-np", slots,
                                   "-t", str(args.threads), "-tb", str(args.threads),
                                   "-c", str(2048 * int(slots)), "--alias", "model",
                                   "--host", "127.0.0.1"]  # fmt: skip
    if "mlx-lm" in peers:
        reason = mlx_unavailable()
        if reason is None and not (mlx_dir / "config.json").is_file():
            done = subprocess.run([sys.executable, "-m", "mlx_lm", "convert", "--hf-path",
                                   str(hf_dir), "--mlx-path", str(mlx_dir), "--dtype", "float32"],
                                  capture_output=True, text=True)  # fmt: skip
            reason = None if done.returncode == 0 else f"mlx_lm convert: {done.stderr[-300:]}"
        if reason:
            print(f"mlx-lm skipped: {reason}")
        else:
            engines["mlx-lm"] = [sys.executable, "-m", "mlx_lm", "server", "--model",
                                 str(mlx_dir), "--decode-concurrency", slots,
                                 "--prompt-concurrency", slots]  # fmt: skip
    return engines


def targets(rows: list[dict]) -> list[str]:
    """Issue 20's targets against llama-server, each with its figures."""

    def row(engine: str, scenario: str) -> dict | None:
        return next((r for r in rows if r["engine"] == engine and r["scenario"] == scenario), None)

    lines = []
    for clients, goal in ((1, 1.0), (8, 1.2)):
        ours, peer = (
            row("elmforge", f"{clients} clients"),
            row("llama-server", f"{clients} clients"),
        )
        if ours and peer:
            ratio = ours["tokens_per_s"] / peer["tokens_per_s"]
            lines.append(f"tokens/s at {clients} client(s) >= {goal}x llama-server: {ratio:.2f} "
                         f"{'met' if ratio >= goal else 'NOT met'}")  # fmt: skip
    for r in rows:
        peer = row("llama-server", r["scenario"]) if r["engine"] == "elmforge" else None
        if peer and "ttft_p50_s" in r:
            ratio = r["ttft_p50_s"] / peer["ttft_p50_s"]
            lines.append(f"TTFT p50 at {r['scenario']} <= 1.0x llama-server: {ratio:.2f} "
                         f"{'met' if ratio <= 1.0 else 'NOT met'}")  # fmt: skip
    ours, peer = row("elmforge", "prompt sent again"), row("llama-server", "prompt sent again")
    if ours and peer:
        ratio = ours["ttft_again_s"] / peer["ttft_again_s"]
        lines.append(f"repeated prompt TTFT <= 1.5x llama-server: {ratio:.2f} "
                     f"{'met' if ratio <= 1.5 else 'NOT met'}")  # fmt: skip
    ours = row("elmforge", "1,000-token system prompt")
    if ours:
        ratio = ours["later_over_first"]
        lines.append(f"shared system prompt: later TTFT <= 0.25x the first: {ratio:.2f} "
                     f"{'met' if ratio <= 0.25 else 'NOT met'}")  # fmt: skip
    return lines


COLUMNS = ["engine", "scenario", "tokens_per_s", "ttft_p50_s", "ttft_p95_s", "ttft_first_s",
           "ttft_again_s", "ttft_later_s", "later_over_first", "itl_p50_s", "itl_max_during_s",
           "long_ttft_s", "generated_tokens", "wall_s"]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,8,16", help="concurrent clients per level")
    parser.add_argument("--requests", type=int, default=2, help="requests per client and level")
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads")
    parser.add_argument("--variant", default="OpenELM-270M", help="model shape")
    parser.add_argument("--tokenizer", help="LLaMA-2 tokenizer.model (default: shared/data)")
    parser.add_argument("--peers", default="llama-server", help="llama-server,mlx-lm or none")
    parser.add_argument("--scenarios", default="levels,repeat,system,long",
                        help="which of levels,repeat,system,long")  # fmt: skip
    parser.add_argument("--elmforge-flags", default="--prefill-chunk 256",
                        help="extra flags of elmforge serve")  # fmt: skip
    parser.add_argument("--out", help="JSON path (default: bench/results/serve.json)")
    parser.add_argument("--work-dir", help="keep (and reuse) the model files here")
    args = parser.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    peers = [p for p in args.peers.split(",") if p and p != "none"]
    scenarios = args.scenarios.split(",")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # elmforge's torch threads
    rows: list[dict] = []
    with contextlib.ExitStack() as stack:
        if args.work_dir:
            work = Path(args.work_dir)
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-serve-")))
        engines = prepare(args, work, peers)
        urls = {}
        for name, command in engines.items():
            urls[name] = f"http://127.0.0.1:{free_port()}"
            print(f"starting {name} on {urls[name]}", flush=True)
            port = urls[name].rsplit(":", 1)[1]
            stack.enter_context(running_server([*command, "--port", port],
                                               work / f"{name}.log", urls[name]))  # fmt: skip
        for url in urls.values():  # warm-up: first requests pay one-off costs
            run_level(url, "model", 2, 1, 4, seed=99)
        plan = [(f"{level} clients", lambda url, lv=level: run_level(
                    url, "model", lv, args.requests, args.tokens, seed=lv))
                for level in args.levels if "levels" in scenarios]  # fmt: skip
        if "repeat" in scenarios:
            plan.append(("repeat", lambda url: run_repeat(url, "model", seed=7)))
        if "system" in scenarios:
            plan.append(("system", lambda url: run_system(url, "model", seed=11)))
        if "long" in scenarios:
            plan.append(("long", lambda url: run_long_prompt(url, "model", seed=13)))
        for turn, (_label, measure) in enumerate(plan):
            order = list(urls) if turn % 2 == 0 else list(reversed(urls))
            for name in order:
                row = {"engine": name, **measure(urls[name])}
                rows.append(row)
                shown = {k: round(v, 3) if isinstance(v, float) else v
                         for k, v in row.items() if k not in ("engine",)}  # fmt: skip
                print(f"{name:12s} {shown}", flush=True)
    rows.sort(key=lambda r: (r["engine"] != "elmforge", r["engine"]))
    print()
    print_table(rows, COLUMNS)
    checks = targets(rows)
    print("\n" + "\n".join(checks))
    settings = {**vars(args), "peers": peers}
    path = write_json("serve", {"settings": settings, "rows": rows, "targets": checks}, args.out)
    columns = [c for c in COLUMNS if any(c in r for r in rows)]
    markdown = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, ""))
                 for c in columns]  # fmt: skip
        markdown.append("| " + " | ".join(cells) + " |")
    markdown += ["", *[f"- {line}" for line in checks]]
    path.with_suffix(".md").write_text("\n".join(markdown) + "\n")
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    sys.exit(main())
