"""Run a deployed ``model.onnx`` with nothing but ``onnxruntime`` and ``numpy``: the check that a
user's plain install (autocompress not installed, not importable) runs what we ship.

    python -I benchmarks/ort_plain.py model.onnx inputs.npy labels.npy

``-I`` (isolated mode) ignores ``PYTHONPATH`` and the working directory; on top of that the script
refuses any import of ``autocompress`` or ``torch`` (they may be installed in the same environment),
so nothing of ours can help decode the file. Prints one JSON line: accuracy, samples, the ONNX
Runtime version and the blocked imports that were attempted (must be none).
"""

import importlib.abc
import json
import sys

BLOCKED = ("autocompress", "torch")
attempted = []


class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempted.append(name)
            raise ImportError(f"{name} is blocked: the deployed file must run on plain onnxruntime")
        return None


sys.meta_path.insert(0, _Refuse())

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402


def main(model: str, inputs: str, labels: str) -> dict:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])   # default options
    name = sess.get_inputs()[0].name
    x, y = np.load(inputs).astype(np.float32), np.load(labels)
    pred = np.concatenate([sess.run(None, {name: x[i:i + 1000]})[0].argmax(-1) for i in range(0, len(x), 1000)])
    return {"accuracy": float((pred == y).mean()), "samples": int(len(y)), "onnxruntime": ort.__version__,
            "blocked_imports": attempted,
            "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
