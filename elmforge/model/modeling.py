"""The OpenELM model in one file, read top to bottom like Section 3 of the paper.

Parameter names are Apple's (``transformer.token_embeddings.weight``, ``transformer.layers.{i}.
attn.qkv_proj.weight``, ...), so Apple's hub checkpoints load as they are and what we save loads
in Apple's code, mlx-lm and llama.cpp.

Where this differs from Apple's hub code, it is for speed, never for the numbers:
- RMSNorm is one fused kernel (``F.rms_norm``) instead of a chain of small ones, the cost the
  paper measured as OpenELM's inference bottleneck;
- grouped-query attention goes through ``scaled_dot_product_attention(enable_gqa=True)`` and
  never materialises repeated keys/values;
- RoPE tables are built once (and grown only if a longer position is asked for);
- positions come from ``position_ids`` (so left-padded batches decode like unpadded prompts).

Shapes: B batch, S query length, T key length, H query heads, K kv heads, D head_dim, d model_dim.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from elmforge.model import cpu_kernels, prefill
from elmforge.model.config import OpenELMConfig
from elmforge.model.decoding import decode_defaults
from elmforge.model.masks import build_attention_mask, positions_from_mask

# transformers 5.24 renamed the cache argument and output field ``past_key_values`` to ``cache``
# (the old name lingers with a deprecation warning). The model takes either name and returns its
# cache under the field the installed transformers defines, so every 5.x ``generate()`` finds it.
CACHE_FIELD = (
    "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
)


class OpenELMLinear(nn.Linear):
    """``nn.Linear`` (no bias) with faster CPU paths for decoding (1 to 8 rows, no gradient).

    Decoding is bound by reading the weights (``bench/gemv.py``, table in docs/inference.md):
    float32 and bfloat16 steps go to elmforge's kernels (``cpu_kernels.linear_decode``: at the
    memory roof for one row where PyTorch's bf16 GEMV is not, about 2x PyTorch for 8 rows, and
    a row's result independent of the batch). Without the kernels, float32 runs as a batched
    matmul over ``num_threads`` row blocks of the weight (bit-identical to ``F.linear``; 1.5-2x on
    builds whose GEMV uses one thread). Training, prompts and GPUs keep ``F.linear``.
    """

    max_decode_rows = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if self.bias is not None or weight.device.type != "cpu":
            return F.linear(x, weight, self.bias)
        if weight.dtype in cpu_kernels.DECODE_DTYPES and cpu_kernels.usable_for(
            x, self.in_features
        ):
            return cpu_kernels.linear_decode(x, weight)
        rows = x.numel() // x.shape[-1]
        blocks = torch.get_num_threads()
        if (
            rows <= self.max_decode_rows
            and blocks > 1
            and weight.dtype == torch.float32
            and self.out_features % blocks == 0
            and not torch.compiler.is_compiling()  # inductor picks its own GEMV
            and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))
        ):
            flat = x.reshape(1, rows, self.in_features).expand(blocks, rows, self.in_features)
            per_block = weight.view(blocks, self.out_features // blocks, self.in_features)
            out = torch.bmm(flat, per_block.transpose(1, 2))  # (blocks, rows, out/blocks)
            return out.transpose(0, 1).reshape(*x.shape[:-1], self.out_features)
        if (
            weight.dtype == torch.float32
            and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))
        ):
            return prefill.prompt_linear(x, weight)  # the machine's faster float32 GEMM
        return F.linear(x, weight)


class OpenELMRMSNorm(nn.Module):
    """RMSNorm with a weight and no bias, as one fused op."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if cpu_kernels.norm_usable_for(x):  # a decode step: one op instead of PyTorch's ~8
            return cpu_kernels.rms_norm(x, weight, self.eps)
        if weight.dtype != x.dtype:  # bf16 activations under autocast: keep the fused kernel
            weight = weight.to(x.dtype)
        return F.rms_norm(x, weight.shape, weight, self.eps)


class OpenELMRotaryEmbedding(nn.Module):
    """Rotary position tables (non-interleaved "rotate half" form), built once, in float32.

    ``sin`` carries rotate-half's sign (its first half negated), so applying the rotation is
    ``x * cos + roll(x, D/2) * sin``: the same products as ``cat(-x2, x1) * sin``, fewer ops.
    """

    def __init__(self, head_dim: int, max_length: int, base: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        cos, sin = self.compute_tables(max_length)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def compute_tables(
        self, length: int, device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / (
            self.base
            ** (
                torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device)
                / self.head_dim
            )
        )
        positions = torch.arange(length, dtype=torch.float32, device=device)
        freqs = torch.outer(positions, inv_freq)  # (L, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (L, D)
        sign = torch.ones(self.head_dim, device=device)
        sign[: self.head_dim // 2] = -1
        return emb.cos(), emb.sin() * sign

    def forward(
        self, position_ids: torch.Tensor, max_position: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for ``position_ids`` (B, S), each (B, S, 1, D) to broadcast over heads."""
        if max_position > self.cos.shape[0] and not torch.compiler.is_compiling():
            # Longer than rope_max_length: grow the tables once (Apple's code does the same).
            cos, sin = self.compute_tables(
                max(max_position, 2 * self.cos.shape[0]), self.cos.device
            )
            self.cos, self.sin = cos, sin
        return self.cos[position_ids].unsqueeze(2), self.sin[position_ids].unsqueeze(2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, S, H, D) by the angles in ``cos``/signed ``sin`` (B, S, 1, D), in
    float32: ``x * cos + cat(-x2, x1) * |sin|``."""
    dtype = x.dtype
    if dtype != torch.float32:
        x = x.float()
    rotated = x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin
    return rotated if dtype == torch.float32 else rotated.to(dtype)


class OpenELMMultiHeadCausalAttention(nn.Module):
    """Grouped-query attention with per-head RMSNorm on queries and keys, then RoPE."""

    def __init__(self, config: OpenELMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_q_heads = config.num_query_heads[layer_idx]
        self.num_kv_heads = config.num_kv_heads[layer_idx]
        d, hd = config.model_dim, config.head_dim
        # Rows: all query heads, then all key heads, then all value heads (Apple's layout).
        self.qkv_proj = OpenELMLinear(
            d, (self.num_q_heads + 2 * self.num_kv_heads) * hd, bias=False
        )
        if config.normalize_qk_projections:
            self.q_norm = OpenELMRMSNorm(hd, config.rms_norm_eps)
            self.k_norm = OpenELMRMSNorm(hd, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.out_proj = OpenELMLinear(self.num_q_heads * hd, d, bias=False)
        self.out_proj.is_residual_projection = True  # CoreNet draws it with a smaller std

    def split_rotate(
        self, qkv: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, S, H + 2K, D) to queries (B, H, S, D), keys and values (B, K, S, D): per-head
        RMSNorm of queries and keys, then RoPE (``cpu_kernels.qkv_rope`` in one op)."""
        queries, keys, values = qkv.split(
            [self.num_q_heads, self.num_kv_heads, self.num_kv_heads], dim=2
        )  # (B, S, H|K|K, D)
        if self.q_norm is not None:  # one rotation for queries and keys together (fewer ops)
            queries_keys = torch.cat([self.q_norm(queries), self.k_norm(keys)], dim=2)
        else:
            queries_keys = qkv[:, :, : self.num_q_heads + self.num_kv_heads]
        queries, keys = apply_rotary(queries_keys, *rope).split(
            [self.num_q_heads, self.num_kv_heads], dim=2
        )
        return tuple(t.transpose(1, 2) for t in (queries, keys, values))

    def forward(
        self,
        hidden_states: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None,
    ) -> torch.Tensor:
        batch, seq_len, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(
            batch, seq_len, self.num_q_heads + 2 * self.num_kv_heads, self.head_dim
        )
        if cpu_kernels.qkv_rope_usable_for(qkv):  # a CPU decode step: ~15 small ops as one
            norms = self.q_norm is not None
            queries, keys, values = cpu_kernels.qkv_rope(
                qkv, self.q_norm.weight if norms else None, self.k_norm.weight if norms else None,
                *rope, self.q_norm.eps if norms else 0.0, self.num_q_heads, self.num_kv_heads,
            )  # fmt: skip
        else:
            queries, keys, values = self.split_rotate(qkv, rope)  # (B, *, S, D)
        if past_key_values is not None:
            keys, values = past_key_values.update(keys, values, self.layer_idx)  # (B, K, T, D)
        # No mask and a multi-token query means a plain causal prefill: let SDPA pick flash.
        is_causal = attention_mask is None and seq_len > 1
        attn = F.scaled_dot_product_attention(
            queries,
            keys,
            values,
            attn_mask=attention_mask,
            is_causal=is_causal,
            enable_gqa=self.num_q_heads != self.num_kv_heads,
        )  # (B, H, S, D)
        attn = attn.transpose(1, 2).reshape(batch, seq_len, self.num_q_heads * self.head_dim)
        return self.out_proj(attn)


class OpenELMFeedForwardNetwork(nn.Module):
    """SwiGLU: ``proj_1`` gives (gate, up) side by side; output ``proj_2(act(gate) * up)``."""

    def __init__(self, config: OpenELMConfig, layer_idx: int) -> None:
        super().__init__()
        d = config.model_dim
        self.intermediate_dim = config.ffn_dims()[layer_idx]
        self.with_glu = config.ffn_with_glu
        width = 2 * self.intermediate_dim if self.with_glu else self.intermediate_dim
        self.proj_1 = OpenELMLinear(d, width, bias=False)
        self.proj_2 = OpenELMLinear(self.intermediate_dim, d, bias=False)
        self.proj_2.is_residual_projection = True  # CoreNet draws it with a smaller std
        self.act = {"swish": F.silu, "silu": F.silu, "gelu": F.gelu, "relu": F.relu}[
            config.activation_fn_name
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.proj_1(x)
        if self.with_glu:
            gate, up = hidden.chunk(2, dim=-1)
            return self.proj_2(self.act(gate) * up)
        return self.proj_2(self.act(hidden))


class OpenELMDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm transformer layer: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, config: OpenELMConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn = OpenELMMultiHeadCausalAttention(config, layer_idx)
        self.ffn = OpenELMFeedForwardNetwork(config, layer_idx)
        self.attn_norm = OpenELMRMSNorm(config.model_dim, config.rms_norm_eps)
        self.ffn_norm = OpenELMRMSNorm(config.model_dim, config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(
            self.attn_norm(hidden_states), rope, attention_mask, past_key_values
        )
        return hidden_states + self.ffn(self.ffn_norm(hidden_states))


class OpenELMPreTrainedModel(PreTrainedModel):
    config_class = OpenELMConfig
    config: OpenELMConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["OpenELMDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _can_compile_fullgraph = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """CoreNet's initialisation (docs/openelm.md, "Initialisation").

        Linear N(0, in^-1/2); embedding N(0, d^-1/2); norms 1; residual output projections
        (``out_proj``, ``ffn.proj_2``) N(0, d^-1/2 (2N)^-1/2).
        """
        config = self.config
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):
                std = config.model_dim**-0.5 * (2 * config.num_transformer_layers) ** -0.5
            else:
                std = module.in_features**-0.5
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=config.model_dim**-0.5)
        elif isinstance(module, OpenELMRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, OpenELMRotaryEmbedding):
            cos, sin = module.compute_tables(module.cos.shape[0], module.cos.device)
            init.copy_(module.cos, cos)
            init.copy_(module.sin, sin)


class OpenELMModel(OpenELMPreTrainedModel):
    """The decoder stack: token embedding, layers, final norm (Apple's ``transformer``)."""

    def __init__(self, config: OpenELMConfig) -> None:
        super().__init__(config)
        self.token_embeddings = nn.Embedding(config.vocab_size, config.model_dim)
        self.layers = nn.ModuleList(
            OpenELMDecoderLayer(config, i) for i in range(config.num_transformer_layers)
        )
        self.norm = OpenELMRMSNorm(config.model_dim, config.rms_norm_eps)
        self.rotary = OpenELMRotaryEmbedding(
            config.head_dim,
            max(config.rope_max_length, config.max_context_length),
            config.rope_freq_constant,
        )
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.token_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.token_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        past_key_values = cache if cache is not None else past_key_values
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.token_embeddings(input_ids)
        batch, seq_len, _ = inputs_embeds.shape
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputation would append to the cache twice
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if not use_cache:
            past_key_values = None

        # Cached tokens: an int for a dynamic cache, a tensor for a static one (keeps compiled
        # decoding free of recompiles). A static cache returns all its slots to attention.
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        query_positions = torch.arange(seq_len, device=inputs_embeds.device) + past_length
        if position_ids is None:
            if attention_mask is not None:
                position_ids = positions_from_mask(attention_mask, seq_len)
            else:
                position_ids = query_positions.unsqueeze(0).expand(batch, -1)
        if getattr(past_key_values, "is_compileable", False):
            kv_length = past_key_values.layers[0].max_cache_len
        else:
            kv_length = past_length + seq_len
        mask = build_attention_mask(attention_mask, query_positions, kv_length)
        rope = self.rotary(position_ids, kv_length)

        hidden_states = inputs_embeds
        all_hidden_states = [] if output_hidden_states else None
        for layer in self.layers:
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
            hidden_states = layer(hidden_states, rope, mask, past_key_values)
        hidden_states = self.norm(hidden_states)
        if all_hidden_states is not None:
            all_hidden_states.append(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden_states) if all_hidden_states is not None else None,
            **{CACHE_FIELD: past_key_values},
        )


class OpenELMForCausalLM(OpenELMPreTrainedModel, GenerationMixin):
    """OpenELM with its language-model head (the token embedding, tied, unless configured not)."""

    _tied_weights_keys = {"lm_head.weight": "transformer.token_embeddings.weight"}
    decode_compile = "auto"
    """Compile the decode step in ``generate``: auto / on / off (``elmforge.model.decoding``)."""

    def __init__(self, config: OpenELMConfig) -> None:
        super().__init__(config)
        self.transformer = OpenELMModel(config)
        self.lm_head = OpenELMLinear(config.model_dim, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.token_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.token_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """``GenerationMixin.generate`` with elmforge's decode plan (static cache, compiled decode
        step) filled in where the caller left it open: see :mod:`elmforge.model.decoding`."""
        kwargs = decode_defaults(self, inputs, generation_config, kwargs)
        return super().generate(inputs, generation_config, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """``labels`` (B, S) give the shifted mean cross-entropy, ignoring -100.

        ``logits_to_keep=k`` computes logits for the last k positions only (generation needs one).
        """
        outputs = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            if logits_to_keep:
                hidden_states = hidden_states[:, -logits_to_keep:]
        else:
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )


AutoModel.register(OpenELMConfig, OpenELMModel, exist_ok=True)
AutoModelForCausalLM.register(OpenELMConfig, OpenELMForCausalLM, exist_ok=True)
