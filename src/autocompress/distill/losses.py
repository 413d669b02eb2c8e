"""Knowledge-distillation losses (Hinton et al. 2015) and feature matching with adapters.

``kd_loss`` is the soft-target term: KL(teacher_T || student_T) * T^2, the T^2 keeping its gradient
scale independent of the temperature. Feature distillation records chosen intermediate outputs of
student and teacher with forward hooks and penalises their mean-squared difference, after a small
learned adapter (1x1 conv for (B,C,H,W), linear for (B,...,D)) maps the student's feature onto the
teacher's shape where they differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.config import Config, ConfigError


@dataclass
class DistillConfig(Config):
    temperature: float = 4.0
    alpha: float = 0.9                     # weight of the soft-target loss; 1 - alpha on hard labels
    features: list[tuple[str, str]] = field(default_factory=list)  # (student module, teacher module)
    feature_weight: float = 1.0            # weight of the summed feature (MSE) losses
    adapter_lr: float = 1e-3               # Adam learning rate of the adapters

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"DistillConfig.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"DistillConfig.alpha must be in [0, 1], got {self.alpha}")
        if self.feature_weight < 0:
            raise ConfigError(f"DistillConfig.feature_weight must be >= 0, got {self.feature_weight}")
        for i, pair in enumerate(self.features):
            if len(pair) != 2 or not all(isinstance(p, str) for p in pair):
                raise ConfigError(f"DistillConfig.features[{i}] must be (student_layer, teacher_layer), "
                                  f"got {pair!r}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch. Logits (B, C)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def make_adapter(student_feat: torch.Tensor, teacher_feat: torch.Tensor, where: str) -> nn.Module:
    """Smallest module mapping a student feature onto the teacher's shape (batch dims excluded)."""
    s, t = tuple(student_feat.shape[1:]), tuple(teacher_feat.shape[1:])
    if s == t:
        return nn.Identity()
    if len(s) == 3 and len(t) == 3:                       # (C,H,W): 1x1 conv, resize if needed
        conv = nn.Conv2d(s[0], t[0], 1, bias=False)
        return conv if s[1:] == t[1:] else nn.Sequential(conv, nn.AdaptiveAvgPool2d(t[1:]))
    if len(s) == len(t) and s[:-1] == t[:-1]:             # (..., D): linear on the last dim
        return nn.Linear(s[-1], t[-1], bias=False)
    if len(s) == 1 or len(t) == 1:                        # vector vs anything: flatten, then linear
        return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(s).prod()),
                                                     int(torch.tensor(t).prod()), bias=False),
                             nn.Unflatten(1, t))
    raise ValueError(f"feature distillation {where}: cannot adapt a student feature of shape {s} to "
                     f"the teacher's {t}")
