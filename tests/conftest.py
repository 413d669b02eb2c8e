"""Shared test setup: one thread (2 cores shared by many agents), fixed seeds, tests/ importable
(pyproject sets pythonpath so ``from zoo import build`` works)."""

import os
import random
import sys

import numpy as np
import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
