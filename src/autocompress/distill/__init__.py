"""Knowledge distillation: soft targets (Hinton et al. 2015) and feature matching, as a fit loss_fn."""

from autocompress.distill.api import CachedTeacher, DistillationLoss, distill, distillation_loss
from autocompress.distill.losses import DistillConfig, kd_loss, make_adapter

__all__ = ["CachedTeacher", "DistillConfig", "DistillationLoss", "distill", "distillation_loss", "kd_loss", "make_adapter"]
