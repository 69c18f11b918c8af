"""The L0 anneal and sharkfin schedules against the formulas of docs/method.md ("The L0 anneal", "The sharkfin
learning rate")."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparseformer.config import SparsityConfig, TrainConfig
from sparseformer.sparsity.schedule import (anneal_progress, embed_density, k_for, learning_rate, lr_base,
                                            weight_density)


def test_anneal_endpoints_and_linear_middle():
    cfg = SparsityConfig(weight_density=1 / 64, anneal_start=0.01, anneal_end=0.5)
    T = 1000
    assert weight_density(0, T, cfg) == 1.0
    assert weight_density(10, T, cfg) == 1.0           # anneal starts at 1% of training
    assert weight_density(500, T, cfg) == pytest.approx(1 / 64)
    assert weight_density(999, T, cfg) == pytest.approx(1 / 64)
    mid = (10 + 500) / 2
    assert weight_density(int(mid), T, cfg) == pytest.approx(1 + (1 / 64 - 1) * (int(mid) - 10) / 490)


@given(step=st.integers(0, 2000), total=st.integers(1, 2000), p=st.floats(0.5, 3))
def test_progress_formula(step, total, p):
    cfg = SparsityConfig(anneal_start=0.01, anneal_end=0.5, anneal_power=p)
    a, b = 0.01 * total, 0.5 * total
    s = min(1.0, max(0.0, (step - a) / (b - a)))
    assert anneal_progress(step, total, cfg) == pytest.approx(1 - (1 - s) ** p)


@given(step=st.integers(0, 1000), e=st.sampled_from([1, 2, 4, 8]), pfrac=st.sampled_from([0.125, 0.25, 0.5]))
def test_embed_schedules_match_pfrac_formulas(step, e, pfrac):
    """Paper: L0frac_E = min(1, pfrac_t / e). Fixed: pfrac_E = lerp(final, e, (pfrac_t - final)/(e^2 - final))."""
    T = 1000
    d_w, d_e = min(1, pfrac / e ** 2), min(1, pfrac / e)
    for schedule in ("paper", "fixed"):
        cfg = SparsityConfig(weight_density=d_w, embed_density=d_e, embed_schedule=schedule)
        s = anneal_progress(step, T, cfg)
        pfrac_t = e ** 2 + (pfrac - e ** 2) * s            # lerp(pfrac_init = e^2, final, s)
        if schedule == "paper":
            expected = min(1.0, pfrac_t / e)
        elif e ** 2 == pfrac:
            expected = 1.0
        else:
            pfrac_e = pfrac + (e - pfrac) * (pfrac_t - pfrac) / (e ** 2 - pfrac)
            expected = min(1.0, pfrac_e / e)
        assert weight_density(step, T, cfg) == pytest.approx(pfrac_t / e ** 2)
        assert embed_density(step, T, cfg) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_paper_schedule_keeps_embeddings_dense_until_late():
    cfg = SparsityConfig(weight_density=0.5 / 64, embed_density=0.5 / 8, embed_schedule="paper")
    T = 1000
    assert embed_density(300, T, cfg) == 1.0                # e = 8: dense until ~44% of training
    assert embed_density(500, T, cfg) == pytest.approx(0.5 / 8)
    fixed = SparsityConfig(weight_density=0.5 / 64, embed_density=0.5 / 8, embed_schedule="fixed")
    assert embed_density(300, T, fixed) < 1.0


def test_sharkfin_learning_rate():
    tc = TrainConfig(steps=1000, lr=1e-2, warmup_frac=0.01)
    sc = SparsityConfig(weight_density=1 / 16)
    assert learning_rate(0, tc, sc) == pytest.approx(1e-2 * (1 / 10) * math.sqrt(1 / 16))
    for t in (100, 300, 500, 800):
        base = 1 - (t - 10) / 990
        assert learning_rate(t, tc, sc) == pytest.approx(1e-2 * base * math.sqrt((1 / 16) / weight_density(t, 1000, sc)))
    peak_step = max(range(1000), key=lambda t: learning_rate(t, tc, sc))
    assert 480 <= peak_step <= 500                           # the fin peaks where the anneal ends
    assert learning_rate(peak_step, tc, sc) == pytest.approx(1e-2 * (1 - (500 - 10) / 990), rel=0.02)
    dense = SparsityConfig(dense=True)
    assert learning_rate(300, tc, dense) == pytest.approx(1e-2 * lr_base(300, 1000, 0.01))


def test_k_for_is_floor_and_clipped():
    assert k_for(100, 0.125) == 12
    assert k_for(64, 1 / 8) == 8
    assert k_for(10, 1.0) == 10
    assert k_for(10, 0.0) == 0
