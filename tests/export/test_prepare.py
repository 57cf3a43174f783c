"""Complete model directories: ``elmforge prepare`` on Apple's bare hub layout, and every
directory elmforge writes (pretraining's final/ and checkpoints, average, convert) carries the
tokenizer files, the generation config and, for -Instruct models, Apple's chat template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from elmforge.cli.main import main
from elmforge.data.chat import APPLE_CHAT_TEMPLATE, render_chat
from elmforge.errors import ElmforgeError
from elmforge.export.prepare import completeness, prepare_model_dir
from elmforge.modeldir.complete import complete_model_dir, current_chat_template
from tests.cli_support import run_elmforge, tree_snapshot
from tests.export.helpers import PROBE_TEXTS, make_model, make_model_dir

COMPLETE = {"tokenizer.json": True, "tokenizer_config.json": True, "tokenizer.model": True,
            "generation_config.json": True}  # fmt: skip


def apple_layout(path: Path, vocab_size: int = 32000, seed: int = 0) -> Path:
    """A directory laid out like Apple's hub repos: config.json (with its remote-code auto_map
    and transformers 4.x dtype field) and model.safetensors, nothing else."""
    model = make_model("uniform-2-layers", vocab_size, seed=seed)
    model.save_pretrained(path)
    for extra in path.iterdir():
        if extra.name not in ("config.json", "model.safetensors"):
            extra.unlink()
    config = json.loads((path / "config.json").read_text())
    config.pop("dtype", None)
    config |= {"torch_dtype": "float32", "transformers_version": "4.39.3", "auto_map": {
        "AutoConfig": "configuration_openelm.OpenELMConfig",
        "AutoModelForCausalLM": "modeling_openelm.OpenELMForCausalLM"}}  # fmt: skip
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


@pytest.mark.slow
def test_prepare_makes_apple_s_layout_work_everywhere_with_no_flags(
    llama2_tokenizer_path, tmp_path, monkeypatch, capsys, no_dev_fallback
):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    model_dir = apple_layout(tmp_path / "OpenELM-270M-Instruct")
    # As on a user's machine (no ../shared/data fallback), nothing installed: nothing found.
    assert main(["prepare", str(model_dir)]) == 2
    assert "elmforge tokenizer install" in capsys.readouterr().err
    cache = tmp_path / "cache"
    (cache / "elmforge").mkdir(parents=True)
    shutil.copyfile(llama2_tokenizer_path, cache / "elmforge" / "llama2-tokenizer.model")
    env = {"XDG_CACHE_HOME": str(cache)}  # the user cache, as a user would set it up

    proc = run_elmforge("prepare", model_dir, env=env)
    assert proc.returncode == 0, proc.stderr
    assert completeness(model_dir) == {**COMPLETE, "chat_template": True}
    prepared = tree_snapshot(model_dir)
    prepare_model_dir(model_dir)
    assert tree_snapshot(model_dir) == prepared  # complete already: nothing rewritten

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = spm.SentencePieceProcessor(model_file=str(llama2_tokenizer_path))
    for text in PROBE_TEXTS:
        assert tokenizer(text).input_ids == [1, *processor.encode(text)], text
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tokenizer.chat_template == APPLE_CHAT_TEMPLATE
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) \
        == render_chat(messages, add_generation_prompt=True)  # fmt: skip

    # The other verbs through the CLI's main in this process (the same code, no start-up cost).
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    capsys.readouterr()
    assert main(["generate", str(model_dir), "--prompt", "Hello", "--greedy",
                 "--max-new-tokens", "3"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("Hello")
    assert main(["evaluate", str(model_dir), "--perplexity", "builtin:python-docs", "--limit", "1",
                 "--context-length", "64", "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "eval" / "results.json").read_text())
    assert main(["convert", "hf-to-gguf", str(model_dir), str(tmp_path / "m.gguf")]) == 0
    from gguf import GGUFReader

    fields = GGUFReader(tmp_path / "m.gguf").fields
    assert fields["tokenizer.chat_template"].contents() == APPLE_CHAT_TEMPLATE
    assert len(fields["tokenizer.ggml.tokens"].contents()) == 32000


def test_complete_model_dir_writes_what_is_missing(sp_model, tmp_path):
    model_dir = tmp_path / "base"
    make_model("scaled-3-layers", 384).save_pretrained(model_dir)
    (model_dir / "generation_config.json").unlink()
    complete_model_dir(model_dir, sp_model)
    assert completeness(model_dir) == {**COMPLETE, "chat_template": False}  # not -Instruct
    assert (model_dir / "tokenizer.model").read_bytes() == sp_model.read_bytes()
    settings = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert settings["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert settings["add_bos_token"] is True and settings["add_eos_token"] is False
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["bos_token_id"] == 1 and generation["eos_token_id"] == 2

    before = tree_snapshot(model_dir)
    complete_model_dir(model_dir)  # already complete: unchanged
    assert tree_snapshot(model_dir) == before
    complete_model_dir(model_dir, chat_template="{{ messages[0]['content'] }}")
    settings = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert settings["chat_template"] == "{{ messages[0]['content'] }}"
    assert (model_dir / "chat_template.jinja").read_text() == "{{ messages[0]['content'] }}"


def test_lone_tokenizer_model_is_converted_and_instruct_gets_apple_s_template(sp_model, tmp_path):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    model_dir = apple_layout(tmp_path / "tiny-Instruct", vocab_size=384)
    shutil.copyfile(sp_model, model_dir / "tokenizer.model")
    complete_model_dir(model_dir, require_tokenizer=True)
    assert completeness(model_dir) == {**COMPLETE, "chat_template": True}
    assert (model_dir / "chat_template.jinja").read_text() == APPLE_CHAT_TEMPLATE
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = spm.SentencePieceProcessor(model_file=str(sp_model))
    for text in PROBE_TEXTS:
        assert tokenizer(text).input_ids == [1, *processor.encode(text)], text


def test_prepare_out_writes_a_complete_copy_and_leaves_the_source(sp_model, tmp_path):
    source = apple_layout(tmp_path / "bare", vocab_size=384)
    before = tree_snapshot(source)
    out = prepare_model_dir(source, out=tmp_path / "complete", tokenizer=sp_model)
    assert tree_snapshot(source) == before
    assert completeness(out) == {**COMPLETE, "chat_template": False}
    assert (out / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    with pytest.raises(ElmforgeError, match="force replaces it"):
        prepare_model_dir(source, out=out, tokenizer=sp_model)
    assert prepare_model_dir(source, out=out, tokenizer=sp_model, force=True) == out


def test_training_outputs_and_averages_are_complete(sp_model, tmp_path):
    from elmforge.data.tokenizer import load_tokenizer
    from elmforge.files import output_verb
    from elmforge.modeldir.save import save_model_dir
    from elmforge.train.checkpoint import average_checkpoints

    tokenizer = load_tokenizer(sp_model)
    dirs = []
    for seed in (0, 1):
        model = make_model("scaled-3-layers", 384, seed=seed)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        dirs.append(tmp_path / f"step-{seed}")
        save_model_dir(model.config, state, dirs[-1], tokenizer)
        assert completeness(dirs[-1]) == {**COMPLETE, "chat_template": False}
    # Another verb's marker and stale weights in the last directory are not carried over.
    (dirs[-1] / ".elmforge-output").write_text('{"verb": "prepare"}\n')
    (dirs[-1] / "model.gguf").write_bytes(b"GGUF stale")
    averaged = average_checkpoints(dirs, tmp_path / "averaged")
    assert completeness(averaged) == {**COMPLETE, "chat_template": False}
    # The marker is average's own (what lets `average --force` replace it), not prepare's.
    assert output_verb(averaged) == "average" and not (averaged / "model.gguf").exists()


def test_corenet_to_hf_output_is_complete(sp_model, tmp_path):
    from elmforge.model.convert import hf_to_corenet_state_dict

    model = make_model("scaled-3-layers", 384)
    torch.save(hf_to_corenet_state_dict(model), tmp_path / "ckpt.pt")
    (tmp_path / "config").mkdir()
    model.config.save_pretrained(tmp_path / "config")
    argv = ["convert", "corenet-to-hf", tmp_path / "ckpt.pt", tmp_path / "hf",
            "--name", tmp_path / "config", "--tokenizer", sp_model]  # fmt: skip
    assert main([str(arg) for arg in argv]) == 0
    assert completeness(tmp_path / "hf") == {**COMPLETE, "chat_template": False}


def test_corenet_to_hf_of_an_instruct_model_gets_apple_s_template(sp_model, tmp_path):
    from elmforge.export.prepare import corenet_to_model_dir
    from elmforge.model.convert import hf_to_corenet_state_dict

    model = make_model("scaled-3-layers", 384)
    torch.save(hf_to_corenet_state_dict(model), tmp_path / "ckpt.pt")
    model.config.save_pretrained(tmp_path / "config")
    out = corenet_to_model_dir(tmp_path / "ckpt.pt", tmp_path / "tiny-Instruct",
                               tmp_path / "config", sp_model)  # fmt: skip
    assert completeness(out) == {**COMPLETE, "chat_template": True}
    assert (out / "chat_template.jinja").read_text() == APPLE_CHAT_TEMPLATE


def test_instruct_is_read_from_the_run_and_name_or_path(sp_model, tmp_path):
    from elmforge.modeldir.complete import is_instruct

    run = tmp_path / "OpenELM-sft-Instruct"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    for inside in ("final", "checkpoints/step-00000002/model", "averaged"):
        assert is_instruct(run / inside), inside
    assert not is_instruct(tmp_path / "plain" / "final")
    assert is_instruct(tmp_path / "m", {"_name_or_path": "apple/OpenELM-270M-Instruct"})
    assert not is_instruct(tmp_path / "m", {"_name_or_path": "apple/OpenELM-270M"})

    # A run's checkpoint model/ is completed with Apple's template, as its name says.
    from elmforge.data.tokenizer import load_tokenizer
    from elmforge.modeldir.save import save_model_dir

    model = make_model("scaled-3-layers", 384)
    directory = run / "checkpoints" / "step-00000002" / "model"
    save_model_dir(model.config, model.state_dict(), directory, load_tokenizer(sp_model))
    assert current_chat_template(directory) == APPLE_CHAT_TEMPLATE


def test_new_tokenizer_files_keep_the_directory_s_template(sp_model, bpe_tokenizer_dir, tmp_path):
    """A template that lives only in tokenizer_config.json (older writers) survives replacing the
    tokenizer files, in place and in the staging copy hf-to-gguf completes."""
    from gguf import GGUFReader

    from elmforge.export.gguf import hf_to_gguf

    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    model_dir = tmp_path / "m"
    make_model("scaled-3-layers", 384).save_pretrained(model_dir)
    shutil.copyfile(sp_model, model_dir / "tokenizer.model")
    (model_dir / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    before = tree_snapshot(model_dir)
    out = hf_to_gguf(model_dir, tmp_path / "m.gguf")
    assert tree_snapshot(model_dir) == before
    assert GGUFReader(out).fields["tokenizer.chat_template"].contents() == template
    complete_model_dir(model_dir, bpe_tokenizer_dir)
    assert current_chat_template(model_dir) == template
    assert (
        json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"] == template
    )


def test_an_interrupted_tokenizer_write_keeps_the_old_tokenizer_model(
    sp_model, bpe_tokenizer_dir, tmp_path, monkeypatch
):
    """Replacing a SentencePiece tokenizer by a BPE one removes tokenizer.model (it would mislead
    llama.cpp), but only once the new files are in: a failed rename leaves it where it was."""
    import os

    model_dir = make_model_dir(tmp_path / "m", sp_model)
    before = tree_snapshot(model_dir)
    real_replace = os.replace

    def full_disk(source, target):
        if Path(target).parent == model_dir:
            raise OSError(28, "No space left on device")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(ElmforgeError, match="disk is full"):
        complete_model_dir(model_dir, bpe_tokenizer_dir)
    assert tree_snapshot(model_dir) == before  # tokenizer.model included; no staging left
    monkeypatch.setattr(os, "replace", real_replace)
    complete_model_dir(model_dir, bpe_tokenizer_dir)
    assert not (model_dir / "tokenizer.model").exists()
    assert completeness(model_dir) == {**COMPLETE, "tokenizer.model": False, "chat_template": False}
