"""The tests' small model shape: OpenELM-tiny's preset cut down to two layers of width 64 and a
512-row vocabulary (a few hundred thousand parameters), with the paper's layer-wise scaling.

It is a shape override, not a preset: the product's presets are the paper's variants and
OpenELM-tiny, and a run configuration reaches this shape the way a user would, through
``model.shape``.
"""

from __future__ import annotations

from typing import Any

MICRO_SHAPE: dict[str, Any] = {
    "num_transformer_layers": 2,
    "model_dim": 64,
    "head_dim": 16,
    "ffn_dim_divisor": 32,
    "vocab_size": 512,
    "max_context_length": 128,
    "rope_max_length": 256,
}


def micro_config(**fields: Any) -> Any:
    """An ``OpenELMConfig`` of the micro shape, ``fields`` overriding it."""
    from elmforge.model.config import OpenELMConfig

    return OpenELMConfig.from_name("OpenELM-tiny", **{**MICRO_SHAPE, **fields})


def micro_model_section(**shape: Any) -> dict[str, Any]:
    """The ``model`` section of a run configuration for the micro shape (``shape`` on top)."""
    return {"name": "OpenELM-tiny", "shape": {**MICRO_SHAPE, **shape}}
