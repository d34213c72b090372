"""Run length and learning-rate schedule against hand-computed values."""

import math

import pytest

from learner.schedule import lr_factor, planned_steps, schedule_horizon, warmup_steps


def test_epochs_cap_the_planned_steps():
    # 130 rows in batches of 64: 3 steps per epoch (the last partial); 3 epochs = 9 steps
    assert planned_steps(1000, 3, 130, 64) == 9
    assert planned_steps(5, 3, 130, 64) == 5  # max_steps comes first
    assert planned_steps(1000, None, 130, 64) == 1000


def test_warmup_ratio_is_a_share_of_the_planned_steps():
    assert warmup_steps(7, None, 100) == 7
    assert warmup_steps(7, 0.1, 2156) == 216  # LUFFY's SFT: 0.1 of 3 epochs


def test_linear_warmup_then_constant_or_cosine():
    # warm-up 4: (s + 1) / 4 for s = 0..3
    assert [lr_factor(s, 4, 20, "constant", 0.1) for s in range(5)] == [0.25, 0.5, 0.75, 1, 1]
    # cosine from step 4 to 20 down to 0.1: halfway (step 12) 0.1 + 0.9 * 0.5 = 0.55
    assert lr_factor(4, 4, 20, "cosine", 0.1) == 1.0
    assert lr_factor(12, 4, 20, "cosine", 0.1) == pytest.approx(0.55)
    assert lr_factor(20, 4, 20, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(8, 4, 20, "cosine", 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_schedule_steps_make_a_short_run_follow_a_longer_runs_schedule():
    assert schedule_horizon(360, None) == 360
    assert schedule_horizon(360, 1000) == 1000
    # cosine to 0.1 x lr: at step 360 of a 360-step run the floor, of a 1,000-step one not yet
    # (0.1 + 0.9 * (1 + cos(0.36 pi)) / 2 = 0.742)
    assert lr_factor(360, 0, schedule_horizon(360, None), "cosine", 0.1) == pytest.approx(0.1)
    end = lr_factor(360, 0, schedule_horizon(360, 1000), "cosine", 0.1)
    assert end == pytest.approx(0.1 + 0.45 * (1 + math.cos(0.36 * math.pi)))
    assert end == pytest.approx(0.742, abs=1e-3)
