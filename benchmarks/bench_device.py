"""Issue 16's GPU check: the search's fine-tune, timed per epoch on the CPU and on CUDA, one process.

    python benchmarks/bench_device.py                  # LeNet-5, SmallResNet, MobileNetV3-small
    python benchmarks/bench_device.py --quick          # a few steps each (a test calls it; CPU rows only without CUDA)

Each row is ``autocompress.train.fit`` as a trial runs it (Adam, batch 64, cross-entropy, the MNIST
train split of 48,000 images), from the same starting weights, after a short warm-up run on the
same device (cuDNN's algorithm choice, the allocator). Rows:

- ``cpu``: every core of this machine (torch's default thread count, printed);
- ``cuda, DataLoader``: the batches a ``torch.utils.data.DataLoader`` collates sample by sample,
  as ``fit`` made them before it sliced TensorDatasets;
- ``cuda``: ``fit``'s own batches (sliced out of the TensorDataset), fp32;
- ``cuda, bf16``: the same under bf16 autocast (``TrainConfig.precision``, what "auto" picks on a GPU).

Seconds per epoch come from the epochs timed (``--cpu-epochs`` of an epoch on the CPU, where a
MobileNetV3 epoch takes minutes, ``--gpu-epochs`` on CUDA), scaled to one epoch; the model comes
back to the CPU inside the timing, as a trial's does. Validation accuracy (2,000 images, BatchNorm
statistics re-estimated) is the model after the timed run: fp32 and bf16 rows started alike.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from autocompress.baselines import load_baseline  # noqa: E402
from autocompress.data import load_mnist  # noqa: E402
from autocompress.report.tables import md_table  # noqa: E402
from autocompress.train import TrainConfig, evaluate, fit, reestimate_bn  # noqa: E402

MODELS = ("lenet5", "resnet", "mobilenet_v3_small")
BATCH = 64          # the search's fine-tune batch (search/steps.FINETUNE_BATCH)


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "lenet5":
        return load_baseline("lenet5")
    if name == "resnet":
        from bench_search import SmallResNet
        return SmallResNet()
    from bench_fastest import _mobilenet
    return _mobilenet()


def time_fit(model: nn.Module, data, device: str, epochs: float, precision: str, loader: bool) -> float:
    """Seconds for ``epochs`` of fit on ``device`` (warm-up excluded), model back home included."""
    cfg = TrainConfig(epochs=epochs, lr=1e-3, batch_size=BATCH, precision=precision, progress=False)
    train = DataLoader(data.train, batch_size=BATCH, shuffle=True,
                       generator=torch.Generator().manual_seed(0)) if loader else data.train
    warm = copy.deepcopy(model)
    fit(warm, train, TrainConfig(epochs=min(epochs, 0.02), lr=1e-3, batch_size=BATCH, precision=precision,
                                 progress=False), device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fit(model, train, cfg, device=device)       # comes back to the CPU: the GPU's work is done
    return time.perf_counter() - t0


def run(name: str, a, cuda: bool) -> list[dict]:
    data = load_mnist(flat=False)
    start = build(name)
    val = data.loader("val", 500, limit=200 if a.quick else 2000)
    calib = data.calibration_batch(256 if a.quick else 2048, seed=0)
    configs = [("cpu", "cpu", "fp32", False, a.cpu_epochs)]
    if cuda:
        configs += [("cuda, DataLoader", "cuda", "fp32", True, a.gpu_epochs),
                    ("cuda", "cuda", "fp32", False, a.gpu_epochs),
                    ("cuda, bf16", "cuda", "bf16", False, a.gpu_epochs)]
    rows = []
    for label, device, precision, loader, epochs in configs:
        model = copy.deepcopy(start)
        secs = time_fit(model, data, device, epochs, precision, loader)
        reestimate_bn(model, calib)
        rows.append({"model": name, "run": label, "epochs_timed": epochs, "s_per_epoch": secs / epochs,
                     "val_acc": evaluate(model, val)})
        print(f"{name} {label}: {secs / epochs:.2f} s/epoch ({epochs:g} epochs timed)", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--cpu-epochs", type=float, default=0.25)
    ap.add_argument("--gpu-epochs", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    a = ap.parse_args(argv)
    if a.quick:
        a.cpu_epochs = a.gpu_epochs = 0.01
    cuda = torch.cuda.is_available()
    rows = [r for name in a.models for r in run(name, a, cuda)]
    cpu = {r["model"]: r["s_per_epoch"] for r in rows if r["run"] == "cpu"}
    where = (f"CPU: {torch.get_num_threads()} threads; "
             + (f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}" if cuda else "no CUDA device here"))
    sys.stdout.write(f"\nfine-tune per epoch (batch {BATCH}, Adam, 48,000 MNIST images){' (quick)' if a.quick else ''}; {where}\n\n")
    sys.stdout.write(md_table(["model", "run", "epochs timed", "s / epoch", "vs cpu", "val acc after"],
                              [[r["model"], r["run"], f"{r['epochs_timed']:g}", f"{r['s_per_epoch']:.2f}",
                                f"{cpu[r['model']] / r['s_per_epoch']:.1f}x", f"{100 * r['val_acc']:.2f} %"]
                               for r in rows]) + "\n")
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"where": where, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
