"""Reusable parts of the original HTS-AT training and evaluation recipes, for use with transformers' `Trainer` or a
hand-written loop. Needs the `train` extras (`datasets`, `accelerate`, `evaluate`, `scikit-learn`).

- `schedules`: the per-epoch learning-rate table as a per-step `LambdaLR`.
- `sampling`: class-balanced sampling of AudioSet clips, distributed and resumable.
- `augmentation`: mixup weights (the model mixes its features with them, `modeling_htsat.mixup`).
- `metrics`: mAP, mAUC, d-prime and (top-k) accuracy as offline `evaluate` metrics, and a `compute_metrics` factory.
- `tta`: the 10-copy time-shift test-time augmentation of the AudioSet evaluation.
- `checkpoints`: weight averaging of saved models, and probability ensembles.
- `output_dir`: the training scripts' `--output_dir` check (new or empty unless resumed or overwritten).
"""

from .augmentation import sample_mixup
from .checkpoints import average_checkpoints, check_compatible, ensemble_evaluate, ensemble_predict
from .metrics import (
    Accuracy,
    AudioTaggingMetrics,
    audio_tagging_scores,
    classification_accuracy,
    d_prime,
    make_compute_metrics,
)
from .sampling import BalancedClassSampler
from .schedules import get_htsat_schedule, htsat_lr_factor
from .tta import clip_probabilities, time_shift_offsets, time_shift_tta

__all__ = [
    "Accuracy",
    "AudioTaggingMetrics",
    "BalancedClassSampler",
    "audio_tagging_scores",
    "average_checkpoints",
    "check_compatible",
    "classification_accuracy",
    "clip_probabilities",
    "d_prime",
    "ensemble_evaluate",
    "ensemble_predict",
    "get_htsat_schedule",
    "htsat_lr_factor",
    "make_compute_metrics",
    "sample_mixup",
    "time_shift_offsets",
    "time_shift_tta",
]
