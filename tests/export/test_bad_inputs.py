"""Bad input to `convert hf-to-gguf / gguf-to-hf / hf-to-mlx` and `prepare`: one line naming the
file or option, exit 2, no traceback, nothing half-written and no input changed.

The table runs through the CLI's own ``main`` in this process (the path a real invocation takes,
minus interpreter start-up: 2 cores); one row also runs as a real subprocess, and the prepare
test runs `elmforge prepare` as one.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from elmforge.cli.main import main
from elmforge.export.gguf import hf_to_gguf
from tests.cli_support import assert_clean_error, run_elmforge, tree_snapshot
from tests.export.helpers import make_model, make_model_dir

gguf = pytest.importorskip("gguf")


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


def test_missing_llama2_tokenizer_says_how_to_provide_it(tmp_path, monkeypatch, capsys):
    import elmforge.data.tokenizer

    model_dir = tmp_path / "OpenELM-bare"
    make_model("uniform-2-layers", 32000).save_pretrained(model_dir)
    monkeypatch.setattr(elmforge.data.tokenizer, "default_tokenizer_path", lambda: None)
    before = tree_snapshot(model_dir)
    for argv in (["prepare", str(model_dir)],
                 ["convert", "hf-to-gguf", str(model_dir), str(tmp_path / "m.gguf")]):  # fmt: skip
        line = assert_clean_error(run_in_process(argv, capsys), "--tokenizer")
        assert "$ELMFORGE_LLAMA2_TOKENIZER" in line and "llama2-tokenizer.model" in line
    assert tree_snapshot(model_dir) == before
