"""Strong-label training data for `HTSATForSoundEventDetection`: frame targets on the model's time grid, the
examples (and detection inputs) of a DESED-layout folder, the batch collator and a frame-level F1 for `Trainer`.

A training example is one clip of at most the feature extractor's `max_length_seconds` (10 s): a file of that length
or shorter is one example, a longer file is cut into consecutive 10 s windows (the last one shorter). Every clip is
zero-padded to the full 10 s before the feature extractor, so the model's 32 steps always span the padded length:
step `i` covers `[i, i + 1) * step_seconds` from the clip's start with `step_seconds = windows.grid_step_seconds(...)`
of the padded clip (0.3125 s at 32 kHz with hop 320), the grid `windows.sliding_window_scores` uses for a 10 s window.

Targets are soft: `target[step, class]` is the fraction of the step's span covered by events of that class (the
union of its events, `io.merge_intervals`, so overlapping annotations of one class do not count twice; reading the
annotations already merges them, with a warning), in [0, 1]; the model's loss is
binary cross-entropy, which takes such targets. `target_mode="majority"` gives hard targets instead: 1 where at least
half of the step is covered. Steps in the zero padding have no events and target 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..audio import audio_duration, read_audio
from ..errors import InputError
from ..inputs import AudioItem
from .io import merge_intervals, read_ground_truth_tsv
from .windows import MIN_AUDIO_SECONDS, grid_step_seconds

logger = logging.getLogger(__name__)

TARGET_MODES = ("fraction", "majority")


# ----------------------------------------------------------------------------------------------------------- targets


def frame_targets(
    events: Sequence[tuple[float, float, str]],
    labels: Sequence[str],
    num_steps: int,
    step_seconds: float,
    mode: str = "fraction",
) -> np.ndarray:
    """Frame targets of one clip on the model's grid.

    Args:
        events: `(onset, offset, label)` in seconds from the clip's start; parts outside the grid are ignored.
        labels: the model's classes, in column order; an event label outside them is an error.
        num_steps: steps of the grid (`config.num_time_steps`, 32).
        step_seconds: duration of one step (see `windows.grid_step_seconds`).
        mode: `"fraction"`: the covered fraction of each step; `"majority"`: 1 where that fraction is >= 0.5.

    Returns:
        `(num_steps, len(labels))` float32 array in [0, 1].
    """
    if mode not in TARGET_MODES:
        raise ValueError(f"target mode must be one of {TARGET_MODES}, got {mode!r}")
    if step_seconds <= 0 or num_steps < 1:
        raise ValueError(f"need a positive step and step count, got {num_steps} steps of {step_seconds} s")
    index = {label: k for k, label in enumerate(labels)}
    per_class: dict[int, list[tuple[float, float]]] = {}
    for onset, offset, label in events:
        if label not in index:
            raise ValueError(f"event label {label!r} is not one of the model's classes {list(labels)}")
        if offset > onset:
            per_class.setdefault(index[label], []).append((float(onset), float(offset)))
    targets = np.zeros((num_steps, len(labels)), dtype=np.float64)
    starts = np.arange(num_steps) * step_seconds
    ends = starts + step_seconds
    for column, intervals in per_class.items():
        for onset, offset in merge_intervals(intervals):
            targets[:, column] += np.clip(np.minimum(ends, offset) - np.maximum(starts, onset), 0.0, None)
    targets = np.clip(targets / step_seconds, 0.0, 1.0)
    if mode == "majority":
        targets = (targets >= 0.5 - 1e-9).astype(np.float64)
    return targets.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------- examples


@dataclass
class StrongLabelExample:
    """One training clip: `seconds` of `path` from `start`, with its events relative to `start`."""

    path: str
    filename: str
    start: float
    seconds: float
    events: list[tuple[float, float, str]] = field(default_factory=list)


def read_strong_labels(
    directory: str | Path, labels: Sequence[str] | None = None
) -> tuple[pd.DataFrame, list[str], Path]:
    """The annotations of a folder in the DESED layout: `<directory>/audio/` and `<directory>/annotations.tsv`
    (`filename onset offset event_label`; a file without events has a row with only its filename).

    Args:
        directory: the folder.
        labels: the allowed labels (e.g. the training set's, for an evaluation folder); default: any.

    Returns:
        `(table, labels, annotations)`: the checked annotations (see `io.read_ground_truth_tsv`), their sorted event
        labels, and the annotations' path.

    Raises:
        InputError naming the file (and line): a folder without audio/ or annotations.tsv, a malformed annotation
        line, a label outside `labels`, no events.
    """
    directory = Path(directory)
    annotations, audio_dir = directory / "annotations.tsv", directory / "audio"
    if not annotations.is_file() or not audio_dir.is_dir():
        raise InputError(
            f"{directory}: expected a strong-label folder with audio/ and annotations.tsv (filename, onset, offset, "
            "event_label)"
        )
    table = read_ground_truth_tsv(annotations, labels=labels)
    found_labels = sorted(table["event_label"].dropna().unique())
    if not found_labels:
        raise InputError(f"{annotations}: no events")
    return table, found_labels, annotations


def strong_label_inputs(directory: str | Path) -> tuple[list[AudioItem], Path, Path | None]:
    """The audio of a strong-label folder as detection inputs: `(items, annotations, durations)`, one item per file
    of the annotations (in their order), and `durations.tsv` when the folder has one."""
    directory = Path(directory)
    table, _, annotations = read_strong_labels(directory)
    items = [AudioItem(name, str(directory / "audio" / name)) for name in dict.fromkeys(table["filename"])]
    durations = directory / "durations.tsv"
    return items, annotations, durations if durations.is_file() else None


def read_strong_label_dir(
    directory: str | Path,
    labels: Sequence[str] | None = None,
    window_seconds: float = 10.0,
    skip_bad_audio: bool = False,
) -> tuple[list[StrongLabelExample], list[str], list[tuple[str, str]]]:
    """The training clips of a strong-label folder (see `read_strong_labels`).

    Every file of the annotations must be in `audio/`; files in `audio/` that the annotations do not list are not
    used (logged). Files longer than `window_seconds` are cut into consecutive windows; events are clipped to them.

    Args:
        directory: the folder.
        labels: the allowed labels; default: any.
        window_seconds: clip length in seconds (the feature extractor's `max_length_seconds`).
        skip_bad_audio: leave out missing, unreadable or empty files (returned in `skipped`) instead of failing.

    Returns:
        `(examples, labels, skipped)`: the clips, the sorted labels of the annotations, and `(filename, reason)`
        of the files left out.

    Raises:
        InputError naming the file: as `read_strong_labels`, and a missing, unreadable or empty audio file.
    """
    table, found_labels, annotations = read_strong_labels(directory, labels)
    audio_dir = Path(directory) / "audio"
    by_file = {name: group for name, group in table.groupby("filename", sort=False)}
    listed = set(by_file)
    unlisted = sorted(p.name for p in audio_dir.iterdir() if p.is_file() and p.name not in listed)
    if unlisted:
        logger.warning("%s: %d audio files are not in %s and are not used, e.g. %s", audio_dir, len(unlisted),
                       annotations.name, unlisted[:3])

    examples, skipped = [], []
    for filename, group in by_file.items():
        path = audio_dir / filename
        try:
            if not path.is_file():
                raise InputError(f"{path}: listed in {annotations} but missing from {audio_dir}")
            duration = audio_duration(path)
        except InputError as error:
            if not skip_bad_audio:
                raise
            skipped.append((filename, str(error)))
            logger.warning("skipping %s (%d skipped so far): %s", filename, len(skipped), error)
            continue
        events = [
            (float(row.onset), float(row.offset), str(row.event_label))
            for row in group.itertuples()
            if isinstance(row.event_label, str)
        ]
        for window in range(max(1, math.ceil(duration / window_seconds - 1e-9))):
            start = window * window_seconds
            seconds = min(window_seconds, duration - start)
            if seconds < MIN_AUDIO_SECONDS and window > 0:
                continue
            clipped = [
                (max(onset, start) - start, min(offset, start + seconds) - start, label)
                for onset, offset, label in events
                if onset < start + seconds and offset > start
            ]
            examples.append(StrongLabelExample(str(path), filename, start, seconds, clipped))
    if not examples:
        raise InputError(f"{directory}: no usable audio")
    return examples, found_labels, skipped


# ---------------------------------------------------------------------------------------------------------- collator


@dataclass
class StrongLabelCollator:
    """Turns `StrongLabelExample`s into model inputs: reads each clip, zero-pads it to the feature extractor's
    `max_length_seconds`, computes the log-mel features of the batch in one call, and the frame targets
    `(batch, num_time_steps, classes)` on the padded clip's grid (see the module docstring).

    Attributes:
        feature_extractor: the model's `HTSATFeatureExtractor`.
        labels: the model's classes, in column order.
        num_time_steps: `config.num_time_steps`.
        target_mode: `"fraction"` or `"majority"` (see `frame_targets`).
        skip_bad_audio: drop unreadable clips from the batch (counted in `skipped`) instead of failing.
    """

    feature_extractor: object
    labels: list[str]
    num_time_steps: int = 32
    target_mode: str = "fraction"
    skip_bad_audio: bool = False
    skipped: int = 0

    def __post_init__(self):
        if self.target_mode not in TARGET_MODES:
            raise ValueError(f"target_mode must be one of {TARGET_MODES}, got {self.target_mode!r}")

    @property
    def step_seconds(self) -> float:
        extractor = self.feature_extractor
        return grid_step_seconds(
            extractor.max_length_samples, extractor.hop_length, self.num_time_steps, extractor.sampling_rate
        )

    def __call__(self, examples: list[StrongLabelExample]) -> dict[str, torch.Tensor]:
        extractor = self.feature_extractor
        waves, targets = [], []
        for example in examples:
            try:
                wave = read_audio(example.path, extractor.sampling_rate, example.start, example.seconds)[0]
            except InputError as error:
                if not self.skip_bad_audio:
                    raise
                self.skipped += 1
                logger.warning("skipping unreadable audio (%d so far): %s", self.skipped, error)
                continue
            waves.append(wave[: extractor.max_length_samples])
            targets.append(
                frame_targets(example.events, self.labels, self.num_time_steps, self.step_seconds, self.target_mode)
            )
        if not waves:
            raise InputError("every clip of a batch failed to load; see the warnings above")
        # Zeros, whatever the extractor's pad_mode: a repeated clip would repeat sounds that the targets do not have.
        features = extractor(
            waves, sampling_rate=extractor.sampling_rate, padding="max_length", pad_mode="zeros", return_tensors="pt"
        )["input_features"]
        return {"input_features": features, "labels": torch.from_numpy(np.stack(targets))}


# ----------------------------------------------------------------------------------------------------------- metrics


def frame_f1(probabilities: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Frame-level F1 of `(..., classes)` probabilities against targets (positive where >= 0.5): micro F1 over all
    frames and classes, macro F1 over the classes that have a positive target or prediction."""
    predicted = np.asarray(probabilities) > threshold
    actual = np.asarray(targets) >= 0.5
    axes = tuple(range(predicted.ndim - 1))
    tp = (predicted & actual).sum(axis=axes).astype(np.float64)
    fp = (predicted & ~actual).sum(axis=axes).astype(np.float64)
    fn = (~predicted & actual).sum(axis=axes).astype(np.float64)
    denominators = 2 * tp + fp + fn
    per_class = np.divide(2 * tp, denominators, out=np.zeros_like(tp), where=denominators > 0)
    total = 2 * tp.sum() + fp.sum() + fn.sum()
    return {
        "frame_f1_micro": float(2 * tp.sum() / total) if total > 0 else 0.0,
        "frame_f1_macro": float(per_class[denominators > 0].mean()) if (denominators > 0).any() else 0.0,
    }


def compute_frame_metrics(eval_prediction) -> dict[str, float]:
    """`compute_metrics` for `Trainer`: frame F1 at 0.5 of the frame logits (the first prediction array; Trainer
    also gathers the clip logits) against the frame targets."""
    logits = eval_prediction.predictions
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    probabilities = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    return frame_f1(probabilities, eval_prediction.label_ids)


__all__ = [
    "TARGET_MODES",
    "StrongLabelCollator",
    "StrongLabelExample",
    "compute_frame_metrics",
    "frame_f1",
    "frame_targets",
    "read_strong_label_dir",
    "read_strong_labels",
    "strong_label_inputs",
]
