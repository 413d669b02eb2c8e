"""What structured pruning needs to know about the model families torch-pruning does not handle
alone: Hugging Face attention (head counts live in plain attributes), recurrent layers (their
autograd graph is a tangle of primitive ops), and channel shuffles (a permutation torch-pruning's
index mapping cannot express; ShuffleNet).

Everything here is used by :mod:`autocompress.prune.structured` around its torch-pruning calls.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

# (heads attribute, q/k/v child names) of self-attention modules that are not nn.MultiheadAttention:
# Hugging Face BERT / RoBERTa / HF-ViT, DistilBERT, q/k/v_proj models, and timm's fused ``qkv``
# (one Linear of 3 x heads x head_dim). Head *size* stays fixed; whole heads go.
_HF_LAYOUTS = (("num_attention_heads", ("query", "key", "value")), ("n_heads", ("q_lin", "k_lin", "v_lin")),
               ("num_heads", ("q_proj", "k_proj", "v_proj")), ("num_heads", ("qkv",)))


@dataclass
class HFAttention:
    name: str
    module: nn.Module
    heads_attr: str
    qkv: list[nn.Linear]
    head_size: int

    @property
    def fused(self) -> int:
        return 3 if len(self.qkv) == 1 else 1      # timm: q, k and v in one Linear

    @property
    def heads(self) -> int:
        return getattr(self.module, self.heads_attr)


def hf_attention(model: nn.Module) -> list[HFAttention]:
    """Attention modules that keep their head count in an attribute and project q/k/v with
    ``nn.Linear`` children (``nn.MultiheadAttention`` is handled by :mod:`autocompress.prune.heads`)."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            continue
        for attr, kids in _HF_LAYOUTS:
            heads = getattr(m, attr, None)
            layers = [getattr(m, k, None) for k in kids]
            if isinstance(heads, int) and heads > 0 and all(isinstance(q, nn.Linear) for q in layers):
                width = layers[0].out_features // (3 if len(layers) == 1 else 1)
                if width % heads or layers[0].out_features % (3 if len(layers) == 1 else 1):
                    log.debug("head pruning skips %r: %d features do not split into %d heads", name, width, heads)
                    break
                out.append(HFAttention(name, m, attr, layers, width // heads))
                break
    return out


def head_ratio_for(heads: int, ratio: float) -> float:
    """A ratio torch-pruning turns (with ``ceil``) into ``int(ratio * heads)`` removed heads, at
    least one head kept."""
    n = min(int(ratio * heads), heads - 1)
    return 0.0 if n <= 0 else (n - 0.5) / heads


def sync_head_counts(attns: list[HFAttention]) -> dict[str, int]:
    """After surgery: the module's head count and widths follow its (pruned) q/k/v layers."""
    left = {}
    for a in attns:
        widths = {q.out_features for q in a.qkv}
        if len(widths) != 1:
            raise RuntimeError(f"attention {a.name!r}: q/k/v widths {sorted(widths)} no longer split into "
                               f"heads of {a.head_size}")
        width = widths.pop()
        if width % (a.head_size * a.fused):
            raise RuntimeError(f"attention {a.name!r}: width {width} no longer splits into heads of {a.head_size}")
        heads = width // (a.head_size * a.fused)
        setattr(a.module, a.heads_attr, heads)
        for attr in ("all_head_size", "attn_dim"):      # HF / timm names of the inner width
            if isinstance(getattr(a.module, attr, None), int):
                setattr(a.module, attr, heads * a.head_size)
        left[a.name] = heads
    return left


# -- recurrent layers: one opaque node in the traced graph ---------------------------------------

class _Opaque(torch.autograd.Function):
    """Identity on the RNN's outputs whose only autograd input is the RNN's input, so
    torch-pruning's tracer sees the recurrent layer as one node (input -> outputs) instead of its
    decomposed gate arithmetic. Used only while the dependency graph is built."""

    @staticmethod
    def forward(ctx, x, anchor, *outs):
        return tuple(o.clone() for o in outs)

    @staticmethod
    def backward(ctx, *grads):
        return (None,) * (2 + len(grads))


@contextlib.contextmanager
def opaque_rnns(model: nn.Module):
    rnns = [m for m in model.modules() if isinstance(m, nn.RNNBase)]

    def wrap(m: nn.RNNBase):
        orig = m.forward

        def forward(input, hx=None):
            if not isinstance(input, torch.Tensor):       # PackedSequence: trace as is
                return orig(input, hx)
            with torch.no_grad():
                out, h = orig(input, hx)
            hs = list(h) if isinstance(h, tuple) else [h]
            res = _Opaque.apply(input, next(m.parameters()), out, *hs)
            return res[0], (tuple(res[1:]) if isinstance(h, tuple) else res[1])
        return forward

    for m in rnns:
        m.forward = wrap(m)
    try:
        yield rnns
    finally:
        for m in rnns:
            del m.forward


# -- channel shuffle: torch-pruning's channel inference fails around it ---------------------------

class _RecordCat(TorchFunctionMode):
    """Records the true input widths of every ``torch.cat`` of the traced forward, keyed by the
    output's autograd node (torch-pruning infers them from neighbouring layers instead)."""

    def __init__(self, sizes: dict) -> None:
        super().__init__()
        self.sizes = sizes

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CATS and isinstance(out, torch.Tensor) and out.grad_fn is not None:
            tensors = args[0] if args else kwargs.get("tensors", ())
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            self.sizes[out.grad_fn] = (dim % out.ndim, [t.shape[dim] for t in tensors])
        return out


_CATS = (torch.cat, torch.concat, torch.concatenate)


def _split_offsets(grad_fn) -> list[int] | None:
    """Exact channel offsets of a split along dim 1, read from its autograd node."""
    sizes, dim = getattr(grad_fn, "_saved_self_sym_sizes", None), getattr(grad_fn, "_saved_dim", None)
    if sizes is None or dim is None or dim % len(sizes) != 1:
        return None
    total = int(sizes[1])
    if hasattr(grad_fn, "_saved_split_sizes"):
        parts = [int(v) for v in grad_fn._saved_split_sizes]
    elif hasattr(grad_fn, "_saved_split_size"):
        step = int(grad_fn._saved_split_size)
        parts = [min(step, total - o) for o in range(0, total, step)]
    else:
        return None
    offsets = [0]
    for v in parts:
        offsets.append(offsets[-1] + v)
    return offsets


def _five_d(node) -> bool:
    g = node.grad_fn
    size = getattr(g, "_saved_self_sizes", None) or getattr(g, "_saved_self_sym_sizes", None)
    return size is not None and len(size) >= 5


def _in_shuffle(node) -> bool:
    """A reshape of a channel shuffle: its input is 5-D (the view back), or a 5-D-input reshape
    follows within two ops (the view out, then the transpose)."""
    if _five_d(node):
        return True
    near = [o for n in node.outputs for o in [n, *n.outputs]]
    return any(n.type == tp.ops.OPTYPE.RESHAPE and _five_d(n) for n in near)


@contextlib.contextmanager
def shuffle_tolerant(opaque: set):
    """Build the dependency graph of a model with channel shuffles (ShuffleNet:
    ``view(B, g, C/g, H, W) -> transpose -> view(B, C, H, W)``, a permutation torch-pruning's index
    mapping cannot express). Its inference of channel counts runs through the shuffle and goes
    wrong: a division by zero in the reshape mapping, wrong split / concat offsets. Here the split
    and concat widths come from the traced forward itself, and the shuffle's reshapes are recorded
    in ``opaque``: groups crossing them are skipped, so channels go only where their order is known."""
    mod = tp.dependency.index_mapping
    orig = (mod.update_reshape_index_mapping, mod.update_concat_index_mapping, mod.update_split_index_mapping)
    cats: dict = {}

    def reshape(graph, node):
        if _in_shuffle(node):
            opaque.add(node.module)
            return
        try:
            orig[0](graph, node)
        except ZeroDivisionError:
            opaque.add(node.module)

    def concat(graph, node):
        rec = cats.pop(node.grad_fn, None)     # first visit only: later ones see pruned widths
        if rec is not None and rec[0] == 1:
            node.module.concat_sizes = list(rec[1])
        orig[1](graph, node)

    seen: set = set()

    def split(graph, node):
        if node.type == tp.ops.OPTYPE.SPLIT and node not in seen:   # first visit: unpruned widths
            seen.add(node)
            offsets = _split_offsets(node.grad_fn)
            if offsets is not None and len(offsets) == len(node.outputs) + 1:
                node.module.offsets = offsets
                node.module.split_sizes = [b - a for a, b in zip(offsets, offsets[1:])]
        orig[2](graph, node)

    mod.update_reshape_index_mapping, mod.update_concat_index_mapping, mod.update_split_index_mapping = \
        reshape, concat, split
    try:
        with _RecordCat(cats):
            yield opaque
    finally:
        mod.update_reshape_index_mapping, mod.update_concat_index_mapping, mod.update_split_index_mapping = orig
