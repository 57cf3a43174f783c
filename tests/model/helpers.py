"""Small builders shared by the model tests."""

from __future__ import annotations

import torch

from elmforge import OpenELMConfig, OpenELMForCausalLM

# Shapes the peer tests sweep: uniform and layer-wise scaled, one and several layers.
SHAPES = {
    "scaled-3-layers": dict(num_transformer_layers=3, model_dim=64, head_dim=16,
                            qkv_multipliers=(0.5, 1.0), ffn_multipliers=(0.5, 4.0)),
    "uniform-2-layers": dict(num_transformer_layers=2, model_dim=64, head_dim=16,
                             qkv_multipliers=1.0, ffn_multipliers=2.0),
    "scaled-1-layer": dict(num_transformer_layers=1, model_dim=96, head_dim=32,
                           qkv_multipliers=(0.5, 1.0), ffn_multipliers=(0.5, 4.0)),
    "scaled-4-layers-gqa2": dict(num_transformer_layers=4, model_dim=128, head_dim=32,
                                 num_gqa_groups=2, qkv_multipliers=(0.25, 1.0),
                                 ffn_multipliers=(1.0, 3.0)),
}  # fmt: skip
COMMON = dict(vocab_size=300, num_gqa_groups=4, ffn_dim_divisor=32, max_context_length=128,
              rope_max_length=128)  # fmt: skip


def make_config(shape: str, **overrides) -> OpenELMConfig:
    return OpenELMConfig(**{**COMMON, **SHAPES[shape], **overrides})


def make_model(shape: str = "scaled-3-layers", seed: int = 0, **overrides) -> OpenELMForCausalLM:
    torch.manual_seed(seed)
    model = OpenELMForCausalLM(make_config(shape, **overrides)).eval()
    # Norm weights start at 1; perturb them so a mixed-up norm cannot pass unnoticed.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(0.1 * torch.randn_like(param))
    # Random weights emit eos early; decode the full length so every step is compared.
    model.generation_config.eos_token_id = None
    return model


def greedy_without_cache(
    model: OpenELMForCausalLM, prompt: torch.Tensor, steps: int
) -> torch.Tensor:
    sequence = prompt
    with torch.no_grad():
        for _ in range(steps):
            logits = model(sequence, use_cache=False).logits[:, -1]
            sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
    return sequence
