"""The layer-wise scaling profile of a config: a per-layer table, Markdown, and a PNG plot."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from elmforge.errors import ConfigError
from elmforge.files import atomic_write, claim_output
from elmforge.model.config import PRESETS, OpenELMConfig
from elmforge.model.integrity import config_json_path, read_openelm_config


@dataclass(frozen=True)
class LayerRow:
    layer: int
    query_heads: int
    kv_heads: int
    ffn_dim: int
    parameters: int


def resolve_config(name_or_dir: str | os.PathLike) -> OpenELMConfig:
    """A preset name, a model directory or a ``config.json`` path -> its config."""
    text = str(name_or_dir)
    if text.lower() in {k.lower() for k in PRESETS}:
        return OpenELMConfig.from_name(text)
    if not config_json_path(text).is_file():
        raise ConfigError(
            f"{text}: neither a preset ({', '.join(PRESETS)}) nor a model directory with config.json"
        )
    return read_openelm_config(text)


def layer_rows(config: OpenELMConfig) -> list[LayerRow]:
    ffn = config.ffn_dims()
    return [
        LayerRow(
            i, config.num_query_heads[i], config.num_kv_heads[i], ffn[i], config.layer_parameters(i)
        )
        for i in range(config.num_transformer_layers)
    ]


def profile_markdown(config: OpenELMConfig, title: str = "") -> str:
    """The per-layer table and the total, as Markdown."""
    lines = [f"### {title}", ""] if title else []
    lines += [
        "| layer | query heads | kv heads | FFN width | parameters |",
        "|------:|------------:|---------:|----------:|-----------:|",
    ]
    for row in layer_rows(config):
        lines.append(
            f"| {row.layer} | {row.query_heads} | {row.kv_heads} | {row.ffn_dim} | {row.parameters:,} |"
        )
    embedding = config.vocab_size * config.model_dim
    lines += [
        "",
        f"- model_dim {config.model_dim}, head_dim {config.head_dim}, "
        f"{config.num_transformer_layers} layers, vocab {config.vocab_size}, "
        f"GQA groups {config.num_gqa_groups}",
        f"- embedding {embedding:,} ({'tied' if config.share_input_output_layers else 'untied'})",
        f"- total parameters: {config.num_parameters_total():,}",
    ]
    return "\n".join(lines) + "\n"


def plot_profile(
    config: OpenELMConfig, path: str | os.PathLike, title: str = "", force: bool = False
) -> Path:
    """PNG of the layer-wise profile: heads and FFN width per layer (an existing file is replaced
    only with ``force``)."""
    path = claim_output(path, "info", force, kind="file")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = layer_rows(config)
    layers = [r.layer for r in rows]
    fig, (ax_heads, ax_ffn) = plt.subplots(1, 2, figsize=(10, 4))
    ax_heads.plot(layers, [r.query_heads for r in rows], "o-", label="query heads")
    ax_heads.plot(layers, [r.kv_heads for r in rows], "s-", label="kv heads")
    ax_heads.set_xlabel("layer")
    ax_heads.set_ylabel("heads")
    ax_heads.legend()
    ax_heads.grid(alpha=0.3)
    ax_ffn.bar(layers, [r.ffn_dim for r in rows], color="tab:green")
    ax_ffn.set_xlabel("layer")
    ax_ffn.set_ylabel("FFN width")
    ax_ffn.grid(alpha=0.3, axis="y")
    total = config.num_parameters_total()
    fig.suptitle(f"{title or 'OpenELM'}: layer-wise scaling ({total / 1e6:.1f}M parameters)")
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def rows_as_dicts(config: OpenELMConfig) -> list[dict]:
    return [asdict(row) for row in layer_rows(config)]
