"""A small custom CNN — not one of the bundled models — to try autocompress on "your own" model.

The run config ``custom_cnn.yaml`` names the two functions autocompress needs:
``build()`` (the architecture) and ``data()`` (train / val / test splits). Train it, and train a
"next sprint" copy with another seed, with::

    python examples/custom_cnn.py --out examples/weights/custom_cnn.safetensors
    python examples/custom_cnn.py --seed 1 --out examples/weights/custom_cnn_v2.safetensors
"""

from __future__ import annotations

import argparse
import logging

import torch
from torch import nn
from torch.utils.data import Subset

from autocompress.data import Splits, load_mnist

TRAIN_SUBSET = 20_000   # a subset of MNIST's 50k training images keeps every step fast on 2 cores


class SmallCNN(nn.Module):
    """conv 1->8 3x3, ReLU, pool, conv 8->16 3x3, ReLU, pool, fc 784->64, ReLU, fc 64->10 (~52k params)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # (B,8,14,14)
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (B,16,7,7)
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 7 * 7, 64), nn.ReLU(),
                                        nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (B,1,28,28) -> (B,10)
        return self.classifier(self.features(x))


def build() -> nn.Module:
    return SmallCNN()


def data() -> Splits:
    """Bundled MNIST images, with the training split cut to ``TRAIN_SUBSET`` samples."""
    full = load_mnist(flat=False)
    return Splits(Subset(full.train, range(TRAIN_SUBSET)), full.val, full.test, full.input_shape,
                  full.num_classes)


def train(out: str, seed: int = 0, epochs: float = 6.0) -> float:
    """Train from scratch, save the weights (safetensors), return the test accuracy."""
    from autocompress.models import save_weights
    from autocompress.train import TrainConfig, evaluate, fit

    torch.manual_seed(seed)
    model, splits = build(), data()
    fit(model, splits.train, TrainConfig(epochs=epochs, lr=2e-3, batch_size=64, seed=seed), desc="train SmallCNN")
    acc = evaluate(model, splits.loader("test", 1000))
    save_weights(model, out)
    logging.getLogger(__name__).info("saved %s (test accuracy %.2f %%)", out, 100 * acc)
    return acc


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="train the example CNN on bundled MNIST")
    p.add_argument("--out", default="examples/weights/custom_cnn.safetensors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=float, default=6.0, help="fractional epochs allowed (0.05 = a broken model)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"test accuracy {100 * train(a.out, a.seed, a.epochs):.2f} %")
