"""The search picks its CPU thread count from timed steps (a busy 2-core machine ran a SmallResNet
step 6x faster at one thread than at two) and gives the caller's count back afterwards."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autocompress.search import seeds
from autocompress.search.threads import ThreadChoice, candidates, restores_threads


@pytest.fixture
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def _scripted(monkeypatch, per_thread: dict[int, float], seen: list):
    def fake(model, train_set, steps=3, **kw):
        n = torch.get_num_threads()
        seen.append(n)
        return per_thread[n]
    monkeypatch.setattr(seeds, "epoch_seconds", fake)


def test_candidates():
    assert candidates(16) == [16, 8, 1] and candidates(2) == [2, 1] and candidates(1) == [1]


def test_busy_machine_goes_to_one_thread_and_back_when_it_is_quiet(monkeypatch, two_threads):
    ds = TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))
    seen = []
    choice = ThreadChoice()
    _scripted(monkeypatch, {2: 380.0, 1: 62.0}, seen)            # a burner on one of two cores
    assert choice.pick(nn.Linear(4, 2), ds) == 62.0
    assert seen == [2, 1] and torch.get_num_threads() == 1 and choice.current == 1
    _scripted(monkeypatch, {2: 35.0, 1: 60.0}, seen)             # quiet again
    assert choice.pick(nn.Linear(4, 2), ds) == 35.0 and torch.get_num_threads() == 2
    _scripted(monkeypatch, {2: 38.0, 1: 35.0}, seen)             # within the noise: no flapping
    assert choice.pick(nn.Linear(4, 2), ds) == 38.0 and torch.get_num_threads() == 2


def test_nothing_is_timed_on_one_thread_a_gpu_or_a_step_that_fails(monkeypatch, two_threads):
    seen = []
    _scripted(monkeypatch, {2: 1.0, 1: 2.0}, seen)
    assert ThreadChoice(most=1).pick(nn.Linear(4, 2), None) is None
    assert ThreadChoice().pick(nn.Linear(4, 2), None, device="cuda") is None
    assert seen == []

    def broken(*a, **k):
        raise RuntimeError("the model takes token ids")
    monkeypatch.setattr(seeds, "epoch_seconds", broken)
    assert ThreadChoice().pick(nn.Linear(4, 2), None) is None and torch.get_num_threads() == 2


def test_the_callers_count_comes_back_on_return_and_on_error(two_threads):
    @restores_threads
    def search(fail: bool):
        torch.set_num_threads(1)
        if fail:
            raise KeyboardInterrupt
        return torch.get_num_threads()
    assert search(False) == 1 and torch.get_num_threads() == 2
    with pytest.raises(KeyboardInterrupt):
        search(True)
    assert torch.get_num_threads() == 2


def test_real_steps_are_timed_at_each_count(two_threads):
    ds = TensorDataset(torch.randn(256, 16), torch.randint(0, 4, (256,)))
    choice = ThreadChoice()
    s = choice.pick(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), ds)
    assert s is not None and s > 0 and set(choice.times) == {1, 2}
    assert torch.get_num_threads() == choice.current
