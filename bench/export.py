"""Export of the OpenELM-270M shape (random weights): conversion time, file size, logit error.

    .venv/bin/python bench/export.py [--model OpenELM-270M] [--repeats 1] [--threads 2]

For each GGUF type (f32, f16, bf16, q8_0): the time of ``hf_to_gguf``, the file size, and the
logits of the file read back (``gguf_to_hf``, dequantised) against the fp32 model on a fixed
batch (relative L2 error, largest error relative to the largest logit, top-1 agreement); then
``hf_to_mlx`` unquantised and 4-bit (time, size), where mlx-lm is installed. Baseline in the same
run: writing the same model as safetensors (``save_pretrained``), the I/O floor of a converter.
The machines are shared and noisy: compare the ratios to the baseline. Needs LLaMA-2's
``tokenizer.model`` (``default_tokenizer_path``). Writes ``bench/results/export.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json

from elmforge import OpenELMConfig, OpenELMForCausalLM
from elmforge.data.tokenizer import default_tokenizer_path
from elmforge.export.gguf import OUT_TYPES, hf_to_gguf
from elmforge.export.gguf_read import gguf_to_hf
from elmforge.export.mlx import hf_to_mlx
from elmforge.model.convert import load_pretrained
from elmforge.modeldir.complete import complete_model_dir


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


@torch.no_grad()
def logit_errors(reference: torch.Tensor, model_dir: Path, batch: torch.Tensor) -> dict:
    logits = load_pretrained(model_dir)(batch).logits
    diff = logits - reference
    return {
        "rel_l2": float(diff.norm() / reference.norm()),
        "rel_max": float(diff.abs().max() / reference.abs().max()),
        "top1_agree": float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="OpenELM-270M")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = default_tokenizer_path()
    if tokenizer is None:
        sys.exit("needs LLaMA-2's tokenizer.model: set $ELMFORGE_LLAMA2_TOKENIZER")
    torch.manual_seed(0)
    model = OpenELMForCausalLM(OpenELMConfig.from_name(args.model)).eval()
    batch = torch.randint(3, model.config.vocab_size, (2, 64))
    with torch.no_grad():
        reference = model(batch).logits
    rows: dict[str, dict] = {}
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        root = Path(tmp)
        source = root / "model"
        for repeat in range(args.repeats):
            target = root / f"baseline-{repeat}"
            seconds, _ = timed(model.save_pretrained, target)
            times.setdefault("safetensors (baseline)", []).append(seconds)
            rows["safetensors (baseline)"] = {"size_mb": size_mb(target / "model.safetensors")}
            if repeat == 0:
                target.rename(source)
                complete_model_dir(source, tokenizer)
            for out_type in OUT_TYPES:
                out = root / f"{out_type}.gguf"
                seconds, _ = timed(hf_to_gguf, source, out, out_type, force=True, progress=False)
                times.setdefault(f"gguf {out_type}", []).append(seconds)
                if repeat == 0:
                    read_s, back = timed(gguf_to_hf, out, root / f"back-{out_type}")
                    rows[f"gguf {out_type}"] = {"size_mb": size_mb(out), "read_back_s": read_s,
                                                **logit_errors(reference, back, batch)}  # fmt: skip
            if importlib.util.find_spec("mlx_lm") is None:  # hf_to_mlx runs mlx-lm's converter
                continue
            for bits in (None, 4):
                name = f"mlx {bits}-bit" if bits else "mlx unquantised"
                out = root / f"mlx-{bits}-{repeat}"
                seconds, _ = timed(hf_to_mlx, source, out, quantize=bits)
                times.setdefault(name, []).append(seconds)
                rows[name] = {"size_mb": size_mb(out)}
    baseline = statistics.median(times["safetensors (baseline)"])
    table = []
    for name, row in rows.items():
        seconds = statistics.median(times[name])
        table.append({"output": name, "seconds": seconds, "x_baseline": seconds / baseline, **row})
    columns = ["output", "seconds", "x_baseline", "size_mb", "read_back_s", "rel_l2", "rel_max",
               "top1_agree"]  # fmt: skip
    print(f"{args.model}, random weights, {model.num_parameters():,} parameters, "
          f"{args.repeats} repeat(s), {args.threads} threads")  # fmt: skip
    print_table(table, columns)
    path = write_json("export", {"model": args.model, "repeats": args.repeats, "rows": table},
                      args.out)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
