"""`elmforge convert`: CoreNet .pt checkpoints <-> Hugging Face layout."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert checkpoints between CoreNet .pt and the Hugging Face layout",
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
    to_hf.set_defaults(run=run_corenet_to_hf)
    to_corenet = sub.add_parser(
        "hf-to-corenet",
        help="an HF-layout directory -> a CoreNet .pt state dict",
        description="Write an HF-layout OpenELM model as a CoreNet state dict (embedding padded).",
    )
    to_corenet.add_argument("model_dir", metavar="MODEL_DIR")
    to_corenet.add_argument("out_path", metavar="OUT.pt")
    to_corenet.set_defaults(run=run_hf_to_corenet)


def run_corenet_to_hf(args: argparse.Namespace) -> int:
    from elmforge.model.convert import corenet_to_hf
    from elmforge.model.profile import resolve_config

    config = resolve_config(args.name)
    tokenizer = None
    if args.tokenizer is not None:
        from elmforge.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    out = corenet_to_hf(args.checkpoint, args.out_dir, config, tokenizer)
    print(f"wrote {out}")
    return 0


def run_hf_to_corenet(args: argparse.Namespace) -> int:
    from elmforge.model.convert import hf_to_corenet

    print(f"wrote {hf_to_corenet(args.model_dir, args.out_path)}")
    return 0
