"""Safe weight files: safetensors, or a torch state dict read with ``weights_only=True``.

Nothing here unpickles arbitrary objects, so untrusted weight files cannot run code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS_DIR = Path(__file__).parent / "weights"


class WeightsError(ValueError):
    """A weight file is missing, unreadable or does not fit the model; the message names which."""


def save_weights(model: nn.Module, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        # weights_only=True: tensors and plain containers only, no arbitrary pickled objects
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"cannot read weights from {path}: {e}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return sd


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load ``path`` into ``model``; a missing/extra key or a shape mismatch names the tensor."""
    sd = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    if missing or extra:
        raise WeightsError(f"{path} does not match {type(model).__name__}: missing {missing[:5]}, "
                           f"unexpected {extra[:5]}")
    for k, v in sd.items():
        if own[k].shape != v.shape:
            raise WeightsError(f"{path}: tensor {k!r} has shape {tuple(v.shape)}, "
                               f"the model expects {tuple(own[k].shape)}")
    model.load_state_dict(sd)
    return model


def baseline_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.safetensors"
