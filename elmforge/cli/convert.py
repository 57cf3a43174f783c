"""`elmforge convert`: CoreNet .pt checkpoints <-> Hugging Face layout, HF <-> GGUF (llama.cpp),
HF -> MLX (mlx-lm). MODEL may also be a run directory (its final/) or a checkpoint step directory
(its model/)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

MODEL_HELP = "model directory, run directory (uses final/) or checkpoint step directory"
TOKENIZER_HELP = "tokenizer.model / tokenizer dir (default: the model's own, else LLaMA-2's)"

FORCE_HELP = "replace the output of an earlier `elmforge convert`"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert between CoreNet .pt, the Hugging Face layout, GGUF (llama.cpp) and MLX",
        description="Convert OpenELM checkpoints between formats.",
    )
    sub = p.add_subparsers(dest="direction", metavar="DIRECTION")
    sub.required = True
    to_hf = sub.add_parser(
        "corenet-to-hf",
        help="a CoreNet .pt checkpoint -> an HF-layout directory",
        description="Read a CoreNet .pt checkpoint safely (weights_only), trim the padded "
        "embedding rows and write safetensors + config.json in Apple's HF layout.",
    )
    to_hf.add_argument("checkpoint", metavar="IN.pt")
    to_hf.add_argument("out_dir", metavar="OUT_DIR")
    to_hf.add_argument(
        "--name",
        required=True,
        metavar="NAME_OR_CONFIG",
        help="preset (e.g. OpenELM-270M) or a model dir / config.json describing the shape",
    )
    to_hf.add_argument("--tokenizer", metavar="PATH", help="also save this tokenizer in OUT_DIR")
    to_hf.add_argument("--force", action="store_true", help=FORCE_HELP)
    to_hf.set_defaults(run=run_corenet_to_hf)
    to_corenet = sub.add_parser(
        "hf-to-corenet",
        help="an HF-layout directory -> a CoreNet .pt state dict",
        description="Write an HF-layout OpenELM model as a CoreNet state dict (embedding padded).",
    )
    to_corenet.add_argument("model_dir", metavar="MODEL", help=MODEL_HELP)
    to_corenet.add_argument("out_path", metavar="OUT.pt")
    to_corenet.add_argument("--force", action="store_true", help=FORCE_HELP)
    to_corenet.set_defaults(run=run_hf_to_corenet)
    add_export_parsers(sub)
    add_corenet_peft_parser(sub)


def add_export_parsers(sub: argparse._SubParsersAction) -> None:
    to_gguf = sub.add_parser(
        "hf-to-gguf",
        help="a model -> a GGUF file for llama.cpp",
        description="Write an OpenELM model as GGUF (llama.cpp's openelm architecture) with its "
        "vocabulary, special tokens and chat template. 1-D tensors and norms stay f32.",
    )
    to_gguf.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    to_gguf.add_argument("out_path", metavar="OUT.gguf")
    to_gguf.add_argument(
        "--type",
        default="f16",
        metavar="f32|f16|bf16|q8_0",
        help="weight type (f16, llama.cpp's default); q8_0 is computed with gguf.quants",
    )
    to_gguf.add_argument("--tokenizer", metavar="PATH", help=TOKENIZER_HELP)
    to_gguf.add_argument("--force", action="store_true", help="replace an existing OUT.gguf")
    to_gguf.set_defaults(run=run_hf_to_gguf)

    from_gguf = sub.add_parser(
        "gguf-to-hf",
        help="an OpenELM GGUF file -> a complete HF-layout directory",
        description="Read an OpenELM GGUF (f32, f16, bf16 or q8_0, dequantised) into Apple's HF "
        "layout with tokenizer files and the chat template the file carries.",
    )
    from_gguf.add_argument("gguf_path", metavar="IN.gguf")
    from_gguf.add_argument("out_dir", metavar="OUT_DIR")
    from_gguf.add_argument(
        "--dtype",
        default="float32",
        metavar="float32|float16|bfloat16",
        help="weights dtype of the output (float32: exact for every GGUF type read)",
    )
    from_gguf.add_argument("--tokenizer", metavar="PATH", help="use this instead of the file's")
    from_gguf.add_argument("--force", action="store_true", help="replace an earlier output")
    from_gguf.set_defaults(run=run_gguf_to_hf)

    to_mlx = sub.add_parser(
        "hf-to-mlx",
        help="a model -> an MLX directory for mlx-lm (Apple devices)",
        description="Convert with mlx-lm's own converter, optionally quantised, with the "
        "tokenizer and chat template beside the weights.",
    )
    to_mlx.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    to_mlx.add_argument("out_dir", metavar="OUT_DIR")
    to_mlx.add_argument("--quantize", type=int, metavar="4|8", help="quantise to 4 or 8 bits")
    to_mlx.add_argument(
        "--group-size",
        type=int,
        default=64,
        metavar="N",
        help="quantisation group size: 32, 64 or 128 (64)",
    )
    to_mlx.add_argument("--tokenizer", metavar="PATH", help=TOKENIZER_HELP)
    to_mlx.add_argument("--force", action="store_true", help="replace an earlier output")
    to_mlx.set_defaults(run=run_hf_to_mlx)


def run_corenet_to_hf(args: argparse.Namespace) -> int:
    from elmforge.export.prepare import corenet_to_model_dir

    out = corenet_to_model_dir(
        args.checkpoint, args.out_dir, args.name, args.tokenizer, force=args.force
    )
    print(f"wrote {out}")
    return 0


def run_hf_to_gguf(args: argparse.Namespace) -> int:
    from elmforge.export.gguf import hf_to_gguf

    start = time.monotonic()
    out = hf_to_gguf(
        args.model, args.out_path, args.type, force=args.force, tokenizer=args.tokenizer
    )
    print(f"wrote {out} ({args.type}, {_size(out)}, {time.monotonic() - start:.1f} s)")
    return 0


def run_gguf_to_hf(args: argparse.Namespace) -> int:
    from elmforge.export.gguf_read import gguf_to_hf

    out = gguf_to_hf(
        args.gguf_path, args.out_dir, force=args.force, tokenizer=args.tokenizer, dtype=args.dtype
    )
    print(f"wrote {out}")
    return 0


def run_hf_to_mlx(args: argparse.Namespace) -> int:
    from elmforge.export.mlx import hf_to_mlx

    out = hf_to_mlx(
        args.model,
        args.out_dir,
        quantize=args.quantize,
        group_size=args.group_size,
        force=args.force,
        tokenizer=args.tokenizer,
    )
    bits = f"{args.quantize}-bit" if args.quantize else "unquantised"
    print(f"wrote {out} ({bits}, {_size(out)})")
    return 0


def _size(path: Path) -> str:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return f"{sum(p.stat().st_size for p in files) / 1e6:.1f} MB"


def run_hf_to_corenet(args: argparse.Namespace) -> int:
    from elmforge.model.convert import hf_to_corenet

    out = hf_to_corenet(args.model_dir, args.out_path, force=args.force)
    print(f"wrote {out}")
    return 0


# -- corenet-peft-to-hf: Apple's LoRA/DoRA checkpoints (elmforge.finetune.corenet_peft) ----------
def add_corenet_peft_parser(sub: argparse._SubParsersAction) -> None:
    peft = sub.add_parser(
        "corenet-peft-to-hf",
        help="Apple's CoreNet LoRA/DoRA .pt -> a PEFT adapter directory (--merge: a merged model)",
        description="Read one of Apple's released OpenELM LoRA/DoRA checkpoints (CoreNet .pt: "
        "base weights named ...base_layer.weight, adapter tensors beside them) safely "
        "(weights_only) and write OUT_DIR as a PEFT adapter directory. With --merge, OUT_DIR is "
        "the merged model in Apple's HF layout (tokenizer and chat template included) and the "
        "adapter goes to OUT_DIR/adapter.",
    )
    peft.add_argument("checkpoint", metavar="IN.pt")
    peft.add_argument("out_dir", metavar="OUT_DIR")
    peft.add_argument(
        "--name",
        required=True,
        metavar="NAME_OR_CONFIG",
        help="preset (e.g. OpenELM-270M) or a model dir / config.json describing the base shape",
    )
    peft.add_argument("--merge", action="store_true", help="write the merged model as well")
    peft.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="tokenizer for the merged model (default: LLaMA-2's tokenizer.model when found)",
    )
    peft.add_argument(
        "--lora-alpha", type=float, default=32.0, help="LoRA alpha (not stored in the .pt; 32)"
    )
    peft.add_argument("--force", action="store_true", help="replace an earlier conversion")
    peft.set_defaults(run=run_corenet_peft_to_hf)


def run_corenet_peft_to_hf(args: argparse.Namespace) -> int:
    from elmforge.finetune.corenet_peft import corenet_peft_to_hf

    out = corenet_peft_to_hf(
        args.checkpoint,
        args.out_dir,
        args.name,
        merge=args.merge,
        tokenizer=args.tokenizer,
        alpha=args.lora_alpha,
        force=args.force,
    )
    print(f"wrote {out}")
    return 0
