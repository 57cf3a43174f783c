"""Bad input to every verb: one clean line, exit 2, no traceback, nothing of a run changed.

A table of hostile command lines (configs, data files, checkpoints, tokenizers, prompts, flag
values) over the verbs ``demo``, ``info``, ``generate``, ``convert``, ``data``, ``tokenizer``,
``pretrain``, ``average`` and ``evaluate``. Each case is a real ``elmforge`` process run in one
shared workspace built once: a BPE tokenizer, a 2-step run of the micro shape with its checkpoints,
and damaged copies of its model. After every case the runs and earlier outputs are byte-for-byte
what they were, and no temporary file is left anywhere.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.cli_support import assert_clean_error, run_elmforge, tree_snapshot
from tests.train.helpers import micro_run

REPO_ROOT = Path(__file__).resolve().parents[2]
# Outputs that no failed command may touch.
PROTECTED = ("run", "run-config-dir", "run-broken", "run-pickled", "averaged", "converted",
             "tok-out", "ev", "mine", "linkdir", "file.txt", "model.pt")  # fmt: skip


def _damage_model(model: Path, target: Path, how: str) -> Path:
    """A copy of ``model`` with one thing wrong (see the cases for what each means)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model, target)
    weights = target / "model.safetensors"
    config = json.loads((target / "config.json").read_text())
    if how in ("missing-tensor", "nan", "huge"):
        state = load_file(weights)
        key = "transformer.layers.0.ffn.proj_1.weight"
        if how == "missing-tensor":
            del state[key]
        else:
            state[key] = state[key].clone()
            state[key][0, 0] = float("nan") if how == "nan" else 3.0e38
        save_file(state, weights, metadata={"format": "pt"})
    elif how == "overwritten":  # bytes overwritten in the middle of the tensor data
        data = bytearray(weights.read_bytes())
        (header,) = struct.unpack("<Q", data[:8])
        middle = 8 + header + (len(data) - 8 - header) // 2
        data[middle : middle + 4096] = b"\xff" * 4096
        weights.write_bytes(bytes(data))
    elif how == "truncated":
        weights.write_bytes(weights.read_bytes()[:-1000])
    elif how == "no-weights":
        weights.unlink()
    elif how == "llama":
        config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    elif how == "bad-json":
        (target / "config.json").write_text("{ not json")
    elif how == "narrow":  # config.json and the weights disagree on a shape
        config["model_dim"] = 32
    elif how == "no-tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (target / name).unlink()
    if how in ("llama", "narrow"):
        (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workspace every case runs in (its working directory)."""
    import torch

    from elmforge.data.sources import iter_texts
    from elmforge.data.tokenizer import train_bpe_tokenizer, train_tokenizer_output
    from elmforge.evaluate.harness import EvalRequest, evaluate_model
    from elmforge.model.convert import corenet_to_hf, hf_to_corenet
    from elmforge.model.profile import resolve_config
    from elmforge.modeldir.loading import load
    from elmforge.train import RunConfig, average_checkpoints, pretrain
    from elmforge.train.checkpoint import list_checkpoints, sha256_file

    root = tmp_path_factory.mktemp("bad-inputs")

    class Unsafe:  # unpickling this would call print: weights_only must refuse it
        def __reduce__(self):
            return (print, ("unpickled",))

    texts = list(itertools.islice(iter_texts({"name": "builtin:python-docs"}, "train"), 40))
    train_bpe_tokenizer(texts, 300, root / "tok")
    train_bpe_tokenizer(texts, 400, root / "tok-400")  # more tokens than the model's 320 rows
    run = micro_run(
        root / "tok",
        data={"shuffle_buffer": 4},
        schedule={"warmup_steps": 1, "max_steps": 2},
        train={"micro_batch_size": 2},
        checkpoint={"save_every": 1, "keep_last": 0},
        log={"eval_batches": 0, "tensorboard": False, "plot": False, "progress": "none"},
    )
    (root / "run.yaml").write_text(yaml.safe_dump(run))
    pretrain(RunConfig.from_dict(run), root / "run")
    model = root / "run" / "final"
    for how in ("missing-tensor", "nan", "huge", "overwritten", "truncated", "no-weights",
                "llama", "bad-json", "narrow", "no-tokenizer"):  # fmt: skip
        _damage_model(model, root / f"m-{how}", how)

    shutil.copytree(root / "run", root / "run-config-dir")
    (root / "run-config-dir" / "config.yaml").unlink()
    (root / "run-config-dir" / "config.yaml").mkdir()
    shutil.copytree(root / "run", root / "run-broken")
    for checkpoint in list_checkpoints(root / "run-broken"):
        (checkpoint / "rng.pt").write_bytes(b"not a checkpoint")

    # Every checkpoint's rng.pt replaced by a pickle, the manifest's digest updated to match:
    # refused as unsafe (never unpickled), so no checkpoint is usable.
    shutil.copytree(root / "run", root / "run-pickled")
    for checkpoint in list_checkpoints(root / "run-pickled"):
        torch.save({"state": Unsafe()}, checkpoint / "rng.pt")
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        manifest["files"]["rng.pt"] = {"size": (checkpoint / "rng.pt").stat().st_size,
                                       "sha256": sha256_file(checkpoint / "rng.pt")}  # fmt: skip
        (checkpoint / "manifest.json").write_text(json.dumps(manifest))

    # A link inside the run to a directory outside it: an output there would replace the link.
    (root / "run" / "outside").symlink_to(root / "mine", target_is_directory=True)
    average_checkpoints(list_checkpoints(root / "run"), root / "averaged")
    hf_to_corenet(model, root / "model.pt")
    corenet_to_hf(root / "model.pt", root / "converted", resolve_config(model))
    data = bytearray((root / "model.pt").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = b"\xff" * 4096
    (root / "overwritten.pt").write_bytes(bytes(data))
    (root / "random.pt").write_bytes(os.urandom(4096))

    torch.save({"model": {"token_embeddings.weight": torch.zeros(2, 2)}, "x": Unsafe()},
               root / "unsafe.pt")  # fmt: skip
    train_tokenizer_output(texts, 300, root / "tok-out")
    loaded = load(model, device="cpu")
    request = EvalRequest(perplexity_data="builtin:python-docs", limit=1, out_dir=root / "ev")
    evaluate_model(loaded.model, loaded.tokenizer, request)

    (root / "file.txt").write_text("mine\n")
    (root / "llm-data" / "boolq").mkdir(parents=True)  # only looked at, never scored
    (root / "llm-data" / "boolq" / "test.json").write_text("[]")
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("mine\n")
    (root / "linkdir").mkdir()
    (root / "linkdir" / "link").symlink_to(root / "file.txt")
    (root / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "syntax.yaml").write_text("model: [unclosed\n")
    (root / "empty.yaml").write_text("")
    (root / "prompt.txt").write_bytes(b"def f(x):\xff\xfe\n")
    (root / "results.json").write_text('{"hello": 1}')
    (root / "rows.jsonl").write_text('{"text": "a fine document about python"}\n{"text": \n')
    (root / "bad-rows.yaml").write_text(
        yaml.safe_dump({"data": {"sources": [{"file_name": "rows.jsonl"}], "tokenizer": "tok"}})
    )
    (root / "no-shard.yaml").write_text(
        yaml.safe_dump({"data": {"sources": [{"file_name": "nowhere/x.jsonl"}]}})
    )
    (root / "bad-key.yaml").write_text(yaml.safe_dump({"data": {"bogus": 1}}))
    (root / "corenet.yaml").write_text(yaml.safe_dump({"model": {"bogus_key": 1}}))
    return root


def _snapshot(root: Path) -> dict[str, dict[str, str]]:
    return {name: tree_snapshot(root / name) for name in PROTECTED}


@pytest.fixture(scope="module")
def before(ws: Path) -> dict[str, dict[str, str]]:
    return _snapshot(ws)


def _temporaries(root: Path) -> list[str]:
    from elmforge.files import is_temporary

    return [str(p.relative_to(root)) for p in root.rglob("*") if is_temporary(p.name)]


# Where a case's output would go: a name of its own, which must not exist afterwards.
NEW, NEW_PT = "{new}", "{new}.pt"
BAD_UTF8 = os.fsdecode(b"def f(x):\xff\xfe")  # what Python makes of such bytes in argv
M = "run/final"
RUN = ["pretrain", "--config", "run.yaml", "--out", "run"]
INSPECT = ["data", "inspect", "run.yaml"]
TOKENIZE = ["tokenizer", "train", "--data", "builtin:python-docs", "--max-documents", "5"]
CORENET_270M = str(REPO_ROOT / "elmforge" / "configs" / "corenet" / "openelm_270M.yaml")
EVALUATE = ["evaluate", M, "--perplexity", "builtin:python-docs", "--limit", "1"]
LLM_ADAPTERS = ["evaluate", M, "--suite", "llm-adapters", "--data-dir", "llm-data"]

# id -> (command line, what the error line must mention)
CASES: dict[str, tuple[list[str], list[str]]] = {
    # -- generate: sampling flags, prompts, devices ---------------------------------------------
    "generate-top-k-negative": (["generate", M, "--prompt", "x", "--top-k", "-3"], ["--top-k"]),
    "generate-top-k-text": (["generate", M, "--prompt", "x", "--top-k", "many"], ["--top-k"]),
    "generate-top-p-2": (["generate", M, "--prompt", "x", "--top-p", "2"], ["--top-p"]),
    "generate-top-p-0": (["generate", M, "--prompt", "x", "--top-p", "0"], ["--top-p"]),
    "generate-penalty-negative": (
        ["generate", M, "--prompt", "x", "--repetition-penalty", "-2"],
        ["--repetition-penalty"],
    ),
    "generate-penalty-0": (
        ["generate", M, "--prompt", "x", "--repetition-penalty", "0"],
        ["--repetition-penalty"],
    ),
    "generate-temperature-nan": (
        ["generate", M, "--prompt", "x", "--temperature", "nan"],
        ["--temperature"],
    ),
    "generate-temperature-inf": (
        ["generate", M, "--prompt", "x", "--temperature", "inf"],
        ["--temperature"],
    ),
    "generate-temperature-negative": (
        ["generate", M, "--prompt", "x", "--temperature", "-1"],
        ["--temperature"],
    ),
    "generate-seed-huge": (["generate", M, "--prompt", "x", "--seed", str(2**70)], ["--seed"]),
    "generate-min-p-2": (["generate", M, "--prompt", "x", "--min-p", "2"], ["--min-p"]),
    "generate-max-new-tokens-0": (
        ["generate", M, "--prompt", "x", "--max-new-tokens", "0"],
        ["--max-new-tokens"],
    ),
    "generate-prompt-not-utf8": (["generate", M, "--prompt", BAD_UTF8], ["--prompt", "UTF-8"]),
    "generate-prompt-file-not-utf8": (
        ["generate", M, "--prompt-file", "prompt.txt"],
        ["prompt.txt", "UTF-8"],
    ),
    "generate-prompt-file-empty": (
        ["generate", M, "--prompt-file", "empty.yaml"],
        ["empty.yaml", "the prompt is empty"],
    ),
    "generate-prompt-file-missing": (
        ["generate", M, "--prompt-file", "nowhere.txt"],
        ["nowhere.txt"],
    ),
    "generate-prompt-and-file": (
        ["generate", M, "--prompt", "x", "--prompt-file", "prompt.txt"],
        ["--prompt-file"],
    ),
    "generate-device-tpu9": (["generate", M, "--prompt", "x", "--device", "tpu9"], ["tpu9"]),
    "generate-device-cuda7": (["generate", M, "--prompt", "x", "--device", "cuda:7"], ["cuda:7"]),
    "generate-dtype-fp8": (["generate", M, "--prompt", "x", "--dtype", "fp8"], ["--dtype"]),
    "generate-not-a-model-dir": (["generate", "mine", "--prompt", "x"], ["mine", "config.json"]),
    "generate-missing-tensor": (
        ["generate", "m-missing-tensor", "--prompt", "x"],
        ["m-missing-tensor", "transformer.layers.0.ffn.proj_1.weight"],
    ),
    "generate-llama-config": (["generate", "m-llama", "--prompt", "x"], ["m-llama", "llama"]),
    "generate-nan-weights": (["generate", "m-nan", "--prompt", "x"], ["m-nan", "NaN"]),
    "generate-huge-weights": (["generate", "m-huge", "--prompt", "x"], ["m-huge", "3e+38"]),
    "generate-overwritten-bytes": (
        ["generate", "m-overwritten", "--prompt", "x"],
        ["m-overwritten", "NaN"],
    ),
    "generate-truncated-weights": (
        ["generate", "m-truncated", "--prompt", "x"],
        ["model.safetensors"],
    ),
    "generate-no-weights": (["generate", "m-no-weights", "--prompt", "x"], ["m-no-weights"]),
    "generate-bad-config-json": (["generate", "m-bad-json", "--prompt", "x"], ["config.json"]),
    "generate-shape-mismatch": (["generate", "m-narrow", "--prompt", "x"], ["m-narrow"]),
    "generate-no-tokenizer": (
        ["generate", "m-no-tokenizer", "--prompt", "x"],
        ["m-no-tokenizer", "--tokenizer"],
    ),
    "generate-tokenizer-too-big": (
        ["generate", M, "--tokenizer", "tok-400", "--prompt", "x"],
        ["tok-400", "400 tokens", "320"],
    ),
    "generate-stop-empty": (  # once silently ignored; the server refuses it too
        ["generate", M, "--prompt", "x", "--stop", ""],
        ["--stop", "must not be empty"],
    ),
    "generate-draft-and-prompt-lookup": (  # once one of the two was silently dropped
        ["generate", M, "--prompt", "x", "--draft-model", M, "--prompt-lookup", "2"],
        ["--prompt-lookup", "draft model", "give one"],
    ),
    "generate-path-typo": (  # looks like a path: no hub look-up, no retries
        ["generate", "runs/nowhere/final", "--prompt", "x"],
        ["runs/nowhere/final", "no such model directory"],
    ),
    "generate-hub-name-offline": (  # offline: the hub cache only, no retries
        ["generate", "nosuch-org/nosuch-model", "--prompt", "x"],
        ["nosuch-org/nosuch-model", "HF_HUB_OFFLINE"],
    ),
    "generate-draft-model-missing": (
        ["generate", M, "--prompt", "x", "--draft-model", "./nowhere"],
        ["nowhere", "no such model directory"],
    ),
    "generate-tokenizer-missing": (
        ["generate", M, "--tokenizer", "nowhere/tokenizer.model", "--prompt", "x"],
        ["nowhere/tokenizer.model"],
    ),
    # -- info ----------------------------------------------------------------------------------
    "info-unknown-preset": (["info", "OpenELM-9B"], ["OpenELM-9B", "preset"]),
    "info-llama-config": (["info", "m-llama"], ["m-llama", "llama"]),
    "info-plot-run-dir": (["info", "OpenELM-tiny", "--plot", "run"], ["run"]),
    "info-plot-directory": (["info", "OpenELM-tiny", "--plot", "mine"], ["mine", "directory"]),
    "info-plot-existing-file": (
        ["info", "OpenELM-tiny", "--plot", "file.txt"],
        ["file.txt", "--force"],
    ),
    "info-plot-under-a-file": (["info", "OpenELM-tiny", "--plot", "file.txt/p.png"], ["file.txt"]),
    "info-plot-into-run": (["info", "OpenELM-tiny", "--plot", "run/loss.png"], ["run/loss.png"]),
    # -- convert -------------------------------------------------------------------------------
    "convert-onto-file": (
        ["convert", "corenet-to-hf", "model.pt", "file.txt", "--name", M],
        ["file.txt", "not a directory"],
    ),
    "convert-onto-symlink-dir": (
        ["convert", "corenet-to-hf", "model.pt", "linkdir", "--name", M],
        ["linkdir"],
    ),
    "convert-onto-foreign-dir": (
        ["convert", "corenet-to-hf", "model.pt", "mine", "--name", M],
        ["mine", "not an elmforge output"],
    ),
    "convert-onto-run": (
        ["convert", "corenet-to-hf", "model.pt", "run", "--name", M],
        ["run", "run directory"],
    ),
    "convert-again-without-force": (
        ["convert", "corenet-to-hf", "model.pt", "converted", "--name", M],
        ["converted", "--force"],
    ),
    "convert-overwritten-pt": (
        ["convert", "corenet-to-hf", "overwritten.pt", NEW, "--name", M],
        ["overwritten.pt", "NaN"],
    ),
    "convert-random-pt": (
        ["convert", "corenet-to-hf", "random.pt", NEW, "--name", M],
        ["random.pt"],
    ),
    "convert-unsafe-pt": (
        ["convert", "corenet-to-hf", "unsafe.pt", NEW, "--name", M],
        ["unsafe.pt"],
    ),
    "convert-unknown-name": (
        ["convert", "corenet-to-hf", "model.pt", NEW, "--name", "OpenELM-9B"],
        ["OpenELM-9B"],
    ),
    "convert-name-llama": (
        ["convert", "corenet-to-hf", "model.pt", NEW, "--name", "m-llama"],
        ["m-llama", "llama"],
    ),
    "convert-name-wrong-shape": (
        ["convert", "corenet-to-hf", "model.pt", NEW, "--name", "OpenELM-tiny"],
        ["model.pt"],
    ),
    "convert-to-corenet-onto-run-config": (
        ["convert", "hf-to-corenet", M, "run/config.yaml"],
        ["run/config.yaml"],
    ),
    "convert-to-corenet-onto-file": (
        ["convert", "hf-to-corenet", M, "file.txt"],
        ["file.txt", "--force"],
    ),
    "convert-to-corenet-inside-input": (
        ["convert", "hf-to-corenet", "converted", "converted/x.pt"],
        ["converted/x.pt", "inside the input"],
    ),
    "convert-to-corenet-missing-tensor": (
        ["convert", "hf-to-corenet", "m-missing-tensor", NEW_PT],
        ["transformer.layers.0.ffn.proj_1.weight"],
    ),
    "convert-to-corenet-llama": (
        ["convert", "hf-to-corenet", "m-llama", NEW_PT],
        ["m-llama", "llama"],
    ),
    "convert-to-corenet-link-in-run": (
        ["convert", "hf-to-corenet", M, "run/outside"],
        ["run/outside", "belongs to the run"],
    ),
    "convert-no-direction": (["convert", "model.pt", NEW], ["convert"]),
    "convert-peft-alpha-nan": (  # once written into adapter_config.json as NaN
        ["convert", "corenet-peft-to-hf", "model.pt", NEW, "--name", M, "--lora-alpha", "nan"],
        ["--lora-alpha nan", "positive finite"],
    ),
    "convert-peft-alpha-inf": (
        ["convert", "corenet-peft-to-hf", "model.pt", NEW, "--name", M, "--lora-alpha", "inf"],
        ["--lora-alpha inf", "positive finite"],
    ),
    # -- data inspect --------------------------------------------------------------------------
    "data-max-documents-negative": ([*INSPECT, "--max-documents", "-1"], ["--max-documents"]),
    "data-samples-negative": ([*INSPECT, "--samples", "-1"], ["--samples"]),
    "data-split-unknown": ([*INSPECT, "--split", "test"], ["--split"]),
    "data-config-missing": (["data", "inspect", "nowhere.yaml"], ["nowhere.yaml"]),
    "data-config-binary": (["data", "inspect", "binary.yaml"], ["binary.yaml"]),
    "data-config-list": (["data", "inspect", "list.yaml"], ["list.yaml"]),
    "data-config-syntax": (["data", "inspect", "syntax.yaml"], ["syntax.yaml"]),
    "data-config-directory": (["data", "inspect", "mine"], ["mine", "directory"]),
    "data-unknown-key": (["data", "inspect", "bad-key.yaml"], ["bad-key.yaml", "data.bogus"]),
    "data-missing-shard": (["data", "inspect", "no-shard.yaml"], ["nowhere/x.jsonl"]),
    "data-bad-row": (["data", "inspect", "bad-rows.yaml"], ["rows.jsonl"]),
    # -- tokenizer train -----------------------------------------------------------------------
    "tokenizer-vocab-huge": (
        [*TOKENIZE, "--vocab-size", "1000000000", "--out", NEW],
        ["--vocab-size"],
    ),
    "tokenizer-vocab-tiny": ([*TOKENIZE, "--vocab-size", "10", "--out", NEW], ["--vocab-size"]),
    "tokenizer-vocab-text": ([*TOKENIZE, "--vocab-size", "big", "--out", NEW], ["--vocab-size"]),
    "tokenizer-out-file": (
        [*TOKENIZE, "--vocab-size", "300", "--out", "file.txt"],
        ["file.txt", "not a directory"],
    ),
    "tokenizer-out-run": ([*TOKENIZE, "--vocab-size", "300", "--out", "run"], ["run"]),
    "tokenizer-out-run-tokenizer": (
        [*TOKENIZE, "--vocab-size", "300", "--out", "run/tokenizer"],
        ["run/tokenizer"],
    ),
    "tokenizer-out-foreign": (
        [*TOKENIZE, "--vocab-size", "300", "--out", "mine"],
        ["mine", "not an elmforge output"],
    ),
    "tokenizer-out-again": (
        [*TOKENIZE, "--vocab-size", "300", "--out", "tok-out"],
        ["tok-out", "--force"],
    ),
    "tokenizer-out-under-file": (
        [*TOKENIZE, "--vocab-size", "300", "--out", "file.txt/t"],
        ["file.txt"],
    ),
    "tokenizer-data-missing": (
        ["tokenizer", "train", "--data", "nowhere.yaml", "--vocab-size", "300", "--out", NEW],
        ["nowhere.yaml"],
    ),
    "tokenizer-max-documents-0": (
        [*TOKENIZE[:3], "x", "--vocab-size", "300", "--out", NEW, "--max-documents", "0"],
        ["--max-documents"],
    ),
    # -- pretrain: configs ---------------------------------------------------------------------
    "pretrain-config-binary": (["pretrain", "--config", "binary.yaml", "--out", NEW], ["binary"]),
    "pretrain-config-missing": (["pretrain", "--config", "no.yaml", "--out", NEW], ["no.yaml"]),
    "pretrain-config-directory": (["pretrain", "--config", "mine", "--out", NEW], ["mine"]),
    "pretrain-config-syntax": (["pretrain", "--config", "syntax.yaml", "--out", NEW], ["syntax"]),
    "pretrain-config-list": (["pretrain", "--config", "list.yaml", "--out", NEW], ["list.yaml"]),
    "pretrain-config-empty": (
        ["pretrain", "--config", "empty.yaml", "--out", NEW],
        ["empty.yaml", "empty"],
    ),
    "pretrain-unknown-key": (
        ["pretrain", "--config", "bad-key.yaml", "--out", NEW],
        ["data.bogus"],
    ),
    "pretrain-lr-negative": ([*RUN[:3], "--out", NEW, "--optim.lr", "-1"], ["optim.lr"]),
    "pretrain-misspelt-shape": (
        [*RUN[:3], "--out", NEW, "--set", "model.shape.num_layerz=3"],
        ["model.shape.num_layerz"],
    ),
    "pretrain-shape-bad-value": (
        [*RUN[:3], "--out", NEW, "--set", "model.shape.num_transformer_layers=0"],
        ["model.shape"],
    ),
    "pretrain-set-without-value": ([*RUN[:3], "--out", NEW, "--set", "optim.lr"], ["--set"]),
    "pretrain-unknown-flag": ([*RUN[:3], "--out", NEW, "--optim.l", "1e-3"], ["--optim.l"]),
    "pretrain-unknown-model": ([*RUN[:3], "--out", NEW, "--model.name", "GPT-5"], ["model.name"]),
    "pretrain-seed-negative": ([*RUN[:3], "--out", NEW, "--seed", "-1"], ["seed"]),
    "pretrain-bpe-vocab-huge": (
        [*RUN[:3], "--out", NEW, "--data.bpe_vocab_size", "100000000"],
        ["data.bpe_vocab_size"],
    ),
    "pretrain-seq-len-beyond-context": (
        [*RUN[:3], "--out", NEW, "--data.seq_len", "100000"],
        ["data.seq_len"],
    ),
    "pretrain-corenet-bad-override": (
        ["pretrain", "--corenet-config", CORENET_270M, "--out", NEW, "--optim.lr", "-1"],
        ["command-line override", "optim.lr"],
    ),
    "pretrain-corenet-unknown-key": (
        ["pretrain", "--corenet-config", "corenet.yaml", "--out", NEW],
        ["corenet.yaml"],
    ),
    # -- pretrain: where it writes, and resuming -----------------------------------------------
    "pretrain-out-file": ([*RUN[:3], "--out", "file.txt"], ["file.txt", "not a directory"]),
    "pretrain-out-foreign": ([*RUN[:3], "--out", "mine"], ["mine", "notes.txt"]),
    "pretrain-out-under-file": ([*RUN[:3], "--out", "file.txt/run"], ["file.txt"]),
    "pretrain-out-unwritable": ([*RUN[:3], "--out", "/proc/elmforge/run"], ["/proc/elmforge"]),
    "pretrain-out-inside-run": ([*RUN[:3], "--out", "run/checkpoints/x"], ["run/checkpoints/x"]),
    "resume-seq-len-changed": (
        [*RUN, "--data.seq_len", "16"],
        ["data.seq_len 32 -> 16", "--force-resume"],
    ),
    "resume-batch-changed": (
        [*RUN, "--train.micro_batch_size", "3"],
        ["train.micro_batch_size 2 -> 3", "--force-resume"],
    ),
    "resume-tokenizer-changed": ([*RUN, "--data.tokenizer", "tok-400"], ["data.tokenizer"]),
    "resume-shape-changed": (
        [*RUN, "--set", "model.shape.num_transformer_layers=3"],
        ["model.shape", "does not fit"],
    ),
    "resume-past-the-end": ([*RUN, "--schedule.max_steps", "1"], ["schedule.max_steps"]),
    "resume-config-yaml-is-dir": (
        [*RUN[:3], "--out", "run-config-dir"],
        ["run-config-dir/config.yaml", "directory"],
    ),
    "resume-every-checkpoint-pickled": (  # refused as unsafe, never unpickled
        [*RUN[:3], "--out", "run-pickled"],
        ["run-pickled/checkpoints", "none of"],
    ),
    "resume-every-checkpoint-broken": (
        [*RUN[:3], "--out", "run-broken"],
        ["run-broken/checkpoints", "none of"],
    ),
    # -- average -------------------------------------------------------------------------------
    "average-onto-run": (["average", "--last", "2", "run", "--out", "run"], ["run"]),
    "average-onto-run-config": (
        ["average", "--last", "2", "run", "--out", "run/config.yaml"],
        ["run/config.yaml"],
    ),
    "average-out-run-parent": (  # the workspace, which holds the run's checkpoints
        ["average", "--last", "2", "run", "--out", "run/.."],
        ["run/..", "must not contain the input"],
    ),
    "average-out-run-sub-parent": (  # the run itself (inputs from outside it)
        ["average", "averaged", "converted", "--out", "run/sub/.."],
        ["run/sub/..", "run directory"],
    ),
    "average-out-link-in-run": (
        ["average", "--last", "2", "run", "--out", "run/outside"],
        ["run/outside", "belongs to the run"],
    ),
    "average-last-0": (["average", "--last", "0", "run", "--out", NEW], ["--last"]),
    "average-last-too-many": (["average", "--last", "5", "run", "--out", NEW], ["run", "5"]),
    "average-last-two-paths": (["average", "--last", "1", "run", "run", "--out", NEW], ["--last"]),
    "average-again-without-force": (
        ["average", "--last", "2", "run", "--out", "averaged"],
        ["averaged", "--force"],
    ),
    "average-nan": (["average", M, "m-nan", "--out", NEW], ["m-nan", "NaN"]),
    "average-llama": (["average", "m-llama", M, "--out", NEW], ["m-llama", "llama"]),
    "average-shape-mismatch": (["average", M, "m-narrow", "--out", NEW], ["m-narrow"]),
    # -- evaluate ------------------------------------------------------------------------------
    "evaluate-out-file": ([*EVALUATE, "--out", "file.txt"], ["file.txt", "not a directory"]),
    "evaluate-out-run": ([*EVALUATE, "--out", "run"], ["run", "must not contain the input"]),
    "evaluate-out-again": ([*EVALUATE, "--out", "ev"], ["ev", "--force"]),
    "evaluate-out-run-force": (
        [*EVALUATE, "--out", "run", "--force"],
        ["run", "must not contain the input"],
    ),
    "evaluate-out-model-force": ([*EVALUATE, "--out", M, "--force"], [M]),
    "evaluate-out-converted-force": (  # a model directory outside any run: the input itself
        ["evaluate", "converted", *EVALUATE[2:], "--out", "converted", "--force"],
        ["converted", "inside the input"],
    ),
    "evaluate-llm-adapters-out-run-force": (
        [*LLM_ADAPTERS, "--out", "run", "--force"],
        ["run", "must not contain the input"],
    ),
    "evaluate-tasks-empty-item": (
        ["evaluate", M, "--tasks", "arc_easy,,piqa", "--out", NEW],
        ["--tasks", "empty items"],
    ),
    "evaluate-zero-shot-offline": (
        ["evaluate", M, "--suite", "zero-shot", "--out", NEW],
        ["--data-dir"],
    ),
    "evaluate-limit-0": ([*EVALUATE[:4], "--limit", "0", "--out", NEW], ["--limit"]),
    "evaluate-batch-size-0": ([*EVALUATE, "--batch-size", "0", "--out", NEW], ["--batch-size"]),
    "evaluate-unknown-suite": (["evaluate", M, "--suite", "all", "--out", NEW], ["--suite"]),
    "evaluate-compare-one": (["evaluate", "--compare", "ev"], ["--compare"]),
    "evaluate-compare-not-results": (
        ["evaluate", "--compare", "results.json", "ev", "--out", NEW],
        ["results.json"],
    ),
    "evaluate-compare-onto-inputs": (
        ["evaluate", "--compare", "ev", "ev", "--out", "ev"],
        ["ev"],
    ),
    # -- demo ----------------------------------------------------------------------------------
    "demo-out-file": (["demo", "--out", "file.txt"], ["file.txt", "not a directory"]),
    "demo-out-run": (["demo", "--out", "run"], ["run"]),
    "demo-average-last-0": (["demo", "--out", NEW, "--average-last", "0"], ["--average-last"]),
    "demo-vocab-size-0": (["demo", "--out", NEW, "--vocab-size", "0"], ["--vocab-size"]),
    "demo-lr-negative": (["demo", "--out", NEW, "--optim.lr", "-1"], ["optim.lr"]),
}


def _command_line(case: str) -> list[str]:
    return [arg.replace(NEW, f"new-{case}") for arg in CASES[case][0]]


@pytest.fixture(scope="module")
def outcomes(ws: Path, before: dict) -> dict[str, subprocess.CompletedProcess]:
    """Every case's process, run a few at a time (each is mostly Python start-up and imports)."""
    env = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # fmt: skip

    def run(case: str) -> subprocess.CompletedProcess:
        return run_elmforge(*_command_line(case), cwd=ws, env=env, timeout=300)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return dict(zip(CASES, pool.map(run, CASES)))


def test_the_table_covers_every_verb_on_main() -> None:
    verbs = {args[0] for args, _ in CASES.values()}
    assert verbs >= {"demo", "info", "generate", "convert", "data", "tokenizer", "pretrain",
                     "average", "evaluate"}  # fmt: skip
    assert len(CASES) >= 100


# The first case waits for the whole table (a few minutes on 2 idle cores, more when shared).
@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clean_line(outcomes: dict, case: str) -> None:
    assert_clean_error(outcomes[case], *CASES[case][1])


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_no_bad_input_changed_an_output_or_left_anything(ws: Path, before: dict, outcomes: dict):
    after = _snapshot(ws)
    changed = [
        f"{name}/{path}"
        for name in PROTECTED
        for path in sorted(set(before[name]) | set(after[name]))
        if before[name].get(path) != after[name].get(path)
    ]
    assert changed == []
    assert _temporaries(ws) == []
    assert sorted(p.name for p in ws.iterdir() if p.name.startswith("new-")) == []
