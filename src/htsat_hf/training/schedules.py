"""The original HTS-AT learning-rate schedule: a per-epoch factor table applied to the base learning rate.

The original (`sed_model.py`, `lr_foo` with `lr_rate = [0.02, 0.05, 0.1]` and `lr_scheduler_epoch = [10, 20, 30]`)
steps a `LambdaLR` once per epoch. The factor of epoch `e` (0-based) is:

| epochs | factor |
| --- | --- |
| 0, 1, 2 | 0.02, 0.05, 0.1 (warm-up) |
| 3 to 10 | 0.1 |
| 11 to 20 | 0.05 |
| 21 to 30 | 0.02 |
| 31 and later | 0.03 |

The boundaries are inclusive because the original looks them up with `bisect_left`. From epoch 31 on it computes
`max(0.02 * 0.98**epoch, 0.03)`, whose first term is already below 0.03 at epoch 31, so the factor rises from 0.02
to a constant 0.03: a quirk kept here because the published models were trained with it.

[`get_htsat_schedule`] turns the table into a per-optimizer-step scheduler, the granularity transformers'
`Trainer` steps schedulers at.
"""

import bisect

import torch

from ..errors import InputError

WARMUP_FACTORS = (0.02, 0.05, 0.1)
DECAY_EPOCHS = (10, 20, 30)
FLOOR_FACTOR = 0.03


def htsat_lr_factor(epoch: int) -> float:
    """Learning-rate factor of the original recipe for a 0-based `epoch` (see the module docstring)."""
    if epoch < 0:
        raise InputError(f"epoch must be >= 0, got {epoch}")
    if epoch < len(WARMUP_FACTORS):
        return WARMUP_FACTORS[epoch]
    stage = bisect.bisect_left(DECAY_EPOCHS, epoch)
    if stage < len(DECAY_EPOCHS):
        # Stage 0 (epochs 3-10) uses the last warm-up factor, later stages walk the warm-up factors backwards.
        return WARMUP_FACTORS[-1 - stage]
    return max(WARMUP_FACTORS[0] * 0.98**epoch, FLOOR_FACTOR)


class HTSATLRLambda:
    """`LambdaLR` multiplier: the factor of the epoch that optimizer step `step` (0-based) belongs to.

    A callable object rather than a closure, so that `LambdaLR.state_dict()` saves `steps_per_epoch` and a resumed
    run keeps the epoch boundaries of the run that saved it.
    """

    def __init__(self, steps_per_epoch: int):
        if steps_per_epoch < 1:
            raise InputError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.steps_per_epoch = int(steps_per_epoch)

    def __call__(self, step: int) -> float:
        return htsat_lr_factor(step // self.steps_per_epoch)


def get_htsat_schedule(optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The original per-epoch schedule as a `LambdaLR` stepped once per optimizer step.

    The learning rate of every parameter group is its initial `lr` times [`htsat_lr_factor`] of the current epoch,
    where optimizer step `s` (0-based) is in epoch `s // steps_per_epoch`.

    With transformers' `Trainer`, `steps_per_epoch` is the number of optimizer steps per epoch:
    `ceil(batches_per_epoch_per_process / gradient_accumulation_steps)`, i.e. `ceil(len(trainer.get_train_dataloader())
    / args.gradient_accumulation_steps)`. Pass the scheduler as `Trainer(..., optimizers=(optimizer, scheduler))`, or
    build it in a subclass once the dataloader is known:

    ```python
    class HTSATTrainer(Trainer):
        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                batches = len(self.get_train_dataloader())
                steps = math.ceil(batches / self.args.gradient_accumulation_steps)
                self.lr_scheduler = get_htsat_schedule(optimizer or self.optimizer, steps)
            return self.lr_scheduler
    ```

    `Trainer` saves `scheduler.state_dict()` in its checkpoints and restores it on resume (`weights_only` loading
    works: the state holds only numbers). `Trainer`'s own warm-up and decay arguments (`lr_scheduler_type`,
    `warmup_steps`, ...) are ignored when a scheduler is given.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, HTSATLRLambda(steps_per_epoch))


__all__ = ["HTSATLRLambda", "get_htsat_schedule", "htsat_lr_factor"]
