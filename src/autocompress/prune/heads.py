"""Physical removal of whole attention heads from ``nn.MultiheadAttention``.

``nn.MultiheadAttention`` ties its inner width to ``embed_dim`` (``head_dim = embed_dim // num_heads``),
so it cannot hold fewer heads while keeping the residual width. :class:`PrunedMultiheadAttention`
is a drop-in subclass whose q/k/v projections are ``(H' * head_dim, E)`` and whose ``out_proj`` is
``(E, H' * head_dim)``; it keeps the same call signature and return values, so
``nn.TransformerEncoderLayer`` uses it unchanged (its fused fast path, which assumes the packed
full-width layout, is disabled by ``_qkv_same_embed_dim = False``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """Self/cross attention with ``num_heads`` heads of ``head_dim`` each, inner width
    ``num_heads * head_dim`` (smaller than ``embed_dim`` after pruning)."""

    def __init__(self, src: nn.MultiheadAttention, keep: list[int]) -> None:
        nn.Module.__init__(self)
        E, hd = src.embed_dim, src.head_dim
        rows = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in keep])          # (H'*hd,)
        inner = len(keep) * hd
        self.embed_dim, self.kdim, self.vdim = E, src.kdim, src.vdim
        self.num_heads, self.head_dim, self.inner_dim = len(keep), hd, inner
        self.dropout, self.batch_first = src.dropout, src.batch_first
        self._qkv_same_embed_dim = False        # tells TransformerEncoderLayer: no fused fast path
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        w = src.in_proj_weight.detach()                       # (3*n, E), n = E or an earlier pruned width
        n = w.shape[0] // 3
        self.in_proj_weight = nn.Parameter(torch.cat([w[i * n:(i + 1) * n][rows] for i in range(3)]))  # (3*inner, E)
        self.q_proj_weight = self.k_proj_weight = self.v_proj_weight = None
        if src.in_proj_bias is not None:
            b = src.in_proj_bias.detach()
            self.in_proj_bias = nn.Parameter(torch.cat([b[i * n:(i + 1) * n][rows] for i in range(3)]))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(inner, E, bias=src.out_proj.bias is not None)
        with torch.no_grad():
            self.out_proj.weight.copy_(src.out_proj.weight[:, rows])                 # (E, inner)
            if src.out_proj.bias is not None:
                self.out_proj.bias.copy_(src.out_proj.bias)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self.batch_first:                   # work in (B, T, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        B, T, _ = query.shape
        S = key.shape[1]
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        q = F.linear(query, wq, bq).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B,H',T,hd)
        k = F.linear(key, wk, bk).view(B, S, self.num_heads, self.head_dim).transpose(1, 2)    # (B,H',S,hd)
        v = F.linear(value, wv, bv).view(B, S, self.num_heads, self.head_dim).transpose(1, 2)
        mask = _merge_masks(attn_mask, key_padding_mask, B, self.num_heads, T, S, q.dtype)
        scores = q @ k.transpose(-2, -1) / self.head_dim ** 0.5                     # (B,H',T,S)
        if is_causal and mask is None:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril().logical_not()
            mask = torch.zeros(T, S, dtype=q.dtype, device=q.device).masked_fill(mask, float("-inf"))
        if mask is not None:
            scores = scores + mask
        attn = scores.softmax(-1)
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, self.dropout)
        out = (attn @ v).transpose(1, 2).reshape(B, T, self.inner_dim)            # (B,T,H'*hd)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        weights = (attn.mean(1) if average_attn_weights else attn) if need_weights else None
        return out, weights


def _merge_masks(attn_mask, key_padding_mask, B, H, T, S, dtype):
    """Additive float mask broadcastable to (B, H, T, S); bool masks mean True = masked out."""
    def additive(m):
        if m is None:
            return None
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        return m.to(dtype)

    out = None
    am = additive(attn_mask)
    if am is not None:
        out = am.view(B, H, T, S) if am.dim() == 3 else am                         # (B*H,T,S) or (T,S)
    kp = additive(key_padding_mask)
    if kp is not None:
        kp = kp.view(B, 1, 1, S)
        out = kp if out is None else out + kp
    return out


def head_scores(mha: nn.MultiheadAttention) -> torch.Tensor:
    """L1 norm per head of its q/k/v rows and out_proj columns: (num_heads,)."""
    E, hd, H = mha.embed_dim, mha.head_dim, mha.num_heads
    w = mha.in_proj_weight.detach().abs()                                          # (3*inner, E)
    inner = w.shape[0] // 3
    per_row = w.sum(1).view(3, inner).sum(0)                                       # (inner,)
    per_col = mha.out_proj.weight.detach().abs().sum(0)                            # (inner,)
    return (per_row + per_col).view(H, hd).sum(1)


def prune_heads_(model: nn.Module, ratio: float, exclude: list[str] | None = None) -> dict[str, int]:
    """Remove the ``ratio`` least important heads (by L1) of every packed ``nn.MultiheadAttention``
    (at least one head stays). Returns heads left per layer. Layers with separate q/k/v weights
    (``kdim != embed_dim``) are skipped with a log message naming them."""
    from autocompress.prune.targets import matches

    left = {}
    for name, mha in list(model.named_modules()):
        if not isinstance(mha, nn.MultiheadAttention) or (exclude and matches(exclude, name)):
            continue
        if not mha._qkv_same_embed_dim and not isinstance(mha, PrunedMultiheadAttention):
            log.info("head pruning skips %r: separate q/k/v projections are not supported", name)
            continue
        H = mha.num_heads
        n_remove = min(int(ratio * H), H - 1)
        if n_remove <= 0:
            left[name] = H
            continue
        keep = sorted(head_scores(mha).argsort(descending=True)[: H - n_remove].tolist())
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = PrunedMultiheadAttention(mha, keep).train(mha.training)
        setattr(parent, attr, new)
        left[name] = len(keep)
    return left
