"""Serving throughput: aggregate tokens/s and time to first token at 1/4/8/16 concurrent clients,
`elmforge serve` against mlx-lm's server on the same weights, in the same run.

    .venv/bin/python bench/serve.py [--levels 1,4,8,16] [--tokens 32] [--requests 2]

Builds OpenELM-270M's shape with random weights (seed 0; speed does not depend on the weights)
and LLaMA-2's tokenizer in a temporary directory, converts it with mlx-lm's own converter
(``mlx_lm.convert``, float32 like ours), and starts both servers on 127.0.0.1. At each
concurrency level every client sends ``--requests`` streaming completions one after another
(distinct prompts of ``--prompt-words`` words, so mlx-lm's prompt cache cannot shortcut them),
greedy, ``--tokens`` tokens each. The two servers take turns level by level, so machine load
hits both alike. Reports aggregate generated tokens/s (all clients' tokens over the wall time),
p50/p95 time to first token, and each server's speed-up over its own single client. Writes
``bench/results/serve.json`` and ``serve.md``. mlx-lm is skipped, with the reason, where it
cannot run.
"""

from __future__ import annotations

import argparse
import contextlib
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
from common import RESULTS_DIR, print_table, write_json

WORDS = ["the", "cat", "dog", "sun", "moon", "tree", "river", "stone", "bird", "fish", "apple"]


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


@contextlib.contextmanager
def server(command: list[str], url: str, log: Path, timeout: float = 600):
    """Run ``command`` until the with-block ends; ready when ``url/v1/models`` answers."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CI": "true", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[0:4]} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def one_request(url: str, model: str, prompt: str, tokens: int) -> tuple[float, int]:
    """(time to first token, completion tokens) of one streaming completion."""
    body = {
        "model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    started = time.perf_counter()
    first, pieces, usage = None, 0, None
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            usage = chunk.get("usage") or usage
            if any(choice.get("text") for choice in chunk.get("choices", [])):
                pieces += 1
                first = first or time.perf_counter() - started
    return first if first is not None else float("nan"), (usage or {}).get(
        "completion_tokens", pieces
    )


def run_level(url: str, model: str, clients: int, requests: int, tokens: int, words: int,
              seed: int) -> dict:  # fmt: skip
    rng = random.Random(seed)
    prompts = [
        [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(requests)]
        for _ in range(clients)
    ]
    results: list[tuple[float, int]] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for j, prompt in enumerate(prompts[i]):
            outcome = one_request(url, model, f"{i}-{j}: {prompt}", tokens)
            with lock:
                results.append(outcome)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - started
    ttfts = sorted(r[0] for r in results)
    generated = sum(r[1] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "generated_tokens": generated,
        "wall_s": round(wall, 3),
        "tokens_per_s": generated / wall,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p95_s": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
    }


def mlx_unavailable() -> str | None:
    try:
        import mlx.core  # noqa: F401
        import mlx_lm  # noqa: F401
    except Exception as err:  # ImportError, or a broken native library
        return f"mlx-lm cannot be imported here ({type(err).__name__}: {err})"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,8,16", help="concurrent clients per level")
    parser.add_argument("--requests", type=int, default=2, help="requests per client and level")
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--prompt-words", type=int, default=24, help="words per prompt")
    parser.add_argument("--variant", default="OpenELM-270M", help="model shape")
    parser.add_argument("--tokenizer", help="LLaMA-2 tokenizer.model (default: shared/data)")
    parser.add_argument("--skip-mlx", action="store_true", help="only elmforge serve")
    parser.add_argument(
        "--mlx-levels",
        help="levels to run mlx-lm at (default: --levels; its Linux CPU backend can be slow)",
    )
    parser.add_argument("--out", help="JSON path (default: bench/results/serve.json)")
    parser.add_argument(
        "--work-dir", help="keep (and reuse) the model directories here instead of a temporary one"
    )
    args = parser.parse_args()
    from elmforge.data.tokenizer import default_tokenizer_path

    tokenizer = Path(args.tokenizer) if args.tokenizer else default_tokenizer_path()
    if tokenizer is None:
        print("needs the LLaMA-2 tokenizer.model (--tokenizer, or shared/data)")
        return 2
    levels = [int(x) for x in args.levels.split(",")]
    mlx_levels = [int(x) for x in args.mlx_levels.split(",")] if args.mlx_levels else levels
    skipped = "--skip-mlx" if args.skip_mlx else mlx_unavailable()
    with contextlib.ExitStack() as work:
        if args.work_dir:
            tmp = Path(args.work_dir)
            tmp.mkdir(parents=True, exist_ok=True)
        else:
            tmp = Path(work.enter_context(tempfile.TemporaryDirectory(prefix="bench-serve-")))
        hf_dir, mlx_dir = tmp / "hf", tmp / "mlx"
        if not (hf_dir / "model.safetensors").is_file():
            print(f"building {args.variant} (random weights) in {hf_dir}", flush=True)
            build_model(hf_dir, args.variant, tokenizer)
        engines = {"elmforge": [sys.executable, "-m", "elmforge.cli.main", "serve", str(hf_dir),
                                "--max-batch", str(max(levels))]}  # fmt: skip
        if skipped is None and not (mlx_dir / "config.json").is_file():
            convert = [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(hf_dir),
                       "--mlx-path", str(mlx_dir), "--dtype", "float32"]  # fmt: skip
            done = subprocess.run(convert, capture_output=True, text=True)
            if done.returncode != 0:
                skipped = f"mlx_lm convert failed: {done.stderr.strip().splitlines()[-1:]}"
        if skipped is None:
            engines["mlx-lm"] = [sys.executable, "-m", "mlx_lm", "server", "--model",
                                 str(mlx_dir), "--decode-concurrency", str(max(levels)),
                                 "--prompt-concurrency", str(max(levels))]  # fmt: skip
        if skipped:
            print(f"mlx-lm skipped: {skipped}")
        rows = []
        with contextlib.ExitStack() as stack:
            urls = {}
            for name, command in engines.items():
                port = free_port()
                urls[name] = f"http://127.0.0.1:{port}"
                print(f"starting {name} on port {port}", flush=True)
                stack.enter_context(
                    server([*command, "--port", str(port)], urls[name], tmp / f"{name}.log")
                )
            models = {name: str(hf_dir if name == "elmforge" else mlx_dir) for name in engines}
            for name, url in urls.items():  # warm-up: first requests pay one-off costs
                run_level(url, models[name], 2, 1, 4, args.prompt_words, seed=99)
            for level in levels:
                order = list(urls) if level % 2 else list(reversed(urls))  # take turns first
                for name in order:
                    if name == "mlx-lm" and level not in mlx_levels:
                        continue
                    row = run_level(urls[name], models[name], level, args.requests, args.tokens,
                                    args.prompt_words, seed=level)  # fmt: skip
                    rows.append({"engine": name, **row})
                    print(f"{name:8s} {level:2d} clients: {row['tokens_per_s']:7.1f} tokens/s, "
                          f"TTFT p50 {row['ttft_p50_s']:.2f} s", flush=True)  # fmt: skip
    for row in rows:
        single = next(r for r in rows if r["engine"] == row["engine"] and r["clients"] == levels[0])
        row["speedup_vs_1"] = row["tokens_per_s"] / single["tokens_per_s"]
    rows.sort(key=lambda r: (r["engine"] != "elmforge", r["clients"]))
    columns = ["engine", "clients", "tokens_per_s", "speedup_vs_1", "ttft_p50_s", "ttft_p95_s",
               "generated_tokens", "wall_s"]  # fmt: skip
    print()
    print_table(rows, columns)
    settings = {**vars(args), "tokenizer": str(tokenizer), "mlx_skipped": skipped}
    path = write_json("serve", {"settings": settings, "rows": rows}, args.out)
    markdown = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        markdown.append("| " + " | ".join(cells) + " |")
    path.with_suffix(".md").write_text("\n".join(markdown) + "\n")
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    sys.exit(main())
