"""Fake quantization with a straight-through estimator, and the wrapper that simulates a layer
exactly as ONNX Runtime will run it.

Rounding follows ONNX ``QuantizeLinear``: ``q = saturate(round_half_even(x / scale) + zp)`` (a true
division, not a multiplication by ``1/scale``: the two differ at ties), ``x' = (q - zp) * scale``.

A :class:`QuantWrapper` wraps (does not subclass) a ``Conv1d``/``Conv2d``/``Linear`` and runs in one
of the modes of :data:`MODES`:

- ``static``: input per-tensor affine (calibrated), weights per-channel symmetric, bias int32 with
  scale ``s_in * s_w`` (what a ``QLinearConv`` / ``QGemm`` adds), output per-tensor affine;
- ``dynamic``: input range measured on the live tensor (``DynamicQuantizeLinear``: uint8, per tensor
  over the whole batch), weights per-channel int8, bias float;
- ``weight_only``: weights in groups along K (``MatMulNBits``), activations float;
- ``fp16``: weights and bias rounded to half precision;
- ``fp32``: the wrapped layer unchanged (a layer kept at full precision).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.quantize.observers import Calibration, Observer, weight_scale

Mode = Literal["static", "dynamic", "weight_only", "fp16", "fp32"]
MODES: tuple[str, ...] = ("static", "dynamic", "weight_only", "fp16", "fp32")
SUPPORTED = (nn.Conv1d, nn.Conv2d, nn.Linear)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even forward, identity backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Same value, gradient multiplied by ``g`` (LSQ: keeps learned-scale steps well sized)."""
    return (x - x * g).detach() + x * g


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | float, qmin: int,
               qmax: int) -> torch.Tensor:
    """Quantize-dequantize; gradients pass straight through inside ``[qmin, qmax]``, are zero
    outside (clipped values), and reach ``scale`` when it is a learned parameter."""
    q = torch.clamp(round_ste(x / scale) + zp, qmin, qmax)
    return (q - zp) * scale


class ActQuantizer(nn.Module):
    """Per-tensor affine quantizer of one activation tensor (calibrated, optionally learned).

    ``bits`` < 8 is stored in int8 with fewer levels: export adds a ``Clip`` so the runtime
    saturates at the same narrow range as this simulation.
    """

    # train.fit keeps autocast off while a model holds one: bf16's 8-bit mantissa would round
    # x / scale off the integer grid this module simulates
    fp32_training = True

    def __init__(self, name: str, bits: int = 8, signed: bool = True) -> None:
        super().__init__()
        self.name, self.bits, self.signed = name, bits, signed
        self.qmin, self.qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
        self.observer = Observer(name)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros(()))
        self.enabled = False
        self.observing = False
        self.source: ActQuantizer | None = None  # tied: share an upstream quantizer's grid

    def set_range(self, lo: float, hi: float) -> None:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = max(hi - lo, 1e-8) / (self.qmax - self.qmin)
        zp = min(max(round(self.qmin - lo / scale), self.qmin), self.qmax)
        learned = isinstance(self.scale, nn.Parameter)
        with torch.no_grad():
            self.scale.copy_(torch.tensor(scale, dtype=torch.float32))
            self.zero_point.fill_(float(zp))
        self.scale.requires_grad_(learned)

    def calibrate(self, method: Calibration, percentile: float = 99.99) -> None:
        self.set_range(*self.observer.range(method, self.bits, percentile))

    def make_learnable(self) -> None:
        if not isinstance(self.scale, nn.Parameter):
            s = self.scale.detach().clone()
            del self.scale
            self.scale = nn.Parameter(s)

    def params(self) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """The grid actually used: the tied upstream quantizer's when there is one."""
        src = self.source if self.source is not None and self.source.enabled else self
        return src.scale, src.zero_point, src.qmin, src.qmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observer.update(x)
        if not self.enabled:
            return x
        scale, zp, qmin, qmax = self.params()
        s = scale
        if isinstance(scale, nn.Parameter) and self.training:
            s = grad_scale(scale.abs() + 1e-12, 1.0 / math.sqrt(x.numel() * max(qmax, 1)))
        return fake_quant(x, s, zp, qmin, qmax)


class WeightQuantizer(nn.Module):
    """Symmetric per-channel (or per-tensor) weights, or asymmetric/symmetric groups along K.

    Scales have shape (C_out,) per channel, () per tensor, (C_out, G) per group.
    """

    # train.fit keeps autocast off while a model holds one: bf16's 8-bit mantissa would round
    # x / scale off the integer grid this module simulates
    fp32_training = True

    def __init__(self, bits: int = 8, per_channel: bool = True, group_size: int | None = None,
                 symmetric: bool = True, method: Literal["minmax", "mse"] = "minmax",
                 reduce_range: bool = False) -> None:
        super().__init__()
        self.bits, self.per_channel, self.group_size = bits, per_channel, group_size
        self.symmetric, self.method = symmetric, method
        # reduce_range: 8-bit weights keep 7 bits of range (|q| <= 63), stored as int8. On x86
        # without VNNI ONNX Runtime's u8s8 kernels add pairs of uint8 x int8 products in 16 bits
        # (vpmaddubsw), which saturate beyond that: on an AVX2 EPYC, full-range weights changed
        # 7 % of SmallResNet's top-1 labels against the simulation (ORT's quantizer: reduce_range)
        self.range_bits = 7 if reduce_range and symmetric and bits == 8 else bits
        if symmetric:
            b = self.range_bits
            self.qmin, self.qmax = -(2 ** (b - 1) - 1), 2 ** (b - 1) - 1  # narrow: zero-point 0
        else:
            self.qmin, self.qmax = 0, 2 ** bits - 1
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros(()))

    @torch.no_grad()
    def calibrate(self, w: torch.Tensor) -> None:
        learned = isinstance(self.scale, nn.Parameter)
        if self.group_size is not None and not self.symmetric:
            wg = self._grouped(w)                                   # (C_out, G, group)
            lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
            s = ((hi - lo) / (self.qmax - self.qmin)).clamp_min(1e-12)
            zp = torch.clamp(torch.round(self.qmin - lo / s), self.qmin, self.qmax)
        else:
            s = weight_scale(w, self.range_bits, self.method, self.group_size)
            if not self.per_channel and self.group_size is None:
                s = s.max()
            zp = torch.zeros_like(s)
        if learned:
            self.scale.data = s.float()
        else:
            self.scale = s.float()
        self.zero_point = zp.float()

    def make_learnable(self) -> None:
        if not isinstance(self.scale, nn.Parameter):
            s = self.scale.detach().clone()
            del self.scale
            self.scale = nn.Parameter(s)

    def _grouped(self, w: torch.Tensor) -> torch.Tensor:
        wf = w.reshape(w.shape[0], -1)
        pad = (-wf.shape[1]) % self.group_size
        return F.pad(wf, (0, pad)).reshape(w.shape[0], -1, self.group_size)

    def _expand(self, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Broadcast a scale / zero point against the weight tensor."""
        if t.ndim == 0:
            return t
        return t.reshape(-1, *([1] * (w.ndim - 1)))

    def integer(self, w: torch.Tensor) -> torch.Tensor:
        """The stored integers (as float), same shape as ``w`` for per-channel, (C_out, G, group)
        for groups (padded with zeros to a whole number of groups)."""
        with torch.no_grad():
            if self.group_size is not None:
                s, z = self.scale.unsqueeze(-1), self.zero_point.unsqueeze(-1)
                return torch.clamp(torch.round(self._grouped(w) / s) + z, self.qmin, self.qmax)
            s, z = self._expand(self.scale, w), self._expand(self.zero_point, w)
            return torch.clamp(torch.round(w / s) + z, self.qmin, self.qmax)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = self.scale
        if isinstance(scale, nn.Parameter) and self.training:
            scale = grad_scale(scale.abs() + 1e-12, 1.0 / math.sqrt(w.numel() * self.qmax))
        if self.group_size is not None:
            k = w.reshape(w.shape[0], -1).shape[1]
            wq = fake_quant(self._grouped(w), scale.unsqueeze(-1), self.zero_point.unsqueeze(-1),
                            self.qmin, self.qmax)
            return wq.reshape(w.shape[0], -1)[:, :k].reshape(w.shape)
        return fake_quant(w, self._expand(scale, w), self._expand(self.zero_point, w),
                          self.qmin, self.qmax)


def _dynamic_uint8(x: torch.Tensor) -> torch.Tensor:
    """What ``DynamicQuantizeLinear`` does: uint8 over the whole tensor, range including 0."""
    lo = torch.clamp(x.detach().min(), max=0.0)
    hi = torch.clamp(x.detach().max(), min=0.0)
    scale = (hi - lo) / 255.0
    if float(scale) == 0.0:
        return x
    zp = torch.clamp(torch.round(0 - lo / scale), 0, 255)
    return fake_quant(x, scale, zp, 0, 255)


class QuantWrapper(nn.Module):
    """Wraps one Conv/Linear; ``mode`` says how ONNX Runtime will run it (see module doc)."""

    def __init__(self, module: nn.Module, name: str) -> None:
        super().__init__()
        if not isinstance(module, SUPPORTED):
            raise TypeError(f"{name}: cannot wrap {type(module).__name__}; supported: "
                            f"{[t.__name__ for t in SUPPORTED]}")
        self.module = module
        self.name = name
        self.mode: str = "fp32"
        self.in_q = ActQuantizer(f"{name}:input")
        self.out_q = ActQuantizer(f"{name}:output")
        self.w_q = WeightQuantizer()
        self.relu_fused = False       # output observed after the ReLU that follows (sole user)
        self.quantize_output = True   # False for layers whose output is the network output
        self.storage = "int8"         # sub-8-bit static Linear weights: "int8" or "packed" (MatMulNBits)
        self.reason = "not quantized yet"

    # -- helpers used by ptq / qat / export ---------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.module.bias

    def observing(self, on: bool) -> None:
        self.in_q.observing = on
        self.out_q.observing = on

    def bias_scale(self) -> torch.Tensor:
        """int32 bias scale per output channel: input scale x weight scale, in float32."""
        s_in = self.in_q.params()[0]
        s_w = self.w_q.scale
        return (s_in * s_w).reshape(-1) if s_w.ndim else (s_in * s_w).reshape(1)

    def quantized_weight(self) -> torch.Tensor:
        w = self.module.weight
        if self.mode == "fp16":
            return w.half().float()
        if self.mode in ("static", "dynamic", "weight_only"):
            return self.w_q(w)
        return w

    def quantized_bias(self) -> torch.Tensor | None:
        b = self.module.bias
        if b is None:
            return None
        if self.mode == "fp16":
            return b.half().float()
        if self.mode == "static" and self.in_q.enabled:
            s = self.bias_scale().detach()
            s = s.expand(b.shape[0]) if s.numel() == 1 else s
            q = torch.clamp(round_ste(b / s), -2 ** 31, 2 ** 31 - 1)
            return q * s
        return b

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        m = self.module
        if isinstance(m, nn.Linear):
            return F.linear(x, w, b)
        return m._conv_forward(x, w, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "fp32":
            # still observe: sensitivity / mixed precision flip layers back and forth
            if self.in_q.observing:
                self.in_q.observer.update(x)
            y = self.module(x)
            if self.out_q.observing:
                self.out_q.observer.update(torch.relu(y) if self.relu_fused else y)
            return y
        if self.mode == "static":
            x = self.in_q(x)
        elif self.mode == "dynamic":
            x = _dynamic_uint8(x)
        y = self._op(x, self.quantized_weight(), self.quantized_bias())
        if self.mode == "static":
            if self.out_q.observing:
                self.out_q.observer.update(torch.relu(y) if self.relu_fused else y)
            if self.out_q.enabled:
                y = fake_quant_out(self.out_q, y)
        return y

    def extra_repr(self) -> str:
        bits = f"w{self.w_q.bits}" + (f"a{self.in_q.bits}" if self.mode == "static" else "")
        return f"mode={self.mode}, {bits if self.mode != 'fp32' else ''}"


def fake_quant_out(q: ActQuantizer, y: torch.Tensor) -> torch.Tensor:
    """Output quantizer without re-observing (the wrapper observes before quantizing)."""
    obs, q.observing = q.observing, False
    try:
        return q(y)
    finally:
        q.observing = obs
