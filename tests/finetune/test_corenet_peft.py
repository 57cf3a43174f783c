"""Apple's CoreNet LoRA/DoRA checkpoints: a `.pt` named the way CoreNet's LoRA layers name their
tensors converts to a PEFT adapter (and a merged model) that computes what CoreNet computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from elmforge.errors import CheckpointError
from elmforge.finetune.corenet_peft import convert_corenet_peft
from elmforge.model.profile import resolve_config
from tests.cli_support import assert_clean_error, run_elmforge
from tests.finetune.test_adapters import REL_TOL, relative_error

RANK, ALPHA = 4, 8.0
LINEARS = ("attn.qkv_proj", "attn.out_proj", "ffn.proj_1", "ffn.proj_2")


def corenet_peft_checkpoint(base_dir: Path, path: Path, dora: bool) -> dict[str, torch.Tensor]:
    """A CoreNet PEFT state dict built from the base model: base weights renamed
    ``...base_layer.weight``, adapter tensors beside them (adapter name ``lora``), the embedding
    padded to CoreNet's 128-multiple rows and adapted with plain LoRA (also in DoRA runs)."""
    from elmforge.model.convert import hf_to_corenet_state_dict, load_pretrained

    torch.manual_seed(7)
    state = hf_to_corenet_state_dict(load_pretrained(base_dir))
    config = load_pretrained(base_dir).config
    out: dict[str, torch.Tensor] = {}
    targets = ["token_embeddings"] + [
        f"layers.{i}.{name}" for i in range(config.num_transformer_layers) for name in LINEARS
    ]
    for key, value in state.items():
        module = key.removesuffix(".weight")
        out[f"{module}.base_layer.weight" if module in targets else key] = value
    rows, dim = state["token_embeddings.weight"].shape
    out["token_embeddings.lora_embedding_A.lora"] = 0.1 * torch.randn(RANK, rows)
    out["token_embeddings.lora_embedding_B.lora"] = 0.1 * torch.randn(dim, RANK)
    for module in targets[1:]:
        weight = state[f"{module}.weight"]
        a, b = 0.1 * torch.randn(RANK, weight.shape[1]), 0.1 * torch.randn(weight.shape[0], RANK)
        out[f"{module}.lora_A.lora.weight"], out[f"{module}.lora_B.lora.weight"] = a, b
        if dora:
            norm = (weight + ALPHA / RANK * b @ a).norm(dim=1)
            out[f"{module}.lora_magnitude_vector.lora"] = norm * (1 + 0.2 * torch.rand_like(norm))
    torch.save(out, path)
    return out


def corenet_forward_model(base_dir: Path, tensors: dict[str, torch.Tensor]):
    """CoreNet's forward written out by hand as plain weights: W + s B A (LoRA), m / ||V|| V with
    V = W + s B A per output row (DoRA), embedding E + s (B A)^T for the inputs while the tied
    classifier keeps reading the base embedding."""
    from elmforge.model.convert import load_pretrained
    from elmforge.modeldir.adapters import untie_head

    model = load_pretrained(base_dir)
    scaling = ALPHA / RANK
    vocab = model.config.vocab_size
    state = model.state_dict()
    head = state["transformer.token_embeddings.weight"].clone()
    for key in list(state):
        module = key.removeprefix("transformer.").removesuffix(".weight")
        if f"{module}.lora_A.lora.weight" in tensors:
            a, b = tensors[f"{module}.lora_A.lora.weight"], tensors[f"{module}.lora_B.lora.weight"]
            adapted = state[key] + scaling * b @ a
            magnitude = tensors.get(f"{module}.lora_magnitude_vector.lora")
            if magnitude is not None:
                adapted = (magnitude / adapted.norm(dim=1))[:, None] * adapted
            state[key] = adapted
    delta = (
        tensors["token_embeddings.lora_embedding_B.lora"]
        @ tensors["token_embeddings.lora_embedding_A.lora"]
    )
    state["transformer.token_embeddings.weight"] = (
        state["transformer.token_embeddings.weight"] + scaling * delta.T[:vocab]
    )
    model.load_state_dict(state)
    return untie_head(model, head)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_converted_adapter_and_merged_model_compute_corenets_forward(
    method: str, tmp_path: Path, base_model_dir: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import elmforge  # noqa: F401

    pt = tmp_path / f"openelm_{method}_micro.pt"
    tensors = corenet_peft_checkpoint(base_model_dir, pt, dora=method == "dora")
    adapter_dir, merged_dir = tmp_path / "adapter", tmp_path / "merged"
    config = resolve_config(str(base_model_dir))
    convert_corenet_peft(pt, adapter_dir, config, base_name=str(base_model_dir), alpha=ALPHA)
    result = run_elmforge("convert", "corenet-peft-to-hf", str(pt), str(merged_dir), "--name",
                          str(base_model_dir), "--lora-alpha", str(ALPHA), "--merge",
                          "--tokenizer", str(base_model_dir))  # fmt: skip
    assert result.returncode == 0, result.stderr

    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["r"] == RANK and adapter_config["use_dora"] is (method == "dora")
    assert set(adapter_config["target_modules"]) == {"token_embeddings", "qkv_proj", "out_proj",
                                                     "proj_1", "proj_2"}  # fmt: skip
    saved = load_file(adapter_dir / "adapter_model.safetensors")
    assert saved["base_model.model.transformer.token_embeddings.lora_embedding_A"].shape[1] == (
        AutoModelForCausalLM.from_pretrained(base_model_dir).config.vocab_size
    )

    reference = corenet_forward_model(base_model_dir, tensors).eval()
    ids = torch.randint(0, 400, (2, 19))
    base = AutoModelForCausalLM.from_pretrained(base_model_dir)
    peft_model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        assert relative_error(expected, peft_model(input_ids=ids).logits) < REL_TOL
        assert relative_error(expected, merged(input_ids=ids).logits) < REL_TOL
    assert (merged_dir / "adapter" / "adapter_config.json").is_file()
    assert (merged_dir / "tokenizer.json").is_file()


@pytest.mark.slow
def test_a_plain_checkpoint_or_another_shape_is_refused(tmp_path, base_model_dir, bpe_tokenizer):
    from elmforge.model.convert import hf_to_corenet
    from tests.finetune.conftest import make_model_dir

    plain = hf_to_corenet(base_model_dir, tmp_path / "plain.pt")
    result = run_elmforge("convert", "corenet-peft-to-hf", str(plain), str(tmp_path / "o"),
                          "--name", str(base_model_dir))  # fmt: skip
    assert_clean_error(result, str(plain), "token_embeddings.base_layer.weight")
    pt = tmp_path / "peft.pt"
    corenet_peft_checkpoint(base_model_dir, pt, dora=False)
    wider = make_model_dir(tmp_path / "wider", bpe_tokenizer, model_dim=96)
    with pytest.raises(CheckpointError, match="shape"):
        convert_corenet_peft(pt, tmp_path / "o", resolve_config(str(wider)), base_name="w")
    assert not (tmp_path / "o").exists()
