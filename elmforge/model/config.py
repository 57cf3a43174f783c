"""OpenELMConfig: Apple's ``config.json`` fields, the layer-wise scaling rule and named presets.

The field names, their meaning and the per-layer lists are those of Apple's hub checkpoints
(``apple/OpenELM-*``), so a ``config.json`` from there loads unchanged and one we write loads in
Apple's code, in mlx-lm and in llama.cpp's converter.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from numbers import Number
from typing import Any

import numpy as np
from transformers import PretrainedConfig

from elmforge.errors import ConfigError


def make_divisible(value: float, divisor: int, min_value: int | None = None) -> int:
    """MobileNet's rounding rule, as CoreNet uses it: nearest multiple, never more than 10% down."""
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


def _interpolate(multipliers: float | Sequence[float], num_layers: int) -> list[float]:
    """One number -> uniform; a (min, max) pair -> linspace over the layers rounded to 2 decimals."""
    if isinstance(multipliers, Number):
        return [float(multipliers)] * num_layers
    values = [float(v) for v in multipliers]
    if len(values) == 2:
        return [round(float(v), 2) for v in np.linspace(values[0], values[1], num=num_layers)]
    return values


# The four published variants (docs/openelm.md, "Variants and parameter counts") and tiny shapes for CPU work. Every variant uses
# alpha 0.5 -> 1.0 (qkv), beta 0.5 -> 4.0 (ffn) and 4 GQA groups.
_PAPER_SCALING: dict[str, Any] = {
    "qkv_multipliers": (0.5, 1.0),
    "ffn_multipliers": (0.5, 4.0),
    "num_gqa_groups": 4,
}
PRESETS: dict[str, dict[str, Any]] = {
    "OpenELM-270M": dict(num_transformer_layers=16, model_dim=1280, head_dim=64, **_PAPER_SCALING),
    "OpenELM-450M": dict(num_transformer_layers=20, model_dim=1536, head_dim=64, **_PAPER_SCALING),
    "OpenELM-1_1B": dict(num_transformer_layers=28, model_dim=2048, head_dim=64, **_PAPER_SCALING),
    "OpenELM-3B": dict(num_transformer_layers=36, model_dim=3072, head_dim=128, **_PAPER_SCALING),
    # A few million parameters: trains on a laptop CPU in minutes (vocab of the LLaMA-2 tokenizer).
    "OpenELM-tiny": dict(
        num_transformer_layers=4,
        model_dim=128,
        head_dim=16,
        ffn_dim_divisor=64,
        max_context_length=256,
        **_PAPER_SCALING,
    ),
}


class OpenELMConfig(PretrainedConfig):
    """Configuration of an OpenELM model, field for field Apple's ``config.json``.

    Build it from the layer-wise scaling description (``qkv_multipliers`` and ``ffn_multipliers``
    as a (min, max) pair, or one number for uniform allocation) and the per-layer lists
    ``num_query_heads``, ``num_kv_heads`` and ``ffn_multipliers`` are computed with CoreNet's rule;
    or pass the per-layer lists directly (as Apple's ``config.json`` does).
    """

    model_type = "openelm"
    # Generic names used by transformers utilities (caches, generation, peft).
    attribute_map = {
        "num_hidden_layers": "num_transformer_layers",
        "hidden_size": "model_dim",
        "max_position_embeddings": "max_context_length",
    }

    def __init__(
        self,
        vocab_size: int = 32000,
        max_context_length: int = 2048,
        num_transformer_layers: int = 12,
        model_dim: int = 2048,
        head_dim: int = 128,
        qkv_multipliers: float | Sequence[float] = 1.0,
        num_query_heads: Sequence[int] | None = None,
        num_kv_heads: Sequence[int] | None = None,
        num_gqa_groups: int = 1,
        ffn_multipliers: float | Sequence[float] = 4.0,
        ffn_with_glu: bool = True,
        ffn_dim_divisor: int = 256,
        activation_fn_name: str = "swish",
        normalization_layer_name: str = "rms_norm",
        normalize_qk_projections: bool = True,
        share_input_output_layers: bool = True,
        rope_freq_constant: float = 10000,
        rope_max_length: int = 4096,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        pad_token_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.max_context_length = max_context_length
        self.num_transformer_layers = num_transformer_layers
        self.model_dim = model_dim
        self.head_dim = head_dim
        self.qkv_multipliers = (
            list(qkv_multipliers) if not isinstance(qkv_multipliers, Number) else qkv_multipliers
        )
        self.num_gqa_groups = num_gqa_groups
        self.ffn_with_glu = ffn_with_glu
        self.ffn_dim_divisor = ffn_dim_divisor
        self.activation_fn_name = activation_fn_name
        self.normalization_layer_name = normalization_layer_name
        self.normalize_qk_projections = normalize_qk_projections
        self.share_input_output_layers = share_input_output_layers
        self.rope_freq_constant = rope_freq_constant
        self.rope_max_length = rope_max_length
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        kwargs.setdefault("tie_word_embeddings", share_input_output_layers)
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **kwargs,
        )
        self._validate_scalars()
        n = num_transformer_layers
        if num_query_heads is None:
            num_query_heads = self._query_heads_from_multipliers()
        self.num_query_heads = [int(h) for h in num_query_heads]
        if num_kv_heads is None:
            num_kv_heads = [h // num_gqa_groups for h in self.num_query_heads]
        self.num_kv_heads = [int(h) for h in num_kv_heads]
        self.ffn_multipliers = _interpolate(ffn_multipliers, n)
        self._validate_layers()
        if "elmforge.model.modeling" not in sys.modules:
            # The first config built puts the model classes into the Auto classes (see
            # elmforge.model.registration for why not earlier).
            from elmforge.model.registration import register_models

            register_models()

    # -- layer-wise scaling ------------------------------------------------------------------
    def _query_heads_from_multipliers(self) -> list[int]:
        multipliers = self.qkv_multipliers
        if not isinstance(multipliers, Number) and len(multipliers) != 2:
            raise ConfigError(
                f"qkv_multipliers: expected one number or a (min, max) pair, got {multipliers!r}"
            )
        divisor = self.head_dim * self.num_gqa_groups
        widths = [
            make_divisible(self.model_dim * m, divisor)
            for m in _interpolate(multipliers, self.num_transformer_layers)
        ]
        return [w // self.head_dim for w in widths]

    def ffn_dims(self) -> list[int]:
        """FFN hidden width of each layer (half the width of ``proj_1``'s output with GLU)."""
        return [
            make_divisible(m * self.model_dim, self.ffn_dim_divisor) for m in self.ffn_multipliers
        ]

    # -- validation --------------------------------------------------------------------------
    def _validate_scalars(self) -> None:
        for name in (
            "vocab_size",
            "max_context_length",
            "num_transformer_layers",
            "model_dim",
            "head_dim",
            "num_gqa_groups",
            "ffn_dim_divisor",
            "rope_max_length",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim: must be even for rotary embeddings, got {self.head_dim}")
        if not self.rope_freq_constant or self.rope_freq_constant <= 0:
            raise ConfigError(
                f"rope_freq_constant: must be positive, got {self.rope_freq_constant}"
            )
        multipliers = self.qkv_multipliers
        values = [multipliers] if isinstance(multipliers, Number) else multipliers
        if any(not isinstance(v, Number) or v <= 0 for v in values):
            raise ConfigError(f"qkv_multipliers: must be positive numbers, got {multipliers!r}")
        if self.normalization_layer_name != "rms_norm":
            raise ConfigError(
                f"normalization_layer_name: only 'rms_norm' is supported, got "
                f"{self.normalization_layer_name!r}"
            )
        if self.activation_fn_name not in ("swish", "silu", "gelu", "relu"):
            raise ConfigError(
                f"activation_fn_name: expected swish, silu, gelu or relu, got "
                f"{self.activation_fn_name!r}"
            )

    def _validate_layers(self) -> None:
        n = self.num_transformer_layers
        for name in ("num_query_heads", "num_kv_heads", "ffn_multipliers"):
            values = getattr(self, name)
            if len(values) != n:
                raise ConfigError(
                    f"{name}: expected {n} values (one per layer, num_transformer_layers={n}), "
                    f"got {len(values)}"
                )
            if any(v <= 0 for v in values):
                raise ConfigError(f"{name}: every value must be positive, got {values}")
        for i, (q, kv) in enumerate(zip(self.num_query_heads, self.num_kv_heads)):
            if q % kv:
                raise ConfigError(
                    f"num_kv_heads: layer {i} has {q} query heads, not divisible by its {kv} kv heads"
                )
            if q // kv != self.num_gqa_groups:
                raise ConfigError(
                    f"num_gqa_groups: layer {i} has {q} query and {kv} kv heads, a group size of "
                    f"{q // kv}, not num_gqa_groups={self.num_gqa_groups}"
                )

    # -- named presets -------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> OpenELMConfig:
        """A named preset (``OpenELM-270M``, ``-450M``, ``-1_1B``, ``-3B``, ``-tiny``)."""
        key = {k.lower(): k for k in PRESETS}.get(name.lower())
        if key is None:
            raise ConfigError(f"unknown model name {name!r}; presets: {', '.join(PRESETS)}")
        fields = copy.deepcopy(PRESETS[key])
        fields.update(overrides)
        return cls(**fields)

    @staticmethod
    def preset_names() -> list[str]:
        return list(PRESETS)

    # -- derived sizes -------------------------------------------------------------------------
    def layer_parameters(self, i: int) -> int:
        """Parameters of transformer layer ``i`` (norms included)."""
        d, hd = self.model_dim, self.head_dim
        q, kv, ffn = self.num_query_heads[i], self.num_kv_heads[i], self.ffn_dims()[i]
        qkv = d * (q + 2 * kv) * hd
        out = q * hd * d
        norms = 2 * d + (2 * hd if self.normalize_qk_projections else 0)
        ffn_in = d * ffn * (2 if self.ffn_with_glu else 1)
        return qkv + out + norms + ffn_in + ffn * d

    def num_parameters_total(self) -> int:
        """All parameters, the tied embedding counted once (docs/openelm.md's variants table)."""
        embedding = self.vocab_size * self.model_dim
        head = 0 if self.share_input_output_layers else embedding
        layers = sum(self.layer_parameters(i) for i in range(self.num_transformer_layers))
        return embedding + head + layers + self.model_dim

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        # transformers bookkeeping that Apple's config.json does not carry and would only confuse
        # Apple's code: tying is expressed by share_input_output_layers.
        output.pop("tie_word_embeddings", None)
        return output


def _register_with_auto_config() -> None:
    from transformers import AutoConfig

    AutoConfig.register("openelm", OpenELMConfig, exist_ok=True)


_register_with_auto_config()
