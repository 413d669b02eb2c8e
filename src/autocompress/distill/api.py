"""Distillation as a ``loss_fn`` for :func:`autocompress.train.fit` (so any fine-tune can take a
teacher) and a one-call :func:`distill`.

    kd = distillation_loss(teacher, DistillConfig(temperature=4, alpha=0.9))
    fit(student, data, TrainConfig(epochs=2), loss_fn=kd, hooks=[kd.step, *mask_hooks])
    kd.close()

``kd.step`` trains the feature adapters (when feature pairs are configured); without features it is
a no-op, so passing it is always safe.
"""

from __future__ import annotations

import logging
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.data import Splits
from autocompress.distill.losses import DistillConfig, kd_loss, make_adapter
from autocompress.outputs import call_model, pick_output
from autocompress.train import StepHook, TrainConfig, fit

log = logging.getLogger(__name__)


def _named(model: nn.Module, name: str, role: str) -> nn.Module:
    mods = dict(model.named_modules())
    if name not in mods:
        raise ValueError(f"DistillConfig.features: the {role} has no module {name!r}; its modules are "
                         f"{[n for n in mods if n][:30]}")
    return mods[name]


class DistillationLoss:
    """``loss_fn(model, x, y)``: alpha * KD(T) + (1 - alpha) * CE + feature_weight * sum MSE(features)."""

    def __init__(self, teacher: nn.Module, config: DistillConfig | None = None) -> None:
        self.teacher = teacher.eval()
        self.cfg = config or DistillConfig()
        self.adapters = nn.ModuleDict()
        self._student: nn.Module | None = None
        self._handles: list = []
        self._s_feats: dict[str, torch.Tensor] = {}
        self._t_feats: dict[str, torch.Tensor] = {}
        self._opt: torch.optim.Optimizer | None = None
        for _, tname in self.cfg.features:
            self._handles.append(_named(teacher, tname, "teacher").register_forward_hook(
                self._recorder(self._t_feats, tname)))

    @staticmethod
    def _recorder(store: dict, name: str):
        def hook(_m, _inp, out):
            store[name] = out[0] if isinstance(out, (tuple, list)) else out
        return hook

    def _attach(self, student: nn.Module) -> None:
        """Hook the student's feature layers (again if a different student object comes in)."""
        if self._student is not None:
            for h in self._handles[len(self.cfg.features):]:
                h.remove()
            del self._handles[len(self.cfg.features):]
        for sname, _ in self.cfg.features:
            self._handles.append(_named(student, sname, "student").register_forward_hook(
                self._recorder(self._s_feats, sname)))
        self._student = student

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if model is not self._student:
            self._attach(model)
        self.teacher.eval()
        with torch.no_grad():
            t_logits = pick_output(call_model(self.teacher, x))
        s_logits = pick_output(call_model(model, x))
        a, cfg = self.cfg.alpha, self.cfg
        loss = a * kd_loss(s_logits, t_logits, cfg.temperature)
        if a < 1.0:
            loss = loss + (1.0 - a) * F.cross_entropy(s_logits, y)
        if cfg.features and cfg.feature_weight > 0:
            loss = loss + cfg.feature_weight * self._feature_loss()
        return loss

    def _feature_loss(self) -> torch.Tensor:
        total = torch.zeros(())
        created = False
        for i, (sname, tname) in enumerate(self.cfg.features):
            fs, ft = self._s_feats.get(sname), self._t_feats.get(tname)
            if fs is None or ft is None:
                raise RuntimeError(f"feature distillation: layer {sname if fs is None else tname!r} "
                                   f"did not run in the forward pass")
            key = str(i)
            if key not in self.adapters:
                self.adapters[key] = make_adapter(fs, ft, f"{sname} -> {tname}").to(fs.device)
                created = True
            total = total + F.mse_loss(self.adapters[key](fs), ft.detach())
        if created:
            params = list(self.adapters.parameters())
            self._opt = torch.optim.Adam(params, lr=self.cfg.adapter_lr) if params else None
        return total

    def step(self, model: nn.Module) -> None:
        """Step hook for fit: update the adapters with the gradients of the last loss."""
        if self._opt is not None:
            self._opt.step()
            self._opt.zero_grad(set_to_none=True)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._student = None

    def __enter__(self) -> "DistillationLoss":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CachedTeacher(nn.Module):
    """A teacher whose outputs for a fixed set of training inputs are computed once.

    Fine-tuning for several epochs with a large teacher otherwise pays the teacher's forward pass at
    every step (LeNet-5's costs more than LeNet-300-100's training step). Samples are looked up by
    a random projection of their values (identical inputs share logits, so a "collision" between
    equal images is harmless); any input not found runs through the real teacher, so the answer is
    always the teacher's."""

    def __init__(self, teacher: nn.Module, inputs: torch.Tensor, batch: int = 1000) -> None:
        super().__init__()
        self.teacher = teacher.eval()
        self.proj = torch.randn(inputs[0].numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        with torch.no_grad():
            logits = torch.cat([teacher(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])
        keys = self._keys(inputs)
        self.keys, order = torch.sort(keys)
        self.logits = logits[order]

    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1).double() @ self.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the cache lives on the CPU; a student training on an accelerator gets its logits there
        k = self._keys(x.cpu())
        i = torch.searchsorted(self.keys, k).clamp(max=len(self.keys) - 1)
        hit = self.keys[i] == k
        if bool(hit.all()):
            return self.logits[i].to(x.device)
        with torch.no_grad():
            return torch.where(hit[:, None], self.logits[i], self.teacher(x.cpu())).to(x.device)


def distillation_loss(teacher: nn.Module, config: DistillConfig | None = None) -> DistillationLoss:
    """A ``loss_fn(model, x, y)`` for :func:`autocompress.train.fit`; pass its ``.step`` as a hook."""
    return DistillationLoss(teacher, config)


def distill(student: nn.Module, teacher: nn.Module, data: Splits | Iterable, config: DistillConfig | None = None,
            train: TrainConfig | None = None, hooks: Iterable[StepHook] = ()) -> nn.Module:
    """Train ``student`` in place to follow ``teacher`` (soft targets + optional features); returns it.

    ``data``: :class:`Splits` (its train split is used), a Dataset or a DataLoader.
    ``hooks``: extra step hooks, e.g. pruning masks or :func:`autocompress.encode.sync_clusters`.
    """
    train = train or TrainConfig()
    if isinstance(data, Splits):
        data = data.loader("train", batch_size=train.batch_size, shuffle=True, seed=train.seed)
    with distillation_loss(teacher, config) as kd:
        fit(student, data, train, loss_fn=kd, hooks=[kd.step, *hooks], desc="distill")
    return student
