"""LoRA and DoRA through PEFT: only adapters train, PEFT loads our adapter directories, merged
models compute what the adapter did (relative error < 1e-4) and load in transformers and mlx-lm."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from elmforge.errors import CheckpointError, ConfigError
from elmforge.finetune import adapters
from elmforge.finetune.config import DEFAULT_TARGETS, FinetuneConfig
from elmforge.finetune.trainer import FinetuneJob, finetune
from elmforge.modeldir import adapters as applied
from tests.finetune.conftest import instruction_rows, make_model_dir, write_json
from tests.shapes import micro_config

REL_TOL = 1e-4


def relative_error(ours: torch.Tensor, theirs: torch.Tensor | np.ndarray) -> float:
    theirs = torch.as_tensor(np.asarray(theirs))
    return float((ours - theirs).abs().max() / ours.abs().max())


def _micro():
    from elmforge.model.modeling import OpenELMForCausalLM

    return OpenELMForCausalLM(micro_config())


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_only_adapter_parameters_train(method: str) -> None:
    model = _micro()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = adapters.add_adapter(
        model, adapters.lora_config(method, 4, 8, 0.1, DEFAULT_TARGETS)
    )
    trainable = adapters.trainable_parameters(peft_model)
    assert trainable and all("lora_" in name for name in trainable)
    magnitudes = [n for n in trainable if "lora_magnitude_vector" in n]
    linear_targets = 4 * model.config.num_transformer_layers
    assert len(magnitudes) == (linear_targets + 1 if method == "dora" else 0)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    for _ in range(3):
        peft_model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    base = peft_model.get_base_model()
    for name, value in base.state_dict().items():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(value, original[key]), name
    changed = [n for n, p in trainable.items() if not torch.equal(p, before[n])]
    assert set(magnitudes) <= set(changed)
    assert any("lora_B" in n for n in changed)


def test_a_target_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"--lora.targets: 'q_proj' is not a linear"):
        adapters.add_adapter(_micro(), adapters.lora_config("lora", 4, 8, 0.0, ["q_proj"]))


@pytest.fixture(scope="module")
def dora_run(tmp_path_factory, base_model_dir) -> Path:
    root = tmp_path_factory.mktemp("dora")
    data = write_json(root / "facts.json", instruction_rows())
    config = FinetuneConfig.load(None, ["peft=dora", "lora.r=4", "lora.alpha=8", "optim.lr=1e-2",
                                        "schedule.max_steps=6", "train.micro_batch_size=4",
                                        "log.progress=none", "train.num_threads=1"])  # fmt: skip
    finetune(FinetuneJob("sft", str(base_model_dir), str(data)), config, root / "run")
    return root / "run"


def _adapter_and_merged_logits(run: Path, base_model_dir: Path, ids: torch.Tensor):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import elmforge  # noqa: F401  (registers OpenELM)

    base = AutoModelForCausalLM.from_pretrained(base_model_dir)
    peft_model = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(run / "final").eval()
    with torch.no_grad():
        return peft_model(input_ids=ids).logits, merged(input_ids=ids).logits


def test_peft_loads_the_adapter_and_merged_logits_match(dora_run, base_model_dir) -> None:
    ids = torch.randint(0, 400, (2, 24))
    adapter_logits, merged_logits = _adapter_and_merged_logits(dora_run, base_model_dir, ids)
    assert relative_error(adapter_logits, merged_logits) < REL_TOL
    config = json.loads((dora_run / "final" / "config.json").read_text())
    # The embedding carries an adapter: the merged head is the untouched base embedding.
    assert config["share_input_output_layers"] is False
    adapter_config = json.loads((dora_run / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["use_dora"] is True and adapter_config["r"] == 4


def test_dora_magnitude_is_saved_and_trained(dora_run, base_model_dir) -> None:
    from safetensors.torch import load_file

    adapter = load_file(dora_run / "adapter" / applied.ADAPTER_WEIGHTS)
    base = load_file(base_model_dir / "model.safetensors")
    key = "base_model.model.transformer.layers.0.attn.qkv_proj.lora_magnitude_vector"
    assert key in adapter
    initial = base["transformer.layers.0.attn.qkv_proj.weight"].norm(dim=1)  # DoRA's init
    assert adapter[key].shape == initial.shape and not torch.allclose(adapter[key], initial)


def test_merged_model_runs_in_mlx_lm(dora_run, base_model_dir) -> None:
    mx = pytest.importorskip("mlx.core", reason="mlx[cpu] is a test dependency")
    mlx_utils = pytest.importorskip("mlx_lm.utils")
    mlx_model, _ = mlx_utils.load_model(dora_run / "final")
    ids = torch.randint(0, 400, (1, 17))
    adapter_logits, _ = _adapter_and_merged_logits(dora_run, base_model_dir, ids)
    theirs = np.array(mlx_model(mx.array(ids.numpy())).astype(mx.float32))
    assert relative_error(adapter_logits, theirs) < REL_TOL


def test_an_adapter_for_another_shape_is_refused(dora_run, tmp_path, bpe_tokenizer) -> None:
    from elmforge.model.convert import load_pretrained

    deeper = make_model_dir(tmp_path / "deeper", bpe_tokenizer, num_transformer_layers=3)
    with pytest.raises(CheckpointError, match="adapter"):
        applied.load_adapter(load_pretrained(deeper), dora_run / "adapter")
    wider = make_model_dir(tmp_path / "wider", bpe_tokenizer, model_dim=96)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        applied.load_adapter(load_pretrained(wider), dora_run / "adapter")


def test_lora_merge_keeps_a_tied_head_without_an_embedding_adapter() -> None:
    model = _micro().eval()
    peft_model = adapters.add_adapter(
        copy.deepcopy(model), adapters.lora_config("lora", 4, 8, 0.0, ["qkv_proj", "proj_2"])
    )
    with torch.no_grad():
        for param in adapters.trainable_parameters(peft_model).values():
            param.add_(0.05 * torch.randn_like(param))
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        expected = peft_model.eval()(input_ids=ids).logits
        merged = applied.merge_adapter(peft_model)
        assert relative_error(expected, merged(input_ids=ids).logits) < REL_TOL
    assert merged.config.share_input_output_layers is True
    assert merged.lm_head.weight is merged.transformer.token_embeddings.weight


def test_target_modules_are_written_sorted(tmp_path: Path) -> None:
    """PEFT keeps target_modules as a set, written in hash order that changed from process to
    process: a finished run re-run rewrote adapter_config.json differently. Now sorted."""
    targets = ["qkv_proj", "out_proj", "proj_1", "proj_2", "token_embeddings"]
    peft_model = adapters.add_adapter(_micro(), adapters.lora_config("lora", 4, 8, 0.0, targets))
    adapters.save_adapter(peft_model, tmp_path / "adapter", "base")
    written = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert written["target_modules"] == sorted(targets)
    assert written["base_model_name_or_path"] == "base"
