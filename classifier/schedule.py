"""The learning-rate schedule: linear warm-up and decay, and early stopping that anneals before it stops.

Early stopping used to keep the best checkpoint by validation score, which could be one taken while the
learning rate was still high: on a held-out set of IT tickets a 12-epoch run whose validation accuracy went
77, 83, 85, 84, 85, 84 % kept epoch 3 and scored 0.9 points below a plain 3-epoch run decayed to zero (issue
21). Here a plateau does not stop training at once: the learning rate decays from where it is to zero over
one more epoch, and training stops there. The model kept is always the last one, so it has always seen its
learning rate decay, and a longer budget cannot end on a hotter model than a shorter one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from classifier.options import DEFAULT_EPOCHS, MIN_STEPS


class PlateauAnnealing(TrainerCallback):
    """Linear warm-up then linear decay to zero over the whole budget (``transformers``' "linear" schedule)
    until the watched validation metric has not improved for ``patience`` evaluations; from there, a linear
    decay to zero over ``anneal_steps`` and a stop.

    The object is the scheduler's ``lr_lambda`` too: ``LambdaLR`` saves a callable object's attributes in
    the checkpoint and restores them into it, so ``--resume`` continues a plateau count or an anneal."""

    def __init__(self, patience: int, anneal_steps: int, metric: str = "eval_macro_f1") -> None:
        self.patience = patience
        self.anneal_steps = max(1, anneal_steps)
        self.metric = metric
        self.best: float | None = None
        self.waited = 0
        self.warmup_steps = 0
        self.total_steps = 1
        self.anneal_from: int | None = None  # the step the plateau was found at
        self.anneal_start_factor = 1.0

    def planned(self, step: int) -> float:
        """The planned schedule's factor of the peak learning rate at ``step``."""
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.warmup_steps))

    def __call__(self, step: int) -> float:
        return self.factor(step)

    def factor(self, step: int) -> float:
        """The factor of the peak learning rate at ``step``: planned, or annealing after a plateau."""
        if self.anneal_from is None:
            return self.planned(step)
        done = (step - self.anneal_from) / self.anneal_steps
        return max(0.0, self.anneal_start_factor * (1.0 - done))

    def scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
                  ) -> torch.optim.lr_scheduler.LambdaLR:
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        return torch.optim.lr_scheduler.LambdaLR(optimizer, self)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        value = (metrics or {}).get(self.metric)
        if value is None or self.anneal_from is not None:
            return
        if self.best is None or value > self.best:
            self.best, self.waited = value, 0
            return
        self.waited += 1
        # A plateau with less than the annealing left: the planned decay ends sooner, so let it run out.
        if self.waited >= self.patience and self.total_steps - state.global_step > self.anneal_steps:
            self.anneal_from, self.anneal_start_factor = state.global_step, self.planned(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.anneal_from is not None and state.global_step >= self.anneal_from + self.anneal_steps:
            control.should_training_stop = True

    def stopped_early(self) -> bool:
        return self.anneal_from is not None


class AnnealingTrainer(Trainer):
    """A ``Trainer`` whose learning rate follows its :class:`PlateauAnnealing` callback."""

    def __init__(self, *args: Any, annealing: PlateauAnnealing, **kwargs: Any) -> None:
        super().__init__(*args, callbacks=[annealing], **kwargs)
        self.annealing = annealing

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        if self.lr_scheduler is None:
            optimizer = optimizer if optimizer is not None else self.optimizer
            assert optimizer is not None  # Trainer creates the optimizer first
            self.lr_scheduler = self.annealing.scheduler(optimizer, num_training_steps,
                                                         self.args.get_warmup_steps(num_training_steps))
        return self.lr_scheduler


def steps_per_epoch(tickets: int, batch_size: int) -> int:
    """Optimisation steps in one epoch of ``tickets`` at ``batch_size`` tickets per step."""
    return max(1, math.ceil(tickets / batch_size))


def planned_epochs(epochs: float | None, tickets: int, batch_size: int) -> float:
    """The epochs given; without them :data:`DEFAULT_EPOCHS`, or more where those would make fewer than
    :data:`MIN_STEPS` optimisation steps: sized by steps, 500 tickets get as many updates as 5,000."""
    if epochs is not None:
        return epochs
    return max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch(tickets, batch_size)))
