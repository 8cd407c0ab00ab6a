"""Schedule length on small folds, early stopping on a smoothed score, EMA warm-up, warm-up + cosine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hms_core.training.schedule import (
    EMA,
    MIN_MONITOR_ROWS,
    EarlyStopping,
    WarmupCosine,
    monitor_mask,
    plan_schedule,
    steps_per_epoch,
)


def test_small_fold_schedule_is_stretched_to_min_steps() -> None:
    # 160 training rows at batch 32: 5 steps per epoch, 8 epochs = 40 steps, far too few to train a network
    plan = plan_schedule([8], [steps_per_epoch(160, 32)], warmup_epochs=1, patience=3, min_steps=200)
    assert plan.factor == pytest.approx(5.0)
    assert plan.stage_epochs == (40,) and plan.steps == 200
    assert plan.warmup_epochs == pytest.approx(5.0) and plan.patience == 15


def test_two_stages_are_stretched_by_one_factor_and_large_folds_are_unchanged() -> None:
    plan = plan_schedule([6, 2], [4, 1], warmup_epochs=1, patience=2, min_steps=130)
    assert plan.factor == pytest.approx(5.0)  # 6*4 + 2*1 = 26 steps
    assert plan.stage_epochs == (30, 10) and plan.stage_starts() == [0, 30]
    big = plan_schedule([8], [25], warmup_epochs=1, patience=3, min_steps=200)
    assert (big.stage_epochs, big.warmup_epochs, big.patience, big.factor) == ((8,), 1.0, 3, 1.0)
    assert plan_schedule([8], [5], 1, 3, min_steps=0).stage_epochs == (8,)  # 0 switches the stretch off


def test_plan_schedule_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="'min_steps' parameter"):
        plan_schedule([8], [5], 1, 3, min_steps=-1)
    with pytest.raises(ValueError, match="same length"):
        plan_schedule([8, 2], [5], 1, 3)


@pytest.mark.parametrize("n_rows,batch,world", [(0, 8, 1), (5, 8, 1), (8, 8, 1), (9, 8, 1), (160, 32, 1),
                                                (161, 32, 1), (100, 8, 3), (1000, 64, 4)])  # fmt: skip
def test_steps_per_epoch_matches_the_training_loader(n_rows: int, batch: int, world: int) -> None:
    """The training loader shards rows over ranks and drops an incomplete last batch unless it is the only one."""
    per_rank = math.ceil(n_rows / world)
    loader = torch.utils.data.DataLoader(range(per_rank), batch_size=batch, drop_last=per_rank > batch)
    assert steps_per_epoch(n_rows, batch, world) == len(loader)


def test_smoothed_early_stopping_survives_one_noisy_evaluation() -> None:
    # a validation KL that keeps improving, with two noisy evaluations after the second
    scores = [1.0, 0.9, 0.97, 0.95, 0.85, 0.8, 0.78]
    plain, smooth = EarlyStopping(patience=2, smoothing=1), EarlyStopping(patience=2, smoothing=3)
    stopped_at = None
    for i, s in enumerate(scores):
        plain.update(s)
        smooth.update(s)
        if plain.should_stop and stopped_at is None:
            stopped_at = i
        assert not smooth.should_stop, f"smoothed early stopping stopped at evaluation {i}"
    assert stopped_at == 3  # the raw score would have ended training before the real improvement
    assert smooth.best == pytest.approx(0.78) and smooth.best_step == 6


def test_early_stopping_stops_on_a_real_plateau_and_round_trips() -> None:
    es = EarlyStopping(patience=3, smoothing=2)
    improved = [es.update(s) for s in [1.0, 0.8, 0.81, 0.82, 0.83, 0.84]]
    assert improved == [True, True, False, False, False, False]
    assert es.should_stop and es.best_step == 1
    again = EarlyStopping(patience=3, smoothing=2)
    again.load_state_dict(es.state_dict())
    assert again == es
    es.reset_patience()
    assert not es.should_stop and es.best == pytest.approx(0.8)  # the best checkpoint survives a new stage


def test_early_stopping_monitors_all_rows_when_few_have_high_votes() -> None:
    few = np.zeros(40, bool)
    few[:17] = True  # a small validation fold: 17 of 40 rows with >= 10 votes
    assert monitor_mask(few).all()
    many = np.zeros(400, bool)
    many[:MIN_MONITOR_ROWS] = True
    assert (monitor_mask(many) == many).all()


def test_ema_tracks_the_model_after_a_few_dozen_steps() -> None:
    """With decay 0.99 and no warm-up the EMA after 40 steps is still 67 % the random init; with warm-up it follows."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 6)
    ema = EMA(model, decay=0.99)
    init = model.weight.detach().clone()
    target = torch.randn_like(init)
    for _ in range(40):  # a small fold: 8 epochs x 5 steps
        with torch.no_grad():
            model.weight.copy_(target)
        ema.update(model)
    left = float((ema.module.weight - target).norm() / (init - target).norm())
    assert left < 0.05, f"EMA still holds {left:.0%} of the initial weights after 40 steps"
    assert ema.updates == 40


def test_warmup_cosine_shape() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosine(opt, total_epochs=10, warmup_epochs=2, min_factor=0.01)
    lrs = np.array([sched.set(t) for t in np.linspace(0, 10, 101)])
    assert lrs[10] == pytest.approx(0.5) and lrs[20] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.01)
    assert np.all(np.diff(lrs[20:]) <= 1e-12)
