"""Post-training quantization: configs, the ``quantize_`` verb and its per-config transforms.

    model = quantize_(model, PTQConfig(calibration="percentile"), calib_x)   # fake-quant wrappers
    print(quant_report(model))                                               # what runs how, and why
    export_quantized(model, example, "model.int8.onnx")          # autocompress.targets.onnxruntime

The returned model simulates in PyTorch what ONNX Runtime computes from the exported QDQ graph.
A config type maps to its transform through :data:`_TRANSFORMS` (no if/elif over names).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal

import torch
from torch import nn

from autocompress.config import Config, ConfigError
from autocompress.outputs import call_model
from autocompress.quantize.calibdata import Batch, calibration_batches, describe, has_integer_inputs
from autocompress.quantize.calibdata import check_shape as _check_shape
from autocompress.quantize.fake_quant import SUPPORTED, QuantWrapper, WeightQuantizer
from autocompress.quantize.graph import fold_batchnorm, plan
from autocompress.quantize.observers import Calibration, CalibrationError
from autocompress.quantize.report import LayerReport, QuantReport, quant_report, storage_of  # noqa: F401

log = logging.getLogger(__name__)

# parameterised layers we do not quantize (they stay float32 and are named in the report)
_FLOAT_ONLY = (nn.RNNBase, nn.MultiheadAttention, nn.Embedding, nn.EmbeddingBag, nn.LayerNorm,
               nn.modules.batchnorm._BatchNorm, nn.modules.conv._ConvTransposeNd, nn.Conv3d,
               nn.GroupNorm, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
_WHY = {nn.TransformerEncoderLayer: "its fused fast path reads the weights directly, bypassing wrappers",
        nn.TransformerDecoderLayer: "its fused fast path reads the weights directly, bypassing wrappers",
        nn.MultiheadAttention: "attention reads in_proj/out_proj weights directly, bypassing wrappers",
        nn.RNNBase: "recurrent layers are not quantized (no exact ONNX Runtime equivalent here)"}


# -- configs -------------------------------------------------------------------------------------

def _check_bits(cls: str, name: str, v: int, lo: int, hi: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"{cls}.{name} must be an integer in [{lo}, {hi}], got {v!r}")


@dataclass
class PTQConfig(Config):
    """Static post-training quantization: weights per channel symmetric, activations per tensor."""

    weight_bits: int = 8
    act_bits: int = 8
    calibration: Calibration = "minmax"        # activation range estimator
    percentile: float = 99.99                  # for calibration="percentile"
    weight_calibration: Literal["minmax", "mse"] = "minmax"
    per_channel: bool = True
    num_calibration: int = 512                 # samples used from the calibration data
    batch_size: int = 128
    skip_layers: list[str] = field(default_factory=list)  # module names kept at float32
    quantize_logits: bool = False              # quantize the last layer's output too
    # sub-8-bit Linear weights: "int8" holding fewer levels (fast QGemm) or "packed" 2/4-bit
    # codes in MatMulNBits (smaller file, float matmul); convolutions always use int8
    weight_storage: Literal["int8", "packed"] = "int8"
    on_unsupported: Literal["fallback", "error"] = "fallback"
    # 8-bit weights within |q| <= 63, so ONNX Runtime's int8 kernels on x86 CPUs without VNNI do
    # not saturate (fake_quant.WeightQuantizer); False for full range on runtimes known to be safe
    reduce_range: bool = True

    def validate(self) -> None:
        _check_bits("PTQConfig", "weight_bits", self.weight_bits, 2, 8)
        _check_bits("PTQConfig", "act_bits", self.act_bits, 2, 8)
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"PTQConfig.percentile must be in (50, 100], got {self.percentile}")
        if self.num_calibration < 1:
            raise ConfigError(f"PTQConfig.num_calibration must be >= 1, got {self.num_calibration}")
        if self.batch_size < 1:
            raise ConfigError(f"PTQConfig.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Int4WeightOnlyConfig(Config):
    """int4 weights in groups of ``group_size`` along K for Linear layers (ONNX ``MatMulNBits``);
    activations stay float. Convolutions are not touched (the runtime op is MatMul-only)."""

    group_size: int = 32
    symmetric: bool = False     # asymmetric groups carry a 4-bit zero point each
    skip_layers: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.group_size < 16 or self.group_size & (self.group_size - 1):
            raise ConfigError(f"Int4WeightOnlyConfig.group_size must be a power of two >= 16 "
                              f"(MatMulNBits block size), got {self.group_size}")


@dataclass
class DynamicInt8Config(Config):
    """Linear layers with int8 weights per channel and activations quantized at run time
    (``DynamicQuantizeMatMul``). Convolutions stay float: dynamic conv is several times slower."""

    per_channel: bool = True
    skip_layers: list[str] = field(default_factory=list)
    reduce_range: bool = True        # see PTQConfig.reduce_range: the same u8s8 kernels


@dataclass
class Fp16Config(Config):
    """Weights and biases stored in float16 (half the file), computed in float32."""

    skip_layers: list[str] = field(default_factory=list)


# -- calibration data ----------------------------------------------------------------------------

@torch.no_grad()
def run_calibration(model: nn.Module, batches: list[Batch]) -> None:
    """Observe every wrapper's input/output on the float model (all wrappers in fp32 mode)."""
    wrappers = wrappers_of(model)
    modes = {n: w.mode for n, w in wrappers.items()}
    for w in wrappers.values():
        w.mode = "fp32"
        w.observing(True)
    model.eval()
    try:
        for x in batches:
            try:
                call_model(model, x)
            except CalibrationError:
                raise
            except (RuntimeError, ValueError, TypeError) as e:
                hint = (" (integer inputs reach the model as they are, for token ids; images must be "
                        "floating point, e.g. x.float() / 255)") if has_integer_inputs(x) else ""
                raise CalibrationError(f"the model rejects calibration inputs {describe(x)}: "
                                       f"{str(e).splitlines()[0]}{hint}") from None
    finally:
        for n, w in wrappers.items():
            w.observing(False)
            w.mode = modes[n]


# -- wrapping ------------------------------------------------------------------------------------

def wrappers_of(model: nn.Module) -> dict[str, QuantWrapper]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantWrapper)}


def _check_finite(name: str, m: nn.Module) -> None:
    for pname, p in m.named_parameters(recurse=False):
        if not torch.isfinite(p).all():
            raise ValueError(f"{name}.{pname} contains NaN or Inf: fix the float model before quantizing")


def prepare(model: nn.Module, skip: Iterable[str] = (), linear_only: bool = False,
            on_unsupported: str = "fallback") -> nn.Module:
    """Fold BN, wrap every supported layer (in place), record float-only layers with reasons."""
    for name, w in list(wrappers_of(model).items()):   # re-quantizing: start from the float layers
        _swap(model, name, w.module)
    model.eval()
    folded = fold_batchnorm(model)
    skip = set(skip)
    mods = dict(model.named_modules())
    unknown = skip - set(mods)
    if unknown:
        raise ConfigError(f"skip_layers names unknown modules {sorted(unknown)}")
    float_layers: dict[str, str] = {}
    targets: list[str] = []
    inside_float: list[str] = []
    for name, m in mods.items():
        if not name or any(name.startswith(p + ".") for p in inside_float):
            continue
        _check_finite(name, m)
        if isinstance(m, _FLOAT_ONLY):
            inside_float.append(name)
            if any(True for _ in m.parameters(recurse=True)):
                detail = next((v for t, v in _WHY.items() if isinstance(m, t)), "unsupported layer type")
                why = f"{type(m).__name__} kept float32: {detail}"
                if on_unsupported == "error":
                    raise TypeError(f"{name}: {why}")
                float_layers[name] = why
        elif isinstance(m, SUPPORTED):
            if linear_only and not isinstance(m, nn.Linear):
                float_layers[name] = f"{type(m).__name__}: this config quantizes Linear layers only"
            elif name in skip:
                float_layers[name] = "listed in skip_layers"
            else:
                targets.append(name)
    if linear_only and not targets:       # say so now, not "call quantize_ first" at export
        kinds = sorted({type(m).__name__ for m in mods.values() if isinstance(m, SUPPORTED)})
        raise ValueError(f"{type(model).__name__} has no Linear layer to quantize (it has {kinds or 'none'}"
                         f"{', all Linear layers skipped' if any(isinstance(m, nn.Linear) for m in mods.values()) else ''}"
                         "): dynamic int8 and int4 weight-only cover Linear layers only; use PTQConfig "
                         "(static int8) for convolutions")
    for name in targets:
        _swap(model, name, QuantWrapper(mods[name], name))
    facts = plan(_float_view_for_trace(model), set(targets))
    for name, w in wrappers_of(model).items():
        w.relu_fused = name in facts.relu_after
        w.quantize_output = name not in facts.to_output
        src = facts.ties.get(name)
        w.in_q.source = wrappers_of(model)[src].out_q if src else None
    model._autocompress_quant = {"float_layers": float_layers, "folded_bn": folded,
                                 "traced": facts.traced}
    return model


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def _float_view_for_trace(model: nn.Module) -> nn.Module:
    """fx treats QuantWrapper as a leaf only if it is a known leaf type; trace a shallow view
    where each wrapper is replaced by its inner layer (same names)."""
    import copy
    view = copy.copy(model)
    view._modules = dict(model._modules)
    for name, w in list(wrappers_of(model).items()):
        _swap_view(view, name, w.module)
    return view


def _swap_view(view: nn.Module, name: str, new: nn.Module) -> None:
    # copy each parent on the path so the original model is untouched
    import copy
    parts = name.split(".")
    cur = view
    for p in parts[:-1]:
        child = copy.copy(cur._modules[p])
        child._modules = dict(child._modules)
        cur._modules[p] = child
        cur = child
    cur._modules[parts[-1]] = new


def float_view(model: nn.Module) -> nn.Module:
    """A structural copy of the model with each wrapper replaced by its (float) inner layer;
    parameters are shared, not copied. Used for export and fp32 baselines."""
    return _float_view_for_trace(model)


# -- transforms ----------------------------------------------------------------------------------

Transform = Callable[[nn.Module, Any, Any], nn.Module]
_TRANSFORMS: dict[type, Transform] = {}


def register(cfg_type: type) -> Callable[[Transform], Transform]:
    def deco(fn: Transform) -> Transform:
        _TRANSFORMS[cfg_type] = fn
        return fn
    return deco


def quantize_(model: nn.Module, config: Config, calibration_data: Any = None) -> nn.Module:
    """Quantize ``model`` in place according to ``config``; returns the model with fake-quant
    wrappers that simulate the ONNX Runtime deployment. Static configs need ``calibration_data``."""
    fn = _TRANSFORMS.get(type(config))
    if fn is None:
        raise TypeError(f"quantize_: unsupported config {type(config).__name__}; "
                        f"known: {[t.__name__ for t in _TRANSFORMS]}")
    return fn(model, config, calibration_data)


def configure_static(w: QuantWrapper, weight_bits: int, act_bits: int, cfg: PTQConfig) -> None:
    """Set one wrapper to static w{weight_bits}a{act_bits} from its calibrated observers."""
    w.mode = "static"
    w.storage = cfg.weight_storage
    w.w_q = WeightQuantizer(weight_bits, cfg.per_channel, None, True, cfg.weight_calibration, cfg.reduce_range)
    w.w_q.calibrate(w.weight)
    for q in (w.in_q, w.out_q):
        if q.bits != act_bits:
            q.bits = act_bits
            q.qmin, q.qmax = -(2 ** (act_bits - 1)), 2 ** (act_bits - 1) - 1
        q.calibrate(cfg.calibration, cfg.percentile)
        q.enabled = True
    w.out_q.enabled = w.quantize_output or cfg.quantize_logits


def apply_static(model: nn.Module, cfg: PTQConfig, precisions: dict[str, tuple[int, int] | None]) -> None:
    """Apply per-layer precisions (``None`` = fp32); tied inputs fall back to their own grid when
    the upstream layer is float."""
    for name, w in wrappers_of(model).items():
        p = precisions.get(name, (cfg.weight_bits, cfg.act_bits))
        if w.in_q.observer.count == 0:     # never ran: nothing to calibrate from
            p = None
            w.reason = "never ran during calibration (unused or bypassed): kept float32"
        if p is None:
            w.mode = "fp32"
            w.in_q.enabled = w.out_q.enabled = False
        else:
            configure_static(w, p[0], p[1], cfg)


@register(PTQConfig)
def _ptq(model: nn.Module, cfg: PTQConfig, data: Any) -> nn.Module:
    batches = calibration_batches(data, cfg.num_calibration, cfg.batch_size)
    _check_shape(model, batches[0])
    prepare(model, cfg.skip_layers, on_unsupported=cfg.on_unsupported)
    run_calibration(model, batches)
    for w in wrappers_of(model).values():
        w.reason = f"static w{cfg.weight_bits}a{cfg.act_bits}, {cfg.calibration} calibration"
    apply_static(model, cfg, {})
    if has_integer_inputs(batches[0]):     # token ids: only the layers after the embedding see activations
        kept = model._autocompress_quant["float_layers"]
        log.info("%s takes integer inputs (%s): they reach the model unobserved; %d Linear/Conv layers "
                 "quantized static int8 on calibrated activations, %d kept float32 (embeddings, "
                 "LayerNorm; attention softmax and GELU stay float too)", type(model).__name__,
                 describe(batches[0]), sum(w.mode == "static" for w in wrappers_of(model).values()), len(kept))
    return model


def _linear_wrappers(model: nn.Module) -> list[QuantWrapper]:
    """Linear wrappers; others (left by an earlier static config) go back to float."""
    out = []
    for w in wrappers_of(model).values():
        if isinstance(w.module, nn.Linear):
            out.append(w)
        else:
            w.mode = "fp32"
            w.reason = "this config quantizes Linear layers only: kept float32"
    return out


@register(Int4WeightOnlyConfig)
def _int4(model: nn.Module, cfg: Int4WeightOnlyConfig, data: Any = None) -> nn.Module:
    prepare(model, cfg.skip_layers, linear_only=True)
    for w in _linear_wrappers(model):
        w.mode = "weight_only"
        w.w_q = WeightQuantizer(4, True, cfg.group_size, cfg.symmetric)
        w.w_q.calibrate(w.weight)
        w.reason = f"int4 weight-only, groups of {cfg.group_size}"
    return model


@register(DynamicInt8Config)
def _dynamic(model: nn.Module, cfg: DynamicInt8Config, data: Any = None) -> nn.Module:
    prepare(model, cfg.skip_layers, linear_only=True)
    for w in _linear_wrappers(model):
        w.mode = "dynamic"
        w.w_q = WeightQuantizer(8, cfg.per_channel, reduce_range=cfg.reduce_range)
        w.w_q.calibrate(w.weight)
        w.reason = "dynamic int8 (activation range measured at run time)"
    return model


@register(Fp16Config)
def _fp16(model: nn.Module, cfg: Fp16Config, data: Any = None) -> nn.Module:
    prepare(model, cfg.skip_layers)
    for w in wrappers_of(model).values():
        w.mode = "fp16"
        w.reason = "float16 storage"
    return model
