"""A minimal, distillation-aware training / fine-tuning loop and accuracy evaluation.

The user's loop stays theirs: every technique takes an optional ``train_step(model, x, y, opt)``
or a whole ``finetune(model) -> model`` callable instead of this one. Hooks run after each
optimizer step (pruning masks and weight sharing use them to stay enforced during fine-tuning).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset
from tqdm.auto import tqdm

from autocompress.config import Config, ConfigError
from autocompress.outputs import call_model, pick_output

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
StepHook = Callable[[nn.Module], None]


class TrainingStopped(Exception):
    """``fit`` was asked to stop at a step boundary (a search's deadline, an early-stopping rule).
    The model is left as trained so far, in eval mode; ``step`` of ``total`` steps had run."""

    def __init__(self, message: str, step: int = 0, total: int = 0) -> None:
        super().__init__(message)
        self.step, self.total = step, total


@dataclass
class TrainConfig(Config):
    epochs: float = 1.0            # fractional epochs allowed: 0.25 = a quarter pass
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 128
    schedule: Literal["cosine", "constant"] = "cosine"
    seed: int = 0
    progress: bool = True
    # "auto": bf16 autocast on a CUDA device that has it, fp32 elsewhere and while fake quantizers
    # train (QAT simulates the integer grid; bf16's 8-bit mantissa would round x / scale off it)
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    def validate(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"TrainConfig.epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0:
            raise ConfigError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"TrainConfig.batch_size must be >= 1, got {self.batch_size}")


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the model's logits; ``x`` may be a dict of keyword inputs (token ids +
    attention mask) and the output a tuple or ModelOutput."""
    return F.cross_entropy(pick_output(call_model(model, x)), y)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` (or None): CUDA when available, else the CPU; anything else as given, checked
    here, before a search spends minutes on its baseline (the message names the device)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {str(device)!r} is not a device: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r}: CUDA is not available here (use 'auto' or 'cpu')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ConfigError(f"device {str(device)!r}: fine-tunes run on 'cpu' or 'cuda' ('auto' picks)")
    return dev


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def fit(model: nn.Module, data: Iterable | torch.utils.data.Dataset, cfg: TrainConfig | None = None,
        loss_fn: LossFn | None = None, hooks: Iterable[StepHook] = (), desc: str = "train",
        stop: Callable[[], bool] | None = None, device: str | torch.device | None = None) -> nn.Module:
    """Train ``model`` in place for ``cfg.epochs`` on ``data`` (a Dataset or a DataLoader).

    ``loss_fn(model, x, y)`` defaults to cross-entropy; distillation passes its own.
    ``hooks`` run after every optimizer step (e.g. re-apply pruning masks).
    ``stop()`` is asked before every step; when it answers True, :class:`TrainingStopped` is raised
    (the caller decides whether a cut-short fine-tune is a failure).
    ``device`` (``"auto"``: CUDA when available): where the steps run; the model comes back on the
    device it came on. ``None`` trains where the model is.
    """
    cfg = cfg or TrainConfig()
    loss_fn = loss_fn or cross_entropy
    torch.manual_seed(cfg.seed)
    if isinstance(data, torch.utils.data.Dataset):
        data = shuffled_batches(data, cfg.batch_size, cfg.seed)
    steps_per_epoch = len(data)  # type: ignore[arg-type]
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch)) if cfg.epochs > 0 else 0
    if total == 0:
        return model
    home = next((p.device for p in model.parameters()), torch.device("cpu"))
    dev = home if device is None else resolve_device(device)
    if dev != home:
        model.to(dev)
    bf16 = use_bf16(cfg.precision, dev, model)
    opt = make_optimizer(model, cfg)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
             if cfg.schedule == "cosine" else None)
    hooks = list(hooks)
    model.train()
    step = 0
    bar = tqdm(total=total, desc=desc, disable=not cfg.progress, leave=False, unit="step")
    try:
        while step < total:
            for x, y in data:
                if dev != home:
                    x, y = to_device(x, dev), y.to(dev, non_blocking=True)
                if stop is not None and stop():
                    raise TrainingStopped(f"{desc}: stopped after {step} of {total} steps", step, total)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = loss_fn(model, x, y)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}; "
                                             f"lower the learning rate ({cfg.lr})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                for h in hooks:
                    h(model)
                step += 1
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                if step >= total:
                    break
    finally:
        bar.close()
        model.eval()
        if dev != home:
            model.to(home)
    return model


def use_bf16(precision: str, dev: torch.device, model: nn.Module) -> bool:
    """Whether ``fit`` runs its forward passes under bf16 autocast (see ``TrainConfig.precision``)."""
    if precision != "auto":
        return precision == "bf16"
    if dev.type != "cuda" or not torch.cuda.is_bf16_supported():
        return False
    # a module that says so (the fake quantizers) keeps its model's training in fp32
    return not any(getattr(m, "fp32_training", False) for m in model.modules())


class _TensorBatches:
    """Shuffled batches sliced straight out of a TensorDataset's tensors (through any Subsets of
    it): every sample once per epoch, as a DataLoader gives them, without its per-sample indexing
    and collation, which cost more than the steps themselves on a GPU (benchmarks/bench_device.py)."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], index: torch.Tensor | None,
                 batch_size: int, seed: int) -> None:
        self.tensors, self.index, self.batch_size = tensors, index, batch_size
        self.n = len(tensors[0]) if index is None else len(index)
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.gen)
        if self.index is not None:
            order = self.index[order]
        for i in range(0, self.n, self.batch_size):
            rows = order[i:i + self.batch_size]
            yield tuple(t[rows] for t in self.tensors)


def shuffled_batches(ds: torch.utils.data.Dataset, batch_size: int, seed: int):
    """A TensorDataset of (inputs, labels), bare or through Subsets, is batched by slicing; any
    other dataset by a DataLoader."""
    inner, index = ds, None
    while isinstance(inner, Subset):
        rows = torch.as_tensor(inner.indices, dtype=torch.long)
        index = rows if index is None else rows[index]
        inner = inner.dataset
    if type(inner) is TensorDataset and len(inner.tensors) == 2 and len(ds) > 0:
        return _TensorBatches(inner.tensors, index, batch_size, seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def batchnorms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers that keep running statistics (the ones :func:`reestimate_bn` redoes)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def reestimate_bn(model: nn.Module, inputs: torch.Tensor, batch_size: int = 64) -> nn.Module:
    """Recompute every BatchNorm's running statistics from ``inputs`` (train-mode forward passes,
    no gradients, a cumulative average): after channels are removed or a layer is factorized the
    old statistics describe activations that no longer exist (a torchvision model, BN momentum
    0.01, scored 10.7 % in eval mode until they were recomputed). Other layers stay in eval mode."""
    bns = batchnorms(model)
    if not bns:
        return model
    was = model.training
    model.eval()
    saved = []
    for m in bns:
        saved.append(m.momentum)
        m.reset_running_stats()
        m.momentum = None      # cumulative moving average: every batch counts alike
        m.train()
    try:
        for i in range(0, _rows(inputs), batch_size):
            call_model(model, _slice(inputs, i, i + batch_size))
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.train(was)
    return model


def to_device(x, dev: torch.device):
    """A batch on ``dev``: a tensor, or each tensor of a dict of keyword inputs."""
    if isinstance(x, dict):
        return {k: v.to(dev, non_blocking=True) for k, v in x.items()}
    return x.to(dev, non_blocking=True)


def _rows(x) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def _slice(x, a: int, b: int):
    """Rows ``a:b`` of a batch: a tensor, or a dict of keyword inputs sliced alike."""
    return {k: v[a:b] for k, v in x.items()} if isinstance(x, dict) else x[a:b]


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable) -> float:
    """Top-1 accuracy in [0, 1]; batches may be dicts of keyword inputs and outputs ModelOutputs."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (pick_output(call_model(model, x)).argmax(-1) == y).sum().item()
        total += y.numel()
    model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return correct / total


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    outs, ys = [], []
    for x, y in loader:
        outs.append(pick_output(call_model(model, x)))
        ys.append(y)
    return torch.cat(outs), torch.cat(ys)
