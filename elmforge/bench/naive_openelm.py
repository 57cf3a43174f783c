"""A plain eager OpenELM written the naive way: ``elmforge bench --against naive``'s baseline.

It follows the algorithm of Apple's hub code (``modeling_openelm.py``): RMSNorm by hand in float32
(pow, mean, rsqrt, multiply, cast), ``repeat_interleave`` to expand keys/values for grouped-query
attention, a concatenating KV cache that is rotated again every step, and logits for every
position. Same parameter names as elmforge, so it loads the same state dict. Equal-length prompts
only (no padding); a benchmark baseline, not an inference path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from elmforge import OpenELMConfig


class NaiveRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class NaiveRotary(nn.Module):
    def __init__(self, head_dim: int, max_len: int, base: float) -> None:
        super().__init__()
        self.head_dim, self.base, self.max_len = head_dim, base, max_len

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Apple's code caches the tables but rebuilds their views and casts every call.
        key_len, query_len = k.shape[2], q.shape[2]
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        pos = torch.arange(max(key_len, self.max_len)).float()
        emb = torch.cat([torch.outer(pos, inv_freq)] * 2, dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]

        def rotate(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            x1, x2 = x.float().chunk(2, dim=-1)
            return (x.float() * c + torch.cat((-x2, x1), -1) * s).type_as(x)

        q = rotate(
            q, cos[:, :, key_len - query_len : key_len], sin[:, :, key_len - query_len : key_len]
        )
        k = rotate(k, cos[:, :, :key_len], sin[:, :, :key_len])
        return q, k


class NaiveAttention(nn.Module):
    def __init__(self, config: OpenELMConfig, i: int) -> None:
        super().__init__()
        self.hq, self.hk, self.hd = (
            config.num_query_heads[i],
            config.num_kv_heads[i],
            config.head_dim,
        )
        d = config.model_dim
        self.qkv_proj = nn.Linear(d, (self.hq + 2 * self.hk) * self.hd, bias=False)
        self.q_norm = NaiveRMSNorm(self.hd)
        self.k_norm = NaiveRMSNorm(self.hd)
        self.out_proj = nn.Linear(self.hq * self.hd, d, bias=False)
        self.rotary = NaiveRotary(self.hd, config.rope_max_length, config.rope_freq_constant)

    def forward(self, x: torch.Tensor, cache: list | None) -> torch.Tensor:
        b, s, _ = x.shape
        qkv = self.qkv_proj(x).reshape(b, s, self.hq + 2 * self.hk, self.hd).transpose(1, 2)
        q, k, v = qkv.split([self.hq, self.hk, self.hk], dim=1)
        q, k = self.q_norm(q), self.k_norm(k)
        if cache is not None:
            if cache:
                k = torch.cat([cache[0], k], dim=2)
                v = torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
        q, k = self.rotary(q, k)  # Apple's code rotates the whole key cache every step
        groups = self.hq // self.hk
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        key_len = k.shape[2]
        causal = torch.ones(key_len, key_len, dtype=torch.bool).tril()[key_len - s :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, s, self.hq * self.hd))


class NaiveFFN(nn.Module):
    def __init__(self, config: OpenELMConfig, i: int) -> None:
        super().__init__()
        width = config.ffn_dims()[i]
        self.proj_1 = nn.Linear(config.model_dim, 2 * width, bias=False)
        self.proj_2 = nn.Linear(width, config.model_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.proj_1(x).chunk(2, dim=-1)
        return self.proj_2(F.silu(gate) * up)


class NaiveLayer(nn.Module):
    def __init__(self, config: OpenELMConfig, i: int) -> None:
        super().__init__()
        self.attn, self.ffn = NaiveAttention(config, i), NaiveFFN(config, i)
        self.attn_norm, self.ffn_norm = (
            NaiveRMSNorm(config.model_dim),
            NaiveRMSNorm(config.model_dim),
        )

    def forward(self, x: torch.Tensor, cache: list | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cache)
        return x + self.ffn(self.ffn_norm(x))


class NaiveTransformer(nn.Module):
    def __init__(self, config: OpenELMConfig) -> None:
        super().__init__()
        self.token_embeddings = nn.Embedding(config.vocab_size, config.model_dim)
        self.layers = nn.ModuleList(
            NaiveLayer(config, i) for i in range(config.num_transformer_layers)
        )
        self.norm = NaiveRMSNorm(config.model_dim)


class NaiveOpenELM(nn.Module):
    def __init__(self, config: OpenELMConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = NaiveTransformer(config)

    def forward(self, tokens: torch.Tensor, caches: list[list] | None = None) -> torch.Tensor:
        x = self.transformer.token_embeddings(tokens)
        for i, layer in enumerate(self.transformer.layers):
            x = layer(x, caches[i] if caches is not None else None)
        x = self.transformer.norm(x)
        return F.linear(x, self.transformer.token_embeddings.weight)  # logits for every position

    def new_cache(self) -> list[list]:
        return [[] for _ in self.transformer.layers]
