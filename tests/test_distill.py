"""Distillation: KD loss sanity, alpha/T behaviour, feature adapters that train, distill() helps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo import batch_of, build

from autocompress.config import ConfigError
from autocompress.distill import DistillConfig, distill, distillation_loss, kd_loss
from autocompress.train import TrainConfig, fit


def test_kd_loss_zero_when_equal_and_matches_definition():
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    assert kd_loss(t, t, 4.0).abs() < 1e-6
    T = 3.0
    p_t = F.softmax(t / T, -1)
    manual = (p_t * (p_t.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert torch.allclose(kd_loss(s, t, T), manual, atol=1e-5)
    assert kd_loss(s, t, T) > 0


def test_alpha_zero_is_cross_entropy_and_teacher_gets_no_gradient():
    student, x = build("mlp", batch=16)
    teacher, _ = build("mlp", seed=1)
    y = torch.randint(0, 10, (16,))
    ce = F.cross_entropy(student(x), y)
    loss = distillation_loss(teacher, DistillConfig(alpha=0.0))(student, x, y)
    assert torch.allclose(loss, ce)
    loss = distillation_loss(teacher, DistillConfig(alpha=1.0, temperature=2.0))(student, x, y)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.head.weight.grad is not None


def test_feature_distillation_with_adapters_trains_them():
    student, x = build("plain_cnn", batch=8)
    teacher, _ = build("concat_cnn", seed=1)
    cfg = DistillConfig(features=[("features.3", "dense"), ("fc1", "head")], feature_weight=1.0)
    kd = distillation_loss(teacher, cfg)
    xs, ys = batch_of("plain_cnn", 32), torch.randint(0, 10, (32,))
    fit(student, [(xs, ys)] * 3, TrainConfig(epochs=1, progress=False), loss_fn=kd, hooks=[kd.step])
    # conv features (16,8,8) match the teacher's (16,8,8): identity; fc1 (32) -> head (10): linear
    kinds = {k: type(a).__name__ for k, a in kd.adapters.items()}
    assert kinds == {"0": "Identity", "1": "Linear"}
    w0 = kd.adapters["1"].weight.detach().clone()
    fit(student, [(xs, ys)] * 3, TrainConfig(epochs=1, progress=False), loss_fn=kd, hooks=[kd.step])
    assert not torch.equal(w0, kd.adapters["1"].weight)
    kd.close()


def test_conv_adapter_when_channels_differ():
    from autocompress.distill import make_adapter
    a = make_adapter(torch.zeros(2, 8, 6, 6), torch.zeros(2, 16, 3, 3), "x")
    assert a(torch.zeros(2, 8, 6, 6)).shape == (2, 16, 3, 3)
    with pytest.raises(ValueError, match="cannot adapt"):
        make_adapter(torch.zeros(2, 3, 4, 5), torch.zeros(2, 7, 9), "s -> t")


def test_bad_layer_names_and_config():
    student, x = build("mlp")
    teacher, _ = build("mlp", seed=1)
    with pytest.raises(ValueError, match="teacher has no module 'nope'"):
        distillation_loss(teacher, DistillConfig(features=[("head", "nope")]))
    kd = distillation_loss(teacher, DistillConfig(features=[("nope", "head")]))
    with pytest.raises(ValueError, match="student has no module 'nope'"):
        kd(student, x, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ConfigError, match="alpha"):
        DistillConfig(alpha=1.5)
    cfg = DistillConfig(temperature=2.0, features=[("a", "b")])
    assert DistillConfig.from_json(cfg.to_json()) == cfg


def test_distill_makes_student_follow_teacher():
    teacher, _ = build("mlp", seed=3)
    xs = batch_of("mlp", 256, seed=5)
    with torch.no_grad():
        ys = teacher(xs).argmax(-1)
    data = [(xs[i:i + 32], ys[i:i + 32]) for i in range(0, 256, 32)]
    student = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    agree = lambda: float((student(xs).argmax(-1) == ys).float().mean())
    before = agree()
    distill(student, teacher, data, DistillConfig(temperature=2.0, alpha=1.0),
            TrainConfig(epochs=15, lr=1e-2, progress=False))
    assert agree() > max(0.6, before + 0.3)
    assert not math.isnan(agree())


def test_cached_teacher_returns_the_teachers_outputs():
    from autocompress.distill import CachedTeacher
    teacher, _ = build("mlp", seed=2)
    seen, unseen = batch_of("mlp", 50, seed=1), batch_of("mlp", 7, seed=9)
    cached = CachedTeacher(teacher, seen, batch=16)
    with torch.no_grad():
        for x in (seen[10:30], unseen, torch.cat([seen[:3], unseen[:2]])):
            assert torch.allclose(cached(x), teacher(x), atol=1e-6)


def test_the_trials_fine_tune_distils_with_the_recipes_own_settings():
    """search/steps.loss_for reads the distill technique's temperature and alpha from the recipe
    (no constants), so a replayed recipe distils exactly as its trial did."""
    from types import SimpleNamespace

    from autocompress.search import Recipe
    from autocompress.search.steps import loss_for
    student, x = build("mlp", batch=16)
    teacher, _ = build("mlp", seed=1)
    y = torch.randint(0, 10, (16,))
    ctx = SimpleNamespace(teacher_cache=teacher)    # the cached teacher a search would build once

    def manual(T: float, a: float) -> torch.Tensor:
        s, t = student(x), teacher(x).detach()
        return a * kd_loss(s, t, T) + (1 - a) * F.cross_entropy(s, y)

    with torch.no_grad():
        custom = loss_for(Recipe(temperature=4.0, alpha=0.3), ctx)(student, x, y)
        default = loss_for(Recipe(), ctx)(student, x, y)
        assert torch.allclose(custom, manual(4.0, 0.3), atol=1e-6)
        assert torch.allclose(default, manual(2.0, 0.5), atol=1e-6)   # today's values by default
        assert not torch.allclose(custom, default)
    assert loss_for(Recipe(distill=False, temperature=4.0), ctx) is None
