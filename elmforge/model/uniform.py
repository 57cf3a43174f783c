"""A uniform model matched to a layer-wise scaled (LWS) one: the paper's missing ablation.

OpenELM's claim is that layer-wise scaling spends a parameter budget better than uniform
allocation. The fair comparison keeps everything but the allocation across depth: the same
layers, model width, head size, GQA groups, vocabulary and tying, the same total parameters
(within ``tolerance``, counted by ``num_parameters_total()``), and the same split between
attention and feed-forward. So the uniform model

1. gives every layer the LWS model's mean number of query heads, rounded to a multiple of the GQA
   group count (attention parameters are linear in the heads, so this keeps the attention total);
2. gives every layer the FFN width that brings the total closest to the LWS model's, a multiple
   of the LWS model's ``ffn_dim_divisor`` or of a power-of-two fraction of it down to
   ``MIN_FFN_DIVISOR`` (one step of 256 moves a small model's total by several percent; the
   divisor only decides rounding); on a tie the coarser divisor wins.

Both arms are then plain ``OpenELMConfig`` s: the uniform one has one number for each multiplier.
``study lws`` trains the two arms (:func:`match_uniform`, from a preset name and shape) and
``bench --against uniform`` times them (:func:`uniform_twin`, from any model's config): one
solver, so the study and the bench compare the same models.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from elmforge.errors import ConfigError
from elmforge.model.config import OpenELMConfig

DEFAULT_TOLERANCE = 0.01
# FFN widths stay multiples of 8, the granularity fast matrix kernels want.
MIN_FFN_DIVISOR = 8
# Fields that decide the per-layer lists; the uniform arm sets its own.
_PER_LAYER_FIELDS = ("num_query_heads", "num_kv_heads", "qkv_multipliers", "ffn_multipliers")
# What a model's config shares with its uniform twin (everything but the per-layer allocation).
_SHARED_FIELDS = (
    "vocab_size", "max_context_length", "num_transformer_layers", "model_dim", "head_dim",
    "num_gqa_groups", "ffn_with_glu", "ffn_dim_divisor", "activation_fn_name",
    "normalize_qk_projections", "share_input_output_layers", "rope_freq_constant",
    "rope_max_length",
)  # fmt: skip


@dataclass(frozen=True)
class UniformMatch:
    """The uniform arm solved for an LWS model, with what it was matched on."""

    shape: dict[str, Any]
    """``OpenELMConfig`` fields of the uniform arm (the LWS shape with its multipliers replaced)."""
    config: OpenELMConfig
    lws_parameters: int
    uniform_parameters: int
    query_heads: int
    ffn_dim: int
    ffn_dim_divisor: int

    @property
    def relative_gap(self) -> float:
        """``uniform / lws - 1`` of the total parameter counts."""
        return self.uniform_parameters / self.lws_parameters - 1


def attention_parameters(config: OpenELMConfig) -> int:
    """Parameters of every layer's QKV and output projections."""
    d, hd = config.model_dim, config.head_dim
    return sum(
        d * (q + 2 * kv) * hd + q * hd * d
        for q, kv in zip(config.num_query_heads, config.num_kv_heads)
    )


def layer_parameters(config: OpenELMConfig) -> int:
    """Parameters of all transformer layers (no embedding, head or final norm)."""
    return sum(config.layer_parameters(i) for i in range(config.num_transformer_layers))


def is_uniform(config: OpenELMConfig) -> bool:
    """Whether every layer has the same heads and FFN width."""
    return (
        len(set(config.num_query_heads)) == 1
        and len(set(config.num_kv_heads)) == 1
        and len(set(config.ffn_dims())) == 1
    )


def _short(value: float, exact: float) -> float:
    """``value`` with the fewest decimals (up to 8) that still multiply out to ``exact``."""
    for digits in range(2, 9):
        rounded = round(value, digits)
        if abs(rounded - value) * exact < 1e-6 * exact and rounded > 0:
            return rounded
    return value


def _uniform_shape(
    base: dict[str, Any], config: OpenELMConfig, heads: int, ffn_dim: int, divisor: int
) -> dict[str, Any]:
    shape = {k: v for k, v in base.items() if k not in _PER_LAYER_FIELDS}
    shape["qkv_multipliers"] = _short(heads * config.head_dim / config.model_dim, heads)
    shape["ffn_multipliers"] = _short(ffn_dim / config.model_dim, ffn_dim)
    shape["ffn_dim_divisor"] = divisor
    return shape


def check_layer_wise(name: str, shape: dict[str, Any] | None = None) -> OpenELMConfig:
    """The LWS arm's config; ConfigError if it is already uniform (nothing to compare)."""
    lws = OpenELMConfig.from_name(name, **(shape or {}))
    if is_uniform(lws):
        raise ConfigError(
            f"model: {name} with this shape is already uniform ({lws.num_query_heads[0]} query "
            f"heads and FFN width {lws.ffn_dims()[0]} in every layer); a study compares a "
            "layer-wise scaled model with a uniform one: give the multipliers as (min, max) "
            "pairs, e.g. --set model.shape.ffn_multipliers=[0.5,4.0]"
        )
    return lws


def match_uniform(
    name: str,
    shape: dict[str, Any] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    vocab_size: int | None = None,
) -> UniformMatch:
    """Solve the uniform arm for the LWS model ``OpenELMConfig.from_name(name, **shape)``.

    ``vocab_size`` (the rows a run gives the embedding for its tokenizer) counts in the totals
    but stays out of the returned shape. Raises ConfigError when the model is already uniform,
    or when no uniform shape comes within ``tolerance`` of its parameter count.
    """
    base = copy.deepcopy(shape or {})
    counted = {**base, "vocab_size": vocab_size} if vocab_size is not None else base
    check_layer_wise(name, counted)
    lws = OpenELMConfig.from_name(name, **counted)
    return _solve(lws, counted, base, lambda fields: OpenELMConfig.from_name(name, **fields),
                  tolerance)  # fmt: skip


def uniform_twin(config: OpenELMConfig, tolerance: float = DEFAULT_TOLERANCE) -> OpenELMConfig:
    """The uniform model matched to any OpenELM config (a model directory's, a preset's), by
    the same rule as :func:`match_uniform`; a config that is already uniform is its own twin."""
    if is_uniform(config):
        return config
    fields = {key: getattr(config, key) for key in _SHARED_FIELDS}
    fields["qkv_multipliers"] = config.qkv_multipliers
    fields["ffn_multipliers"] = config.ffn_multipliers
    return _solve(config, fields, fields, lambda f: OpenELMConfig(**f), tolerance).config


def _solve(
    lws: OpenELMConfig,
    counted: dict[str, Any],
    base: dict[str, Any],
    make: Callable[[dict[str, Any]], OpenELMConfig],
    tolerance: float,
) -> UniformMatch:
    """The uniform arm of ``lws``: ``counted`` are the fields its totals are built from,
    ``base`` those the returned shape keeps, ``make`` builds a config from fields."""
    if not 0 < tolerance < 1:
        raise ConfigError(f"tolerance: {tolerance} must be between 0 and 1 (0.01 is 1%)")
    target = lws.num_parameters_total()
    groups = lws.num_gqa_groups
    mean_heads = sum(lws.num_query_heads) / lws.num_transformer_layers
    heads = max(groups, groups * int(mean_heads / groups + 0.5))
    ffn_mean = sum(lws.ffn_dims()) / lws.num_transformer_layers

    def build(ffn_dim: int, divisor: int) -> OpenELMConfig:
        return make(_uniform_shape(counted, lws, heads, ffn_dim, divisor))

    closest: tuple[float, int, int] | None = None
    divisor = lws.ffn_dim_divisor
    while divisor >= MIN_FFN_DIVISOR:
        # Parameters are affine in the FFN width: two widths give the slope, then the nearest
        # multiples of the divisor around the solution are counted exactly.
        low, high = build(divisor, divisor), build(2 * divisor, divisor)
        slope = (high.num_parameters_total() - low.num_parameters_total()) / divisor
        solution = divisor + (target - low.num_parameters_total()) / slope
        steps = max(1, round(solution / divisor))
        for width in sorted({max(1, steps - 1), steps, steps + 1}):
            candidate = build(width * divisor, divisor)
            gap = candidate.num_parameters_total() / target - 1
            # Strictly closer only: on a tie the coarser divisor (found first) is kept.
            if closest is None or abs(gap) < abs(closest[0]) - 1e-12:
                closest = (gap, width * divisor, divisor)
        divisor //= 2
    if closest is None or abs(closest[0]) > tolerance:
        gap, width, at_divisor = closest or (float("inf"), 0, lws.ffn_dim_divisor)
        raise ConfigError(
            f"model: no uniform shape comes within {tolerance:.1%} of the layer-wise scaled "
            f"model's {target:,} parameters: with {heads} query heads in each of "
            f"{lws.num_transformer_layers} layers (the LWS mean {mean_heads:.2f}, rounded to a "
            f"multiple of {groups} GQA groups), the closest FFN width is {width} (a multiple of "
            f"{at_divisor}; the LWS mean is {ffn_mean:.0f}), {gap:+.2%} parameters; "
            "change model_dim, head_dim or num_transformer_layers"
        )
    _, ffn_dim, divisor = closest
    uniform = build(ffn_dim, divisor)
    if not is_uniform(uniform) or uniform.num_query_heads[0] != heads:
        raise AssertionError(f"uniform arm is not uniform: {uniform.num_query_heads}")
    return UniformMatch(
        shape=_uniform_shape(base, lws, heads, ffn_dim, divisor),
        config=uniform,
        lws_parameters=target,
        uniform_parameters=uniform.num_parameters_total(),
        query_heads=heads,
        ffn_dim=ffn_dim,
        ffn_dim_divisor=divisor,
    )
