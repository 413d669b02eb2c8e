"""Quantization-aware training: fake quantization in the loop, straight-through gradients.

    model = qat_(model, QATConfig(weight_bits=4), train_loader)                  # our loop
    model = qat_(model, cfg, train_loader, loss_fn=distill_loss)                 # a teacher plugs in
    model = qat_(model, cfg, train_loader, finetune=my_training_loop)            # the user's loop

Ranges start from calibration (PTQ) on real training inputs. With ``learned_scales`` every scale
(per-channel weights, per-tensor activations) becomes a parameter trained with the LSQ gradient;
otherwise activation ranges stay as calibrated and weight scales follow the weights after every
step. The result is the same kind of wrapped model as ``quantize_`` and exports the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from torch import nn

from autocompress.config import Config, ConfigError
from autocompress.quantize.observers import Calibration
from autocompress.quantize.ptq import PTQConfig, _check_bits, quantize_, wrappers_of
from autocompress.train import LossFn, TrainConfig, fit

log = logging.getLogger(__name__)


@dataclass
class QATConfig(Config):
    weight_bits: int = 4                       # 2..8; below 8 stored as int8 holding fewer levels
    act_bits: int = 8                          # 2..8
    learned_scales: bool = True                # LSQ; False = observed (min/max) scales
    calibration: Calibration = "percentile"    # initial activation ranges
    weight_calibration: Literal["minmax", "mse"] = "mse"
    per_channel: bool = True
    num_calibration: int = 512
    skip_layers: list[str] = field(default_factory=list)
    quantize_logits: bool = False
    weight_storage: Literal["int8", "packed"] = "int8"   # see PTQConfig.weight_storage
    reduce_range: bool = True                  # see PTQConfig.reduce_range
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1.0, lr=1e-4))

    def validate(self) -> None:
        _check_bits("QATConfig", "weight_bits", self.weight_bits, 2, 8)
        _check_bits("QATConfig", "act_bits", self.act_bits, 2, 8)
        if self.num_calibration < 1:
            raise ConfigError(f"QATConfig.num_calibration must be >= 1, got {self.num_calibration}")

    def ptq(self) -> PTQConfig:
        return PTQConfig(weight_bits=self.weight_bits, act_bits=self.act_bits, calibration=self.calibration,
                         weight_calibration=self.weight_calibration, per_channel=self.per_channel,
                         num_calibration=self.num_calibration, skip_layers=list(self.skip_layers),
                         quantize_logits=self.quantize_logits, weight_storage=self.weight_storage,
                         reduce_range=self.reduce_range)


def make_scales_learnable(model: nn.Module) -> None:
    for w in wrappers_of(model).values():
        if w.mode == "static":
            w.w_q.make_learnable()
            w.in_q.make_learnable()
            w.out_q.make_learnable()


def _follow_weights(model: nn.Module) -> None:
    """Observed-scale mode: weight scales track the weights after every optimizer step."""
    for w in wrappers_of(model).values():
        if w.mode == "static":
            w.w_q.calibrate(w.weight)


def _positive_scales(model: nn.Module) -> None:
    """Training uses |scale|; store it so evaluation and export see the same grid."""
    for w in wrappers_of(model).values():
        for q in (w.w_q, w.in_q, w.out_q):
            q.scale.data = q.scale.data.abs().clamp_min(1e-12)


def qat_(model: nn.Module, config: QATConfig, data: Any, loss_fn: LossFn | None = None,
         finetune: Callable[[nn.Module], nn.Module] | None = None,
         calibration_data: Any = None) -> nn.Module:
    """Quantize ``model`` in place (PTQ init) and train it with fake quantization.

    ``data``: a labelled Dataset or DataLoader of (x, y) for training (and calibration when
    ``calibration_data`` is not given). ``loss_fn(model, x, y)`` replaces cross-entropy (e.g. a
    distillation loss); ``finetune(model) -> model`` replaces the training loop altogether.
    """
    quantize_(model, config.ptq(), calibration_data if calibration_data is not None else data)
    if config.learned_scales:
        make_scales_learnable(model)
    hooks = () if config.learned_scales else (_follow_weights,)
    desc = f"QAT w{config.weight_bits}a{config.act_bits}"
    if finetune is not None:
        model = finetune(model)
        if not config.learned_scales:
            _follow_weights(model)
    else:
        fit(model, data, config.train, loss_fn=loss_fn, hooks=hooks, desc=desc)
    model.eval()
    _positive_scales(model)
    scales = "learned (LSQ)" if config.learned_scales else "observed"
    for w in wrappers_of(model).values():
        if w.mode == "static":
            w.reason = f"QAT w{config.weight_bits}a{config.act_bits}, {scales} scales"
    return model
