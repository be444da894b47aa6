"""`HTSATTrainer`: transformers' `Trainer` with the original recipe's schedule, sampling, mixup and evaluation."""

import logging
import math

import torch
from transformers import Trainer
from transformers.trainer_utils import has_length

from ..errors import InputError
from ..modeling_htsat import mixup
from .augmentation import sample_mixup
from .schedules import get_htsat_schedule

logger = logging.getLogger(__name__)


class HTSATTrainer(Trainer):
    """A `Trainer` that adds, each only when asked for:

    - `lr_schedule="htsat"`: the original per-epoch learning-rate table (see `schedules`), stepping per optimizer
      step; otherwise `TrainingArguments.lr_scheduler_type` applies;
    - `eval_data_collator`: a collator for evaluation and prediction (no random crops, optional TTA copies);
    - `train_sampler`: e.g. a `BalancedClassSampler`; the same seeded draw on every process, which accelerate then
      shards, so processes get disjoint shares; `set_epoch` redraws it every epoch;
    - `mixup_alpha > 0`: mixup of the normalised log-mel inside the model (Beta(alpha, alpha) per example, partner
      in the reversed batch, as the original); `mix_targets=True` mixes the targets too (the original does not);
    - time-shift test-time augmentation: evaluation averages clip probabilities over time-shifted copies of each clip; the eval
      collator then gives `input_features` of shape `(batch, copies, frames, mel_bins)` (see
      `AudioClassificationCollator.tta_offsets`).
    """

    def __init__(
        self,
        *args,
        lr_schedule: str | None = None,
        train_sampler: torch.utils.data.Sampler | None = None,
        mixup_alpha: float = 0.0,
        mix_targets: bool = False,
        eval_data_collator=None,
        train_dataset_size: int | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if train_dataset_size is not None and train_dataset_size < 1:
            raise InputError(f"train_dataset_size must be >= 1, got {train_dataset_size}")
        self.train_dataset_size = train_dataset_size
        self.eval_data_collator = eval_data_collator
        if lr_schedule not in (None, "htsat"):
            raise InputError(f"lr_schedule must be None or 'htsat', got {lr_schedule!r}")
        self.lr_schedule = lr_schedule
        self.train_sampler = train_sampler
        self.mixup_alpha = mixup_alpha
        self.mix_targets = mix_targets

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch of the `htsat` schedule.

        - `train_dataset_size` given (e.g. a streamed dataset, which has no length): that many examples make an
          epoch, in batches of `train_batch_size` on each of `world_size` processes;
        - a dataset with a length: counted as Trainer does (batches of this process's dataloader);
        - a dataset without one (streamed) and no size: `max_steps` spread over `num_train_epochs` epochs.

        Raises:
            InputError: a streamed dataset with neither `train_dataset_size` nor `max_steps`.
        """
        accumulation = self.args.gradient_accumulation_steps
        if self.train_dataset_size is not None:
            per_step = self.args.train_batch_size * max(1, self.args.world_size)
            return max(1, math.ceil(math.ceil(self.train_dataset_size / per_step) / accumulation))
        if has_length(self.train_dataset):
            return max(1, math.ceil(len(self.get_train_dataloader()) / accumulation))
        if self.args.max_steps > 0 and self.args.num_train_epochs > 0:
            return max(1, math.ceil(self.args.max_steps / self.args.num_train_epochs))
        raise InputError(
            "the htsat learning-rate schedule counts epochs, and a streamed dataset has no length: give "
            "--train_dataset_size (examples per epoch) or --max_steps"
        )

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_schedule != "htsat":
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            self.lr_scheduler = get_htsat_schedule(optimizer or self.optimizer, self.steps_per_epoch())
        return self.lr_scheduler

    def get_eval_dataloader(self, eval_dataset=None):
        return self._with_eval_collator(super().get_eval_dataloader, eval_dataset)

    def get_test_dataloader(self, test_dataset):
        return self._with_eval_collator(super().get_test_dataloader, test_dataset)

    def _with_eval_collator(self, make_dataloader, dataset):
        # Trainer has one data_collator for every split; evaluation crops no clips at random and may add TTA copies.
        if self.eval_data_collator is None:
            return make_dataloader(dataset)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return make_dataloader(dataset)
        finally:
            self.data_collator = train_collator

    def _get_train_sampler(self, train_dataset=None):
        return self.train_sampler if self.train_sampler is not None else super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.mixup_alpha > 0 and model.training:
            batch = inputs["input_features"].shape[0]
            lam = sample_mixup(batch, self.mixup_alpha, device=inputs["input_features"].device)
            inputs = {**inputs, "mixup_lambda": lam}
            if self.mix_targets and "labels" in inputs:
                labels = inputs["labels"]
                if not labels.is_floating_point():  # class ids: mix one-hot distributions
                    labels = torch.nn.functional.one_hot(labels, self.model.config.num_labels).float()
                inputs["labels"] = mixup(labels, lam)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        loss, logits, labels = self._predict(model, inputs, prediction_loss_only, ignore_keys)
        if self.compute_metrics is not None and not prediction_loss_only:
            # Trainer averages per-batch losses, and accelerate's padding of the last batch with repeated examples
            # leaks into them; `make_compute_metrics` computes the loss once over the gathered predictions instead.
            loss = None
        return loss, logits, labels

    def _predict(self, model, inputs, prediction_loss_only, ignore_keys):
        features = inputs["input_features"]
        if features.ndim != 4:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        # Time-shift TTA: average probabilities over the copies and return them as logits again, so that metrics
        # and callers that apply sigmoid/softmax get the averaged probabilities back.
        batch, copies = features.shape[:2]
        with torch.no_grad():
            logits = model(input_features=features.flatten(0, 1)).logits.float().view(batch, copies, -1)
        if model.config.problem_type == "single_label_classification":
            averaged = torch.log(torch.softmax(logits, -1).mean(1).clamp_min(1e-12))
        else:
            averaged = torch.logit(torch.sigmoid(logits).mean(1), eps=1e-7)
        return None, averaged, inputs.get("labels")


__all__ = ["HTSATTrainer"]
