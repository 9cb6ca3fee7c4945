"""The learning-rate schedule that anneals before it stops (classifier.schedule)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerControl

from classifier.schedule import PlateauAnnealing


def _evaluate(annealing: PlateauAnnealing, step: int, value: float) -> None:
    annealing.on_evaluate(None, SimpleNamespace(global_step=step), TrainerControl(), {"eval_macro_f1": value})


def test_the_planned_schedule_warms_up_then_decays_to_zero() -> None:
    annealing = PlateauAnnealing(patience=2, anneal_steps=10)
    annealing.total_steps, annealing.warmup_steps = 100, 10
    assert [annealing.factor(step) for step in (0, 5, 10, 55, 100, 120)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]


def test_a_plateau_anneals_from_the_current_rate_to_zero_then_stops() -> None:
    annealing = PlateauAnnealing(patience=2, anneal_steps=10)
    annealing.total_steps, annealing.warmup_steps = 100, 0
    for step, value in ((10, 0.5), (20, 0.6), (30, 0.6), (40, 0.55)):  # no gain at 30 and 40
        _evaluate(annealing, step, value)
    assert annealing.anneal_from == 40 and annealing.factor(40) == pytest.approx(0.6)
    assert annealing.factor(45) == pytest.approx(0.3) and annealing.factor(50) == 0.0
    control = TrainerControl()
    annealing.on_step_end(None, SimpleNamespace(global_step=49), control)
    assert not control.should_training_stop
    annealing.on_step_end(None, SimpleNamespace(global_step=50), control)
    assert control.should_training_stop
    _evaluate(annealing, 50, 0.9)  # while annealing, nothing changes the plan
    assert annealing.anneal_from == 40


def test_a_plateau_near_the_end_lets_the_planned_decay_run_out() -> None:
    annealing = PlateauAnnealing(patience=1, anneal_steps=10)
    annealing.total_steps, annealing.warmup_steps = 100, 0
    _evaluate(annealing, 80, 0.7)
    _evaluate(annealing, 95, 0.7)
    assert annealing.anneal_from is None and annealing.factor(95) == pytest.approx(0.05)


def test_training_on_a_plateau_stops_after_the_learning_rate_has_decayed(tiny_csv: Path, tmp_path: Path) -> None:
    from classifier.data import prepare_data
    from classifier.options import DataOptions, TrainingOptions
    from classifier.train import _build_trainer, _load_model, _load_tokenizer, default_base_model

    # A learning rate too small to change any prediction: validation macro-F1 is flat from the first epoch.
    options = TrainingOptions(epochs=20, learning_rate=1e-12, batch_size=32, early_stopping_patience=1,
                              warmup_ratio=0.0)
    data = prepare_data(tiny_csv, DataOptions(validation_fraction=0.2), seed=0)
    model = _load_model(default_base_model(), data.labels, options)
    trainer, _ = _build_trainer(model, _load_tokenizer(default_base_model()), data, options, 48, tmp_path)
    trainer.train()
    per_epoch = -(-len(data.train) // options.batch_size)
    # Epoch 1 sets the best, epoch 2 is the plateau, epoch 3 anneals; 17 of the 20 planned epochs never run.
    assert trainer.annealing.anneal_from == 2 * per_epoch
    assert trainer.state.global_step == 3 * per_epoch
    assert trainer.lr_scheduler.get_last_lr()[0] == 0.0


def test_a_small_export_trains_for_at_least_the_minimum_steps() -> None:
    from classifier.schedule import planned_epochs

    assert planned_epochs(3, 450, 32) == 3  # epochs given: those
    assert planned_epochs(None, 450, 32) == 40  # 15 steps an epoch: 40 epochs make 600 steps
    assert planned_epochs(None, 9_000, 32) == 12  # 282 steps an epoch: 12 epochs are more than 600


def test_the_plateau_count_and_the_anneal_travel_in_the_schedulers_checkpoint() -> None:
    import torch

    def scheduler(annealing: PlateauAnnealing) -> torch.optim.lr_scheduler.LambdaLR:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return annealing.scheduler(optimizer, total_steps=100, warmup_steps=0)

    before = PlateauAnnealing(patience=1, anneal_steps=10)
    saved = scheduler(before)
    _evaluate(before, 20, 0.5)
    _evaluate(before, 30, 0.5)  # a plateau: annealing from step 30
    state = saved.state_dict()
    after = PlateauAnnealing(patience=1, anneal_steps=10)  # what --resume builds, before it loads the state
    scheduler(after).load_state_dict(state)
    assert (after.anneal_from, after.best, after.anneal_start_factor) == (30, 0.5, pytest.approx(0.7))
    assert after.factor(35) == pytest.approx(0.35)
