"""What a model's forward returns, reduced to the tensor the pipeline compares and ranks.

Models users bring return a tensor, a tuple ``(logits, aux...)``, a dict or a Hugging Face
``ModelOutput`` (an ordered dict whose first entry may be ``loss``). Every place that reads an output
(pruning checks, parity, ONNX Runtime runs, accuracy) goes through :func:`pick_output`, so the choice
is made once and is configurable (``key=``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

DEFAULT_KEY = "logits"


class OutputError(TypeError):
    """The model's output holds no tensor the pipeline can use; the message says what it held."""


def pick_output(out: Any, key: str | None = DEFAULT_KEY) -> torch.Tensor:
    """The tensor of ``out`` that stands for the prediction.

    tensor -> itself; mapping / ModelOutput -> ``out[key]`` when present, else its first tensor
    value that is not ``loss``; tuple / list -> its first tensor (searched in order, nested ok).
    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        if key is not None and key in out and isinstance(out[key], torch.Tensor):
            return out[key]
        for k, v in out.items():
            if k != "loss" and v is not None:
                try:
                    return pick_output(v, key)
                except OutputError:
                    continue
        raise OutputError(f"model output {type(out).__name__} has no tensor under {key!r}; "
                          f"keys: {list(out.keys())}")
    if isinstance(out, (tuple, list)):
        for v in out:
            try:
                return pick_output(v, key)
            except OutputError:
                continue
    raise OutputError(f"model output of type {type(out).__name__} holds no tensor")


def call_model(model: Any, x: Any) -> Any:
    """``model(**x)`` for a dict of keyword inputs (``input_ids``, ``attention_mask``), ``model(*x)``
    for a tuple / list of positional tensors, else ``model(x)``: a batch as models take it."""
    if isinstance(x, Mapping):
        return model(**x)
    return model(*x) if isinstance(x, (tuple, list)) else model(x)
