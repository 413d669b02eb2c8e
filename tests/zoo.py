"""A zoo of SMALL test models covering the architectures techniques must survive.

Each builder returns ``(model, example_input)`` with the model in eval mode and seeded weights, so
tests of every technique (pruning, quantization, low-rank, ...) can run on "models we have not
seen": plain conv, residual adds with BatchNorm, depthwise-separable (grouped) conv, channel
concatenation, MLP, a TransformerEncoder and a GRU. All export to ONNX (see tests/test_prune_zoo.py).

    from zoo import ZOO, build
    model, x = build("residual_cnn")
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

NUM_CLASSES = 10


class PlainCNN(nn.Module):
    """conv-relu-pool x2, linear head. Input (B,1,16,16)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # (B,8,8,8)
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (B,16,4,4)
        )
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.head = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        return self.head(torch.relu(self.fc1(self.features(x).flatten(1))))


class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))   # the add ties conv2's outputs to x's channels


class ResidualCNN(nn.Module):
    """stem conv+BN, two residual blocks (the second after a strided projection), GAP, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = _ResBlock(8)
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())                                        # (B,16,8,8)
        self.block2 = _ResBlock(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, NUM_CLASSES)

    def forward(self, x):
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.head(self.pool(x).flatten(1))


class DepthwiseSeparableCNN(nn.Module):
    """MobileNet-style: depthwise 3x3 (groups=C) then pointwise 1x1, each with BN+ReLU6."""

    def __init__(self) -> None:
        super().__init__()

        def dw_sep(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())

        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())  # (B,8,8,8)
        self.blocks = nn.Sequential(dw_sep(8, 16, 1), dw_sep(16, 32, 2))                            # (B,32,4,4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))


class _Inception(nn.Module):
    """Three parallel branches concatenated along channels: (B,cin,H,W) -> (B,b1+b3+bp,H,W)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = nn.Conv2d(cin, 8, 1)
        self.b3 = nn.Sequential(nn.Conv2d(cin, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(cin, 4, 1))

    def forward(self, x):
        return torch.relu(torch.cat([self.b1(x), self.b3(x), self.bp(x)], dim=1))


class ConcatCNN(nn.Module):
    """Inception-style branches + a DenseNet-style concat of input and block output."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))  # (B,8,8,8)
        self.inc = _Inception(8)                                                              # (B,20,8,8)
        self.dense = nn.Conv2d(8 + 20, 16, 1)         # consumes cat([stem, inception]): (B,28,8,8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, NUM_CLASSES)

    def forward(self, x):
        s = self.stem(x)
        y = torch.relu(self.dense(torch.cat([s, self.inc(s)], dim=1)))
        return self.head(self.pool(y).flatten(1))


class MLP(nn.Module):
    """64 -> 48 -> 32 -> 10. Input (B,64)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU())
        self.head = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        return self.head(self.net(x))


class TransformerClassifier(nn.Module):
    """Token features (B,T=8,F=12) -> linear embed d=16 -> 2-layer encoder (4 heads) -> mean pool -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 16)
        layer = nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(16, NUM_CLASSES)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


class GRUClassifier(nn.Module):
    """Sequence (B,T=8,F=12) -> 1-layer GRU (hidden 16) -> last step -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(12, 16, batch_first=True)
        self.head = nn.Linear(16, NUM_CLASSES)

    def forward(self, x):
        out, _ = self.rnn(x)          # (B,T,16)
        return self.head(out[:, -1])


# name -> (constructor, example input shape without batch)
_SPECS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "plain_cnn": (PlainCNN, (1, 16, 16)),
    "residual_cnn": (ResidualCNN, (1, 16, 16)),
    "depthwise_cnn": (DepthwiseSeparableCNN, (1, 16, 16)),
    "concat_cnn": (ConcatCNN, (1, 16, 16)),
    "mlp": (MLP, (64,)),
    "transformer": (TransformerClassifier, (8, 12)),
    "gru": (GRUClassifier, (8, 12)),
}


def build(name: str, batch: int = 2, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """Return ``(model, example_input)``: seeded weights, eval mode, input of shape (batch, ...).

    The default batch is 2, not 1: torch.export specialises size-1 dims, so a batch-1 example
    makes the GRU / Transformer ONNX graphs accept batch 1 only."""
    if name not in _SPECS:
        raise KeyError(f"unknown zoo model {name!r}; known: {sorted(_SPECS)}")
    ctor, shape = _SPECS[name]
    torch.manual_seed(seed)
    model = ctor().eval()
    # non-trivial BN statistics, so folding/pruning bugs show up in outputs
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed + 1))
    return model, x


def batch_of(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random inputs for zoo model ``name`` (for parity checks / calibration)."""
    return torch.randn(n, *_SPECS[name][1], generator=torch.Generator().manual_seed(seed))


def input_shape(name: str) -> tuple[int, ...]:
    return _SPECS[name][1]


ZOO_NAMES: tuple[str, ...] = tuple(_SPECS)
ZOO: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {n: (lambda n=n: build(n)) for n in _SPECS}
CNN_NAMES = ("plain_cnn", "residual_cnn", "depthwise_cnn", "concat_cnn")


def make_loader(name: str, n: int = 64, batch_size: int = 16, seed: int = 0):
    """A tiny labelled dataset for zoo model ``name``: random inputs, labels from a fixed random
    linear rule (learnable, so fine-tuning / Taylor importance see real gradients)."""
    x = batch_of(name, n, seed)
    g = torch.Generator().manual_seed(seed + 7)
    w = torch.randn(x[0].numel(), NUM_CLASSES, generator=g)
    y = (x.flatten(1) @ w).argmax(1)
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
