"""Bad input to `convert hf-to-gguf / gguf-to-hf / hf-to-mlx` and `prepare`: one line naming the
file or option, exit 2, no traceback, nothing half-written and no input changed.

The table runs through the CLI's own ``main`` in this process (the path a real invocation takes,
minus interpreter start-up: 2 cores); one row also runs as a real subprocess, and the prepare
test runs `elmforge prepare` as one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from elmforge.cli.main import main
from elmforge.export.gguf import hf_to_gguf
from tests.cli_support import assert_clean_error, run_elmforge, tree_snapshot
from tests.export.helpers import make_model, make_model_dir

gguf = pytest.importorskip("gguf")

# The keys config_from_gguf reads, for a 1-block model (head_dim 4, GQA 2).
GOOD_KEYS = {
    "openelm.block_count": 1,
    "openelm.embedding_length": 8,
    "openelm.attention.head_count": [2],
    "openelm.attention.head_count_kv": [1],
    "openelm.feed_forward_length": [16],
    "openelm.attention.key_length": 4,
    "openelm.context_length": 64,
    "openelm.rope.freq_base": 10000.0,
    "openelm.attention.layer_norm_rms_epsilon": 1e-6,
}


def metadata_gguf(path: Path, embedding_shape: tuple[int, ...] = (16, 8), **changes) -> Path:
    """An OpenELM GGUF of GOOD_KEYS with ``changes`` (dots written as ``__``) and one tensor."""
    import numpy as np

    keys = {**GOOD_KEYS, **{name.replace("__", "."): value for name, value in changes.items()}}
    writer = gguf.GGUFWriter(path, arch="openelm")
    for key, value in keys.items():
        if isinstance(value, list):
            writer.add_array(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, value)
    writer.add_tensor("token_embd.weight", np.zeros(embedding_shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, sp_model: Path) -> Path:
    """Inputs of every row, built once: a model, GGUFs good and bad, a run, odd directories."""
    root = tmp_path_factory.mktemp("bad-inputs")
    model = make_model_dir(root / "model", sp_model)
    good = hf_to_gguf(model, root / "good.gguf", "f16")
    data = good.read_bytes()
    (root / "truncated.gguf").write_bytes(data[: len(data) // 2])
    (root / "text.gguf").write_text("not a gguf file\n")
    writer = gguf.GGUFWriter(root / "llama.gguf", arch="llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", make_model("scaled-1-layer", 8).transformer
                      .token_embeddings.weight.detach().numpy())  # fmt: skip
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    # Metadata that used to escape as tracebacks (ZeroDivisionError, ValueError, IndexError).
    metadata_gguf(root / "zero-heads.gguf", openelm__attention__head_count=[0])
    metadata_gguf(root / "text-count.gguf", openelm__block_count="three")
    metadata_gguf(root / "flat-embedding.gguf", embedding_shape=(128,))
    metadata_gguf(root / "text-bos.gguf", tokenizer__ggml__bos_token_id="<s>")
    metadata_gguf(root / "many-blocks.gguf", openelm__block_count=10**9)
    assert main(["convert", "gguf-to-hf", str(good), str(root / "from-gguf")]) == 0
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("mine\n")
    make_model_dir(root / "untied", sp_model, share_input_output_layers=False)
    bare = root / "bare"
    make_model("scaled-3-layers", 384).save_pretrained(bare)
    (bare / "generation_config.json").unlink()
    llama = root / "not-openelm"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (root / "no-weights").mkdir()
    (root / "no-weights" / "config.json").write_text((bare / "config.json").read_text())
    broken = root / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        (broken / name).write_bytes((model / name).read_bytes())
    (broken / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:5000])
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    make_model_dir(run / "checkpoints" / "step-00000002" / "model", sp_model)
    return root


Row = tuple[str, Callable[[Path], list[str]], tuple[str, ...]]
ROWS: list[Row] = [
    ("gguf of another architecture", lambda w: ["convert", "gguf-to-hf", f"{w}/llama.gguf",
     f"{w}/out"], ("llama.gguf", "'llama'", "not OpenELM")),
    ("truncated gguf", lambda w: ["convert", "gguf-to-hf", f"{w}/truncated.gguf", f"{w}/out"],
     ("truncated.gguf", "truncated")),
    ("not a gguf", lambda w: ["convert", "gguf-to-hf", f"{w}/text.gguf", f"{w}/out"],
     ("text.gguf", "not a readable GGUF")),
    ("missing gguf", lambda w: ["convert", "gguf-to-hf", f"{w}/none.gguf", f"{w}/out"],
     ("none.gguf", "no such GGUF file")),
    ("gguf with zero heads", lambda w: ["convert", "gguf-to-hf", f"{w}/zero-heads.gguf",
     f"{w}/out"], ("zero-heads.gguf", "openelm.attention.head_count is 0")),
    ("gguf with a text block count", lambda w: ["convert", "gguf-to-hf",
     f"{w}/text-count.gguf", f"{w}/out"], ("text-count.gguf", "openelm.block_count is 'three'")),
    ("gguf with a 1-D embedding", lambda w: ["convert", "gguf-to-hf",
     f"{w}/flat-embedding.gguf", f"{w}/out"], ("flat-embedding.gguf", "token_embd.weight has 1")),
    ("gguf with a text bos id", lambda w: ["convert", "gguf-to-hf", f"{w}/text-bos.gguf",
     f"{w}/out"], ("text-bos.gguf", "tokenizer.ggml.bos_token_id is '<s>'")),
    ("gguf with 10^9 blocks", lambda w: ["convert", "gguf-to-hf", f"{w}/many-blocks.gguf",
     f"{w}/out"], ("many-blocks.gguf", "block_count 1000000000")),
    ("gguf-to-hf over its earlier output", lambda w: ["convert", "gguf-to-hf",
     f"{w}/good.gguf", f"{w}/from-gguf"], ("from-gguf", "--force replaces it")),
    ("gguf-to-hf over a foreign directory", lambda w: ["convert", "gguf-to-hf",
     f"{w}/good.gguf", f"{w}/foreign"], ("foreign", "not an elmforge output")),
    ("gguf-to-hf into its input", lambda w: ["convert", "gguf-to-hf", f"{w}/good.gguf",
     f"{w}/good.gguf"], ("good.gguf", "inside the input")),
    ("gguf-to-hf unknown dtype", lambda w: ["convert", "gguf-to-hf", f"{w}/good.gguf",
     f"{w}/out", "--dtype", "int8"], ("--dtype int8",)),
    ("unknown --type", lambda w: ["convert", "hf-to-gguf", f"{w}/model", f"{w}/x.gguf",
     "--type", "q4_k"], ("--type q4_k", "q8_0")),
    ("gguf inside the model", lambda w: ["convert", "hf-to-gguf", f"{w}/model",
     f"{w}/model/x.gguf"], ("x.gguf", "inside the input")),
    ("existing gguf without --force", lambda w: ["convert", "hf-to-gguf", f"{w}/model",
     f"{w}/good.gguf"], ("good.gguf", "--force replaces it")),
    ("untied head", lambda w: ["convert", "hf-to-gguf", f"{w}/untied", f"{w}/x.gguf"],
     ("untied", "share_input_output_layers")),
    ("not a model directory", lambda w: ["convert", "hf-to-gguf", f"{w}/foreign",
     f"{w}/x.gguf"], ("foreign", "no config.json")),
    ("run without final/", lambda w: ["convert", "hf-to-gguf", f"{w}/run", f"{w}/x.gguf"],
     ("run", "final/", "step-00000002")),
    ("no tokenizer, not LLaMA-2's vocabulary", lambda w: ["convert", "hf-to-gguf",
     f"{w}/bare", f"{w}/x.gguf"], ("bare", "--tokenizer")),
    ("truncated safetensors", lambda w: ["convert", "hf-to-gguf", f"{w}/broken",
     f"{w}/x.gguf"], ("model.safetensors", "corrupt or truncated")),
    ("mlx: 3 bits", lambda w: ["convert", "hf-to-mlx", f"{w}/model", f"{w}/mlx",
     "--quantize", "3"], ("--quantize 3",)),
    ("mlx: group size 7", lambda w: ["convert", "hf-to-mlx", f"{w}/model", f"{w}/mlx",
     "--quantize", "4", "--group-size", "7"], ("--group-size 7",)),
    ("mlx inside the model", lambda w: ["convert", "hf-to-mlx", f"{w}/model",
     f"{w}/model/mlx"], ("mlx", "inside the input")),
    ("prepare inside a run", lambda w: ["prepare", f"{w}/run/checkpoints/step-00000002"],
     ("step-00000002", "run directory", "--out")),
    ("prepare --out inside the model", lambda w: ["prepare", f"{w}/bare", "--out",
     f"{w}/bare/complete", "--tokenizer", f"{w}/model/tokenizer.model"],
     ("complete", "inside the input")),
    ("prepare another architecture", lambda w: ["prepare", f"{w}/not-openelm"],
     ("config.json", "'llama'", "openelm")),
    ("prepare without weights", lambda w: ["prepare", f"{w}/no-weights"],
     ("no-weights", "no model weights")),
    ("prepare with no tokenizer to find", lambda w: ["prepare", f"{w}/bare"],
     ("bare", "vocab_size 384", "--tokenizer")),
]  # fmt: skip


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def run_in_process(argv: list[str], capsys) -> subprocess.CompletedProcess:
    code = main(argv)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


@pytest.mark.parametrize("argv, mentions", [row[1:] for row in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_and_changes_nothing(argv, mentions, work, capsys):
    before = tree_snapshot(work)
    assert_clean_error(run_in_process(argv(work), capsys), *mentions)
    assert tree_snapshot(work) == before
    assert not temporaries(work)


@pytest.mark.slow
def test_real_command_fails_the_same_way(work):
    _, argv, mentions = next(row for row in ROWS if row[0] == "truncated gguf")
    before = tree_snapshot(work)
    assert_clean_error(run_elmforge(*argv(work)), *mentions)
    assert tree_snapshot(work) == before


def test_force_replaces_the_same_verb_s_output(work, tmp_path):
    out = tmp_path / "m.gguf"
    assert main(["convert", "hf-to-gguf", str(work / "model"), str(out), "--type", "f32"]) == 0
    size = out.stat().st_size
    assert main(["convert", "hf-to-gguf", str(work / "model"), str(out), "--force"]) == 0
    assert out.stat().st_size < size  # f16 replaced f32
    target = tmp_path / "hf"
    for _ in range(2):
        assert main(["convert", "gguf-to-hf", str(out), str(target), "--force"]) == 0
    assert not temporaries(tmp_path)


def test_force_replaces_only_a_gguf_inside_a_run(work, tmp_path):
    """Files carry no marker: inside a run, --force replaces a GGUF (convert's own kind of file)
    and nothing else."""
    run = tmp_path / "run"
    shutil.copytree(work / "run", run)
    step = run / "checkpoints" / "step-00000002"
    out = run / "model.gguf"
    argv = ["convert", "hf-to-gguf", str(step), str(out), "--type", "f32"]
    assert main(argv) == 0
    size = out.stat().st_size
    assert main([*argv[:-2], "--force"]) == 0  # f16 replaces f32
    assert out.stat().st_size < size
    notes = run / "notes.gguf"
    notes.write_text("the user's notes\n")
    code = main(["convert", "hf-to-gguf", str(step), str(notes), "--force"])
    assert code == 2 and notes.read_text() == "the user's notes\n"


def test_missing_llama2_tokenizer_is_one_message_everywhere(tmp_path, no_dev_fallback, capsys):
    """Export and every verb that loads a model say the same thing about a bare 32000-token
    directory when LLaMA-2's tokenizer cannot be found: the option, the variable, the install."""
    model_dir = tmp_path / "OpenELM-bare"
    make_model("uniform-2-layers", 32000).save_pretrained(model_dir)
    before = tree_snapshot(model_dir)
    messages = set()
    for argv in (["prepare", str(model_dir)],
                 ["convert", "hf-to-gguf", str(model_dir), str(tmp_path / "m.gguf")],
                 ["convert", "hf-to-mlx", str(model_dir), str(tmp_path / "mlx")],
                 ["generate", str(model_dir), "--prompt", "Hi"],
                 ["evaluate", str(model_dir), "--perplexity", "builtin:python-docs",
                  "--out", str(tmp_path / "eval")],
                 ["serve", str(model_dir), "--port", "0"]):  # fmt: skip
        line = assert_clean_error(run_in_process(argv, capsys), "--tokenizer")
        assert "$ELMFORGE_LLAMA2_TOKENIZER" in line and "elmforge tokenizer install" in line
        assert "llama2-tokenizer.model" in line
        messages.add(line.split(": error: ", 1)[1])
    assert len(messages) == 1, messages
    assert tree_snapshot(model_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OpenELM-bare"]
