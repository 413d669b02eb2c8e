"""Real architectures users bring: torchvision, timm and Hugging Face models in tiny configs (random
init, nothing downloaded), plus LSTM / GRU speech-style classifiers.

Each builder returns ``(model, example_input)`` in eval mode with seeded weights. Hugging Face
models are handed over *as they are*: int64 token ids in, a ``ModelOutput`` out.

    from realzoo import REAL_ZOO, build_real
    model, x = build_real("resnet18")
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from thirdparty import import_thirdparty

NUM_CLASSES = 10
IMG = (3, 32, 32)
SEQ, VOCAB = 16, 100
FRAMES, FEATS = 20, 16


def _tv():
    return import_thirdparty("torchvision").models


def resnet18() -> nn.Module:
    return _tv().resnet18(num_classes=NUM_CLASSES)


def mobilenet_v3_small() -> nn.Module:
    return _tv().mobilenet_v3_small(num_classes=NUM_CLASSES)


def efficientnet_b0() -> nn.Module:
    return _tv().efficientnet_b0(num_classes=NUM_CLASSES)


def shufflenet_v2() -> nn.Module:
    return _tv().shufflenet_v2_x0_5(num_classes=NUM_CLASSES)


def vit_tiny() -> nn.Module:
    """timm ViT (class token + position embedding owned by the model itself), 2 blocks, 4 heads."""
    vt = import_thirdparty("timm.models.vision_transformer")
    return vt.VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                                mlp_ratio=2.0, num_classes=NUM_CLASSES)


def convnext_tiny() -> nn.Module:
    """timm ConvNeXt with layer-scale gamma (a parameter owned by each block)."""
    cn = import_thirdparty("timm.models.convnext")
    return cn.ConvNeXt(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), num_classes=NUM_CLASSES)


def _hf_kwargs() -> dict:
    return dict(vocab_size=VOCAB, max_position_embeddings=SEQ * 2, num_labels=NUM_CLASSES)


def bert_tiny() -> nn.Module:
    tr = import_thirdparty("transformers")
    cfg = tr.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, **_hf_kwargs())
    return tr.BertForSequenceClassification(cfg)


def distilbert_tiny() -> nn.Module:
    tr = import_thirdparty("transformers")
    cfg = tr.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **_hf_kwargs())
    return tr.DistilBertForSequenceClassification(cfg)


class _RNNClassifier(nn.Module):
    """Speech-style: per-frame projection, a recurrent layer, a linear head on the last state.
    Input (B, T, F) of audio features."""

    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(FEATS, 32), nn.ReLU())
        self.rnn = cell(32, 24, batch_first=True)
        self.fc = nn.Sequential(nn.Linear(24, 32), nn.ReLU())
        self.head = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        y, _ = self.rnn(self.proj(x))
        return self.head(self.fc(y[:, -1]))


def lstm_classifier() -> nn.Module:
    return _RNNClassifier(nn.LSTM)


def gru_classifier() -> nn.Module:
    return _RNNClassifier(nn.GRU)


_IMAGE = (3, 32, 32)
_SPECS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "resnet18": (resnet18, "image"), "mobilenet_v3_small": (mobilenet_v3_small, "image"),
    "efficientnet_b0": (efficientnet_b0, "image"), "shufflenet_v2": (shufflenet_v2, "image"),
    "vit_tiny": (vit_tiny, "image"), "convnext_tiny": (convnext_tiny, "image"),
    "bert_tiny": (bert_tiny, "tokens"), "distilbert_tiny": (distilbert_tiny, "tokens"),
    "lstm": (lstm_classifier, "frames"), "gru": (gru_classifier, "frames"),
}
REAL_ZOO_NAMES: tuple[str, ...] = tuple(_SPECS)
CNN_NAMES = ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2", "convnext_tiny")
HF_NAMES = ("bert_tiny", "distilbert_tiny")
RNN_NAMES = ("lstm", "gru")


def batch_of(name: str, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    kind = _SPECS[name][1]
    if kind == "tokens":
        return torch.randint(0, VOCAB, (n, SEQ), generator=g)             # int64 token ids
    if kind == "frames":
        return torch.randn(n, FRAMES, FEATS, generator=g)
    return torch.randn(n, *_IMAGE, generator=g)


def build_real(name: str, batch: int = 2, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = _SPECS[name][0]().eval()
    return model, batch_of(name, batch, seed + 1)


def logits(out) -> torch.Tensor:
    """The logits of whatever a zoo model returns (tensor or ModelOutput)."""
    return out if isinstance(out, torch.Tensor) else out["logits"]
