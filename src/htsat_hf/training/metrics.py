"""Evaluation metrics of the original recipes, as `evaluate` metric modules that ship with the package.

`evaluate.load("accuracy")` fetches its module from the Hub and fails offline; these `evaluate.Metric` subclasses are
instantiated directly (`AudioTaggingMetrics()`) and need no network. The values equal scikit-learn's, which the
original uses (`average_precision_score`, `roc_auc_score`, `accuracy_score`), including the treatment of tied scores.

- Multi-label (AudioSet): mAP, the mean over classes of the average precision; mAUC, the mean over classes of the
  ROC AUC; d-prime `sqrt(2) * Phi^-1(mAUC)`. Classes without a positive example are left out of mAP and mAUC, and
  classes without a negative one out of mAUC, where their AP/AUC is undefined (scikit-learn reports AP 0 for such
  a class and refuses the AUC); a warning says how many were left out. Every AudioSet evaluation class has
  positives, so there the values are the original's.
- Single-label (ESC-50, Speech Commands): accuracy of the arg-max class, and top-k accuracy.

[`make_compute_metrics`] wraps them for transformers' `Trainer`.
"""

import math
import warnings
from collections.abc import Callable

import datasets
import evaluate
import numpy as np
import torch
from scipy.stats import norm, rankdata
from transformers import EvalPrediction

from ..errors import InputError
from ..modeling_htsat import clip_classification_loss

_CITATION = """\
@inproceedings{chen2022hts,
  title={HTS-AT: A Hierarchical Token-Semantic Audio Transformer for Sound Classification and Detection},
  author={Chen, Ke and Du, Xingjian and Zhu, Bilei and Ma, Zejun and Berg-Kirkpatrick, Taylor and Dubnov, Shlomo},
  booktitle={ICASSP},
  year={2022}
}
"""


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Average precision of one class: `sum_k (R_k - R_{k-1}) * P_k` over the distinct score thresholds, highest
    first (tied scores form one threshold), as scikit-learn's `average_precision_score`.

    Args:
        scores: `(num_examples,)` scores, higher meaning more likely positive.
        positives: `(num_examples,)` booleans, at least one `True`.
    """
    order = np.argsort(-scores, kind="stable")
    scores, positives = scores[order], positives[order]
    # Last position of each run of tied scores: the points of the precision-recall curve.
    ends = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])
    true_positives = np.cumsum(positives)[ends]
    precision = true_positives / (ends + 1)
    recall_gain = np.diff(np.r_[0, true_positives]) / true_positives[-1]
    return float(np.sum(recall_gain * precision))


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """ROC AUC of one class from the Mann-Whitney statistic with mid-ranks for ties, which equals the trapezoidal area
    under scikit-learn's ROC curve. Needs at least one positive and one negative example."""
    ranks = rankdata(scores)
    num_pos = int(positives.sum())
    num_neg = positives.size - num_pos
    return float((ranks[positives].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def d_prime(auc: float) -> float:
    """Sensitivity index `sqrt(2) * Phi^-1(auc)` of an AUC (Phi: the standard normal CDF)."""
    return float(math.sqrt(2.0) * norm.ppf(auc))


def audio_tagging_scores(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """mAP, mAUC and d-prime of multi-label scores.

    Args:
        scores: `(num_examples, num_classes)` scores (probabilities or logits: only their order matters).
        targets: `(num_examples, num_classes)` multi-hot targets (non-zero = positive).

    Returns:
        `{"mAP", "mAUC", "d_prime"}`; see the module docstring for classes without positives or negatives.
    """
    scores, positives = np.asarray(scores, dtype=np.float64), np.asarray(targets) != 0
    if scores.ndim != 2 or scores.shape != positives.shape:
        raise InputError(
            f"scores and targets must both be (num_examples, num_classes), got {scores.shape} and {positives.shape}"
        )
    num_pos = positives.sum(axis=0)
    with_pos = np.flatnonzero(num_pos > 0)
    with_both = np.flatnonzero((num_pos > 0) & (num_pos < positives.shape[0]))
    if with_pos.size == 0 or with_both.size == 0:
        raise InputError("mAP and mAUC need at least one class with both positive and negative examples")
    if with_both.size < positives.shape[1]:
        warnings.warn(
            f"{positives.shape[1] - with_pos.size} of {positives.shape[1]} classes have no positive example and "
            f"{with_pos.size - with_both.size} no negative one; mAP is averaged over {with_pos.size} classes and "
            f"mAUC over {with_both.size}",
            stacklevel=2,
        )
    m_ap = float(np.mean([average_precision(scores[:, c], positives[:, c]) for c in with_pos]))
    m_auc = float(np.mean([roc_auc(scores[:, c], positives[:, c]) for c in with_both]))
    return {"mAP": m_ap, "mAUC": m_auc, "d_prime": d_prime(m_auc)}


def classification_accuracy(scores: np.ndarray, labels: np.ndarray, top_k: int = 5) -> dict[str, float]:
    """Accuracy and top-k accuracy of single-label scores.

    The true class's rank counts the classes scored higher, and tied classes with a lower index, so top-1 accuracy
    is the accuracy of `argmax` (which picks the lowest index among ties), as in the original. With `top_k` at least
    the number of classes, top-k accuracy is 1.

    Args:
        scores: `(num_examples, num_classes)` logits or probabilities.
        labels: `(num_examples,)` class ids.
        top_k: k of the top-k accuracy.

    Returns:
        `{"accuracy", f"top{top_k}_accuracy"}`.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise InputError(
            f"need scores (num_examples, num_classes) and labels (num_examples,), got {scores.shape} and {labels.shape}"
        )
    if top_k < 1:
        raise InputError(f"top_k must be >= 1, got {top_k}")
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise InputError(f"class ids must lie in [0, {scores.shape[1]}), got {labels.min()} to {labels.max()}")
    true_scores = scores[np.arange(labels.size), labels][:, None]
    lower_index = np.arange(scores.shape[1])[None, :] < labels[:, None]
    rank = (scores > true_scores).sum(axis=1) + ((scores == true_scores) & lower_index).sum(axis=1)
    return {"accuracy": float(np.mean(rank == 0)), f"top{top_k}_accuracy": float(np.mean(rank < top_k))}


class AudioTaggingMetrics(evaluate.Metric):
    """mAP, mAUC and d-prime for multi-label audio tagging (the AudioSet metrics of HTS-AT).

    Inputs: `predictions`, `(num_examples, num_classes)` scores; `references`, `(num_examples, num_classes)`
    multi-hot targets. Output: `{"mAP", "mAUC", "d_prime"}`. See [`audio_tagging_scores`].

    Example:

    ```python
    >>> metric = AudioTaggingMetrics()
    >>> scores = metric.compute(predictions=[[0.9, 0.2], [0.1, 0.7], [0.8, 0.4]], references=[[0, 0], [0, 1], [1, 1]])
    >>> {name: round(value, 4) for name, value in scores.items()}
    {'mAP': 0.75, 'mAUC': 0.75, 'd_prime': 0.9539}

    ```
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=(
                "Mean average precision and mean ROC AUC over classes, and d-prime sqrt(2) * Phi^-1(mAUC), for "
                "multi-label audio tagging. Classes without positives (or, for the AUC, without negatives) are "
                "left out."
            ),
            citation=_CITATION,
            inputs_description="predictions: (N, C) scores; references: (N, C) multi-hot targets.",
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("int8")),
                }
            ),
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        return audio_tagging_scores(np.asarray(predictions), np.asarray(references))


class Accuracy(evaluate.Metric):
    """Accuracy and top-k accuracy for single-label classification from scores (logits or probabilities).

    Inputs: `predictions`, `(num_examples, num_classes)` scores; `references`, `(num_examples,)` class ids;
    `top_k` (default 5) as a `compute` argument. Output: `{"accuracy", "top5_accuracy"}` (the key follows `top_k`).
    See [`classification_accuracy`].
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Accuracy of the arg-max class and top-k accuracy, from per-class scores.",
            citation=_CITATION,
            inputs_description="predictions: (N, C) scores; references: (N,) class ids; top_k: int (5).",
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, top_k: int = 5) -> dict[str, float]:
        return classification_accuracy(np.asarray(predictions), np.asarray(references), top_k)


def make_compute_metrics(problem_type: str, top_k: int = 5) -> Callable[[EvalPrediction], dict[str, float]]:
    """A `compute_metrics` function for transformers' `Trainer`.

    Args:
        problem_type: the model's `config.problem_type`: `"multi_label_classification"` gives
            `{"mAP", "mAUC", "d_prime"}` from multi-hot `label_ids` (plus accuracy when every target is one-hot);
            `"single_label_classification"` gives
            `{"accuracy", "top{top_k}_accuracy"}` from class-id `label_ids`. `Trainer` logs them with an `eval_`
            prefix (`metric_for_best_model="mAP"` or `"accuracy"` selects models as the original does).
        top_k: k of the top-k accuracy (single-label only).

    Both also return `"loss"`, the model's loss over all gathered predictions (with `HTSATTrainer`, this is the
    `eval_loss`, free of the distributed padding that Trainer's per-batch losses carry).

    The scores are the model's logits as they come: both metrics depend only on their order, and a sigmoid in float32
    would turn distinct large logits into ties at 1.0. If the model returns several tensors, the first (the logits)
    is used.
    """
    if problem_type == "multi_label_classification":
        metric = AudioTaggingMetrics()

        def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
            logits, targets = _logits(eval_prediction), eval_prediction.label_ids
            results = metric.compute(predictions=logits, references=targets)
            if np.all(np.asarray(targets).sum(axis=1) == 1):  # one-hot targets (Speech Commands recipe): accuracy too
                results.update(classification_accuracy(logits, np.asarray(targets).argmax(axis=1), top_k))
            return {**results, "loss": _loss(logits, targets, problem_type)}

    elif problem_type == "single_label_classification":
        metric = Accuracy()

        def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
            logits, targets = _logits(eval_prediction), eval_prediction.label_ids
            results = metric.compute(predictions=logits, references=targets, top_k=top_k)
            return {**results, "loss": _loss(logits, targets, problem_type)}

    else:
        raise InputError(
            "problem_type must be 'multi_label_classification' or 'single_label_classification', got "
            f"{problem_type!r}"
        )
    return compute_metrics


def _loss(logits: np.ndarray, targets: np.ndarray, problem_type: str) -> float:
    """The model's own loss over the whole evaluation set at once (Trainer reports it as `eval_loss`)."""
    labels = torch.from_numpy(np.asarray(targets))
    return float(clip_classification_loss(torch.from_numpy(np.asarray(logits, dtype=np.float32)), labels, problem_type))


def _logits(eval_prediction: EvalPrediction) -> np.ndarray:
    predictions = eval_prediction.predictions
    return predictions[0] if isinstance(predictions, (tuple, list)) else predictions


__all__ = [
    "Accuracy",
    "AudioTaggingMetrics",
    "audio_tagging_scores",
    "average_precision",
    "classification_accuracy",
    "d_prime",
    "make_compute_metrics",
    "roc_auc",
]
