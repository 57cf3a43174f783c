"""OpenELM -> GGUF for llama.cpp (``openelm`` architecture), written with the ``gguf`` package.

What llama.cpp expects, read from its own converter and runtime (ggml-org/llama.cpp,
``conversion/openelm.py`` @ 7bca1fd9, ``conversion/base.py`` @ 00bd27a6,
``src/models/openelm.cpp`` @ c3c27a71; the facts are in docs/export.md):

- keys: ``openelm.block_count``, ``.context_length``, ``.embedding_length``,
  ``.feed_forward_length`` (one FFN width per layer), ``.attention.head_count`` and
  ``.attention.head_count_kv`` (per layer), ``.rope.freq_base``,
  ``.attention.layer_norm_rms_epsilon``, ``.rope.dimension_count`` (= head_dim, the whole head
  is rotated), ``.attention.key_length`` / ``.value_length`` (head_dim), plus ``general.*``
  (gguf's own :class:`gguf.Metadata`, as the converter) and the vocabulary
  (:mod:`elmforge.export.vocab`);
- tensors: ``token_embd``, ``output_norm``, and per block ``attn_norm``, ``attn_qkv`` (Apple's
  fused rows: queries, keys, values), ``attn_q_norm``, ``attn_k_norm``, ``attn_output``,
  ``ffn_norm``, ``ffn_gate`` and ``ffn_up`` (``proj_1`` split: its first ``ffn_dim`` rows are the
  gate), ``ffn_down``. There is no ``output`` tensor: the graph always multiplies by
  ``token_embd`` (tied), so an untied head is refused rather than dropped;
- types: 1-D tensors and every ``*_norm.weight`` stay F32; the rest take ``--type``, except that
  a q8_0 tensor whose rows are not a multiple of 32 falls back to F16, as in the converter.

q8_0 blocks are computed here with ``gguf.quants`` (no llama.cpp binary). Tensors are streamed:
one is read, converted and written at a time, so memory stays near the largest tensor.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elmforge.errors import CheckpointError, ElmforgeError, OptionError, first_line

ARCH = "openelm"
GGUF_MAGIC = b"GGUF"  # the first bytes of every GGUF file
OUT_TYPES = ("f32", "f16", "bf16", "q8_0")
Q8_0_BLOCK = 32
# Bytes per element (q8_0: 34 bytes per block of 32: an f16 scale and 32 int8 values).
_BYTES = {"F32": 4.0, "F16": 2.0, "BF16": 2.0, "Q8_0": 34 / 32}


def _gguf() -> Any:
    import gguf  # the pinned package (pyproject), imported where it is used

    return gguf


def file_type(out_type: str) -> Any:
    """``general.file_type`` of an output type (gguf's ``LlamaFileType``)."""
    names = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}
    return getattr(_gguf().LlamaFileType, names[out_type])


def tensor_type(name: str, shape: tuple[int, ...], out_type: str) -> Any:
    """The GGML type a tensor is stored as (see the module docstring)."""
    types = _gguf().GGMLQuantizationType
    if len(shape) <= 1 or name.endswith("_norm.weight") or out_type == "f32":
        return types.F32
    if out_type == "q8_0" and shape[-1] % Q8_0_BLOCK:
        return types.F16
    return {"f16": types.F16, "bf16": types.BF16, "q8_0": types.Q8_0}[out_type]


def gguf_name(kind: str, block: int | None = None) -> str:
    """``blk.3.attn_qkv.weight`` and friends, from gguf's own name table."""
    gguf = _gguf()
    template = gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, kind)]
    return (template.format(bid=block) if block is not None else template) + ".weight"


@dataclass(frozen=True)
class PlannedTensor:
    """One GGUF tensor: which Apple tensor (and which of its rows) it comes from."""

    name: str
    source: str
    rows: slice | None
    shape: tuple[int, ...]


def tensor_plan(config: Any) -> list[PlannedTensor]:
    """Every GGUF tensor of ``config``'s model, in file order, with its numpy shape."""
    d, hd, vocab = config.model_dim, config.head_dim, config.vocab_size
    plan = [
        PlannedTensor(
            gguf_name("TOKEN_EMBD"), "transformer.token_embeddings.weight", None, (vocab, d)
        )
    ]
    for i, ffn in enumerate(config.ffn_dims()):
        q, kv = config.num_query_heads[i], config.num_kv_heads[i]
        layer = f"transformer.layers.{i}."
        plan += [
            PlannedTensor(gguf_name("ATTN_NORM", i), layer + "attn_norm.weight", None, (d,)),
            PlannedTensor(
                gguf_name("ATTN_QKV", i),
                layer + "attn.qkv_proj.weight",
                None,
                ((q + 2 * kv) * hd, d),
            ),
            PlannedTensor(gguf_name("ATTN_Q_NORM", i), layer + "attn.q_norm.weight", None, (hd,)),
            PlannedTensor(gguf_name("ATTN_K_NORM", i), layer + "attn.k_norm.weight", None, (hd,)),
            PlannedTensor(
                gguf_name("ATTN_OUT", i), layer + "attn.out_proj.weight", None, (d, q * hd)
            ),
            PlannedTensor(gguf_name("FFN_NORM", i), layer + "ffn_norm.weight", None, (d,)),
            PlannedTensor(
                gguf_name("FFN_GATE", i), layer + "ffn.proj_1.weight", slice(0, ffn), (ffn, d)
            ),
            PlannedTensor(
                gguf_name("FFN_UP", i), layer + "ffn.proj_1.weight", slice(ffn, 2 * ffn), (ffn, d)
            ),
            PlannedTensor(gguf_name("FFN_DOWN", i), layer + "ffn.proj_2.weight", None, (d, ffn)),
        ]
    plan.append(PlannedTensor(gguf_name("OUTPUT_NORM"), "transformer.norm.weight", None, (d,)))
    return plan


def check_exportable(config: Any, source: str) -> None:
    """Refuse what llama.cpp's ``openelm`` graph cannot run, with the reason."""
    if not config.share_input_output_layers:
        raise ElmforgeError(
            f"{source}: share_input_output_layers is false (an untied output head); llama.cpp's "
            f"openelm graph always uses the token embedding as the output layer, so the head "
            f"would be lost"
        )
    if not config.ffn_with_glu:
        raise ElmforgeError(f"{source}: ffn_with_glu is false; llama.cpp's openelm needs GLU")
    if not config.normalize_qk_projections:
        raise ElmforgeError(
            f"{source}: normalize_qk_projections is false; llama.cpp's openelm needs q/k norms"
        )
    if config.activation_fn_name not in ("swish", "silu"):
        raise ElmforgeError(
            f"{source}: activation {config.activation_fn_name!r}; llama.cpp's openelm uses SiLU"
        )


def hf_to_gguf(
    model_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    out_type: str = "f32",
    *,
    force: bool = False,
    tokenizer: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Write an OpenELM model directory (or a run / checkpoint directory) as a GGUF file.

    ``out_type``: f32, f16, bf16 or q8_0. ``tokenizer`` replaces the directory's own (a directory
    without one uses LLaMA-2's for a 32000-token model). An existing ``out_path`` is replaced
    only with ``force``; the file is written to a temporary name and renamed.
    """
    from elmforge.export.vocab import add_vocab, vocab_from_dir
    from elmforge.files import atomic_write, claim_output
    from elmforge.layout import resolve_model_dir

    if out_type not in OUT_TYPES:
        raise OptionError(
            "out_type", f"{{option}} {out_type}: expected one of {', '.join(OUT_TYPES)}", "--type"
        )
    given = Path(model_dir)
    model_dir = resolve_model_dir(given)
    out_path = claim_output(
        out_path, "convert", force, kind="file", inputs=(model_dir,), signature=GGUF_MAGIC
    )
    config = _load_config(model_dir)
    check_exportable(config, str(model_dir))
    weights = _weight_files(model_dir, config)
    plan = tensor_plan(config)
    name = _model_name(given, model_dir)
    with _tokenizer_dir(model_dir, tokenizer) as tokenizer_dir:
        vocab = vocab_from_dir(tokenizer_dir, config.vocab_size)

        def write(tmp: Path) -> None:
            writer = _header(plan, config, out_type, model_dir, name)
            add_vocab(writer, vocab, tokenizer_dir)
            label = f"writing {out_path.name}" if progress else None
            _write_file(writer, tmp, plan, weights, out_type, label)

        atomic_write(out_path, write)
    return out_path


def _load_config(model_dir: Path) -> Any:
    from elmforge.model.integrity import read_openelm_config

    return read_openelm_config(model_dir)


def _weight_files(model_dir: Path, config: Any) -> dict[str, Path]:
    """Tensor name -> safetensors file, checked against the shapes ``config`` implies."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{model_dir}: no model weights (*.safetensors)")
    where: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(file, "pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    where[key] = file
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except Exception as err:  # safetensors raises its own errors for corrupt headers
            raise CheckpointError(f"{file}: corrupt or truncated ({first_line(err)})") from None
    expected = _expected_shapes(config)
    missing = sorted(set(expected) - set(where))
    unexpected = sorted(set(where) - set(expected) - {"lm_head.weight"})
    if missing or unexpected:
        raise CheckpointError(
            f"{model_dir}: tensors do not match config.json (missing: "
            f"{', '.join(missing[:3]) or 'none'}; unexpected: {', '.join(unexpected[:3]) or 'none'})"
        )
    for key, shape in expected.items():
        if shapes[key] != shape:
            raise CheckpointError(
                f"{where[key]}: {key} has shape {shapes[key]}, config.json implies {shape}"
            )
    return {key: where[key] for key in expected}


def _expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    import torch

    from elmforge.model.modeling import OpenELMForCausalLM

    with torch.device("meta"):
        model = OpenELMForCausalLM(config)
    return {
        key: tuple(value.shape)
        for key, value in model.state_dict().items()
        if key != "lm_head.weight"
    }


def _model_name(given: Path, model_dir: Path) -> str | None:
    """``general.name`` for a run (its directory name) or a checkpoint (run-step); None lets
    gguf's metadata heuristics name a plain model directory, as llama.cpp's converter does."""
    from elmforge.layout import enclosing_run_dir

    if given.resolve() == model_dir.resolve():
        return None
    run = enclosing_run_dir(given)
    if run is None or run == given.resolve():
        return given.resolve().name
    return f"{run.name}-{given.resolve().name}"


@contextlib.contextmanager
def _tokenizer_dir(model_dir: Path, tokenizer: str | os.PathLike | None) -> Iterator[Path]:
    """A directory with the model's complete tokenizer files: the model directory itself when it
    has them, else a temporary copy of its small files completed (the input is never written;
    its chat template is kept, an -Instruct model without one gets Apple's)."""
    from elmforge.layout import copy_model_files
    from elmforge.modeldir.complete import (
        complete_model_dir,
        is_instruct,
        pick_tokenizer,
        read_config,
    )

    config = read_config(model_dir)
    tokenizer, _ = pick_tokenizer(model_dir, tokenizer, config, required=True)
    if tokenizer is None:  # the directory has its own tokenizer files
        yield model_dir
        return
    with tempfile.TemporaryDirectory(prefix="elmforge-tokenizer-") as tmp:
        staging = Path(tmp)
        copy_model_files(model_dir, staging, weights="skip")
        complete_model_dir(
            staging, tokenizer, require_tokenizer=True, instruct=is_instruct(model_dir, config)
        )
        yield staging


def _header(
    plan: list[PlannedTensor], config: Any, out_type: str, model_dir: Path, name: str | None
) -> Any:
    """A GGUF writer holding every key and tensor record (data follows in :func:`_write_file`)."""
    import numpy as np

    gguf = _gguf()
    writer = gguf.GGUFWriter(path=None, arch=ARCH)
    for tensor in plan:
        kind = tensor_type(tensor.name, tensor.shape, out_type)
        writer.add_tensor_info(
            tensor.name,
            tensor.shape,
            np.dtype(np.float32),
            stored_bytes(tensor.shape, kind),
            raw_dtype=kind,
        )
    total, shared, experts, count = writer.get_total_parameter_count()
    metadata = gguf.Metadata.load(None, model_dir, name, total)
    if metadata.name is None:
        metadata.name = model_dir.name
    if metadata.size_label is None and total > 0:
        metadata.size_label = gguf.size_label(total, shared, experts, count)
    writer.add_type(gguf.GGUFType.MODEL)
    metadata.set_gguf_meta_model(writer)
    writer.add_block_count(config.num_transformer_layers)
    writer.add_context_length(config.max_context_length)
    writer.add_embedding_length(config.model_dim)
    writer.add_feed_forward_length(config.ffn_dims())
    writer.add_head_count(list(config.num_query_heads))
    writer.add_head_count_kv(list(config.num_kv_heads))
    writer.add_rope_freq_base(float(config.rope_freq_constant))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_file_type(file_type(out_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return writer


def stored_bytes(shape: tuple[int, ...], kind: Any) -> int:
    elements = 1
    for size in shape:
        elements *= size
    return int(elements * _BYTES[kind.name])


def _write_file(
    writer: Any,
    path: Path,
    plan: list[PlannedTensor],
    weights: dict[str, Path],
    out_type: str,
    label: str | None,
) -> None:
    from safetensors import safe_open

    gguf = _gguf()
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    total = sum(stored_bytes(t.shape, tensor_type(t.name, t.shape, out_type)) for t in plan)
    bar = byte_bar(label, total)
    handles: dict[Path, Any] = {}
    try:
        with contextlib.ExitStack() as files:
            for tensor in plan:
                file = weights[tensor.source]
                if file not in handles:
                    handles[file] = files.enter_context(safe_open(file, "pt"))
                data = handles[file].get_tensor(tensor.source)
                if tensor.rows is not None:
                    data = data[tensor.rows]
                kind = tensor_type(tensor.name, tensor.shape, out_type)
                array = gguf.quants.quantize(data.float().contiguous().numpy(), kind)
                writer.write_tensor_data(array)
                if bar is not None:
                    bar.update(array.nbytes)
    finally:
        writer.close()
        if bar is not None:
            bar.close()


def byte_bar(label: str | None, total: int) -> Any:
    """A tqdm bar over bytes written (rate, ETA) on a terminal; None in CI and logs, where the
    command prints one line with the size and time when it is done."""
    import sys

    from elmforge.progress import interactive

    if label is None or not interactive():
        return None
    from tqdm import tqdm

    return tqdm(desc=label, total=total, unit="B", unit_scale=True, file=sys.stderr)
