"""Attention masks and positions for OpenELM's forward: causal, padded, static-cache layouts.

Kept apart from ``modeling.py`` so the rules are in one short place: SDPA gets ``None`` (its
fastest kernels, flash on GPUs) whenever plain causal attention is exact, a boolean mask
otherwise; positions count only unpadded tokens, so left-padded prompts decode like unpadded ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def build_attention_mask(
    attention_mask: torch.Tensor | None,
    query_positions: torch.Tensor,
    kv_length: int,
) -> torch.Tensor | None:
    """Boolean SDPA mask (B or 1, 1, S, T): causal, minus padded keys, plus each query's own slot.

    ``attention_mask`` is either the usual (B, T') 0/1 padding mask or a ready 4-D mask (boolean,
    or additive float with 0 where attention is allowed) such as ``generate`` builds for a static
    cache. ``query_positions`` (S,) are the queries' slots in the cache. Returns None when plain
    causal attention (or none at all, for a single query) is exact, so SDPA can use its fastest
    kernels. A padded query would otherwise see no key at all (a NaN row that leaks into the next
    layer's keys), so every query may always attend to its own slot.
    """
    seq_len = query_positions.shape[0]
    key_positions = torch.arange(kv_length, device=query_positions.device)
    own_slot = (key_positions[None, :] == query_positions[:, None])[None, None]  # (1, 1, S, T)
    if attention_mask is not None and attention_mask.dim() == 4:
        allowed = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        width = allowed.shape[-1]
        if width < kv_length:  # slots past the mask's end are empty cache slots
            allowed = F.pad(allowed, (0, kv_length - width), value=False)
        return allowed[..., :kv_length] | own_slot
    # Whether a 2-D mask pads anything is only worth a host sync for a prompt (flash attention
    # needs mask=None); for a decode step both masks below are the same, so it is not asked.
    no_padding = attention_mask is None or (
        seq_len > 1 and not torch.compiler.is_compiling() and bool(attention_mask.all())
    )
    if no_padding and kv_length == seq_len:
        return None  # causal prefill, or one token with nothing cached
    causal = (key_positions[None, :] <= query_positions[:, None])[None, None]  # (1, 1, S, T)
    if no_padding:
        return causal
    keys_present = attention_mask.to(torch.bool)
    if keys_present.shape[1] < kv_length:  # a static cache is longer than the mask
        keys_present = F.pad(keys_present, (0, kv_length - keys_present.shape[1]), value=True)
    keys_present = keys_present[:, None, None, :kv_length]  # (B, 1, 1, T)
    return (causal & keys_present) | own_slot


def positions_from_mask(attention_mask: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Position ids (B, S) of the last ``seq_len`` tokens, counting only unpadded ones.

    Left-padded prompts then get the same positions as unpadded ones, so they decode the same.
    """
    if attention_mask.dim() == 4:  # visible keys per query, itself included
        allowed = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        return (allowed[:, 0].sum(-1) - 1).clamp(min=0)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq_len:]
