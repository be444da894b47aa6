"""Post-processing of HTS-AT frame scores into sound events.

The chain for sound event detection is: frame probabilities `(frames, classes)` on the model's time grid
(`frame_times`), optionally mapped to a target class set (`map_scores`, e.g. AudioSet -> DESED with
`load_class_map("desed")`), median filtered along time (`median_filter_scores`), thresholded (`binarize`), and
runs of active frames joined into events (`activity_to_events`). `detect_events` chains the last four steps.

HTS-AT's frame output has 32 steps per clip, whatever the clip length: the model stretches every spectrogram of at
most 1024 frames to 1024 frames, so the 32 steps evenly cover the input it was given (312.5 ms each for a 10 s
input, 125 ms for a 4 s input given with `padding="longest"`).

Everything here is numpy/scipy on arrays; nothing depends on torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage

__all__ = [
    "ClassMap",
    "Event",
    "activity_to_events",
    "binarize",
    "detect_events",
    "frame_times",
    "load_class_map",
    "map_scores",
    "median_filter_kernel_frames",
    "median_filter_scores",
    "read_thresholds",
    "threshold_vector",
]

# Class maps shipped with the package, by the name `load_class_map` accepts.
_PACKAGED_CLASS_MAPS = {"desed": "desed_class_map.json"}


class Event(NamedTuple):
    """One detected event: times in seconds from the start of the clip, `offset` exclusive."""

    onset: float
    offset: float
    label: str
    score: float | None


def frame_times(num_steps: int, duration: float) -> np.ndarray:
    """Boundaries of the model's time steps for an input of `duration` seconds.

    Args:
        num_steps: number of time steps of the frame output (32 for HTS-AT, `config.num_time_steps`).
        duration: length in seconds of the input the model saw, i.e. after the feature extractor's padding: 10 s
            with the default `padding="max_length"`, the clip's own length with `padding="longest"`.

    Returns:
        `(num_steps + 1,)` float64 array: step `i` spans `[times[i], times[i + 1])`; `times[0] == 0` and
        `times[-1] == duration`. This is also the `timestamps` layout of sed_scores_eval.
    """
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if not np.isfinite(duration) or duration <= 0:
        raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
    return np.linspace(0.0, float(duration), int(num_steps) + 1)


def median_filter_kernel_frames(frame_hop_seconds: float, filter_seconds: float | None) -> int:
    """Median filter length in frames: the odd number nearest to `filter_seconds / frame_hop_seconds` (ties go
    up); 1 (no filtering) for `filter_seconds` of 0 or None."""
    if not np.isfinite(frame_hop_seconds) or frame_hop_seconds <= 0:
        raise ValueError(f"frame_hop_seconds must be positive, got {frame_hop_seconds!r}")
    if not filter_seconds:
        return 1
    if not np.isfinite(filter_seconds) or filter_seconds < 0:
        raise ValueError(f"filter_seconds must be a non-negative number of seconds, got {filter_seconds!r}")
    # Odd numbers are 2m + 1; the nearest one to x has m = round((x - 1) / 2) = floor(x / 2), rounding half up.
    return 2 * int(np.floor(filter_seconds / frame_hop_seconds / 2)) + 1


def median_filter_scores(scores: np.ndarray, frame_hop_seconds: float, filter_seconds: float | None) -> np.ndarray:
    """Median filter each class's scores along time.

    Args:
        scores: `(frames, classes)` scores.
        frame_hop_seconds: time between consecutive frames (`duration / num_steps` for the model's grid).
        filter_seconds: filter length in seconds, turned into frames by `median_filter_kernel_frames`; 0 or None
            returns the scores unchanged (the original HTS-AT DESED protocol uses no filter; DCASE baselines about
            0.45 s, which is a single 312.5 ms step of a 10 s input, i.e. no filtering either).

    Returns:
        `(frames, classes)` filtered scores (a new array). Edges are handled by `scipy.ndimage.median_filter`'s
        default `mode="reflect"` (as the DCASE baselines do), not by zero padding as `scipy.signal.medfilt`.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (frames, classes), got shape {scores.shape}")
    size = median_filter_kernel_frames(frame_hop_seconds, filter_seconds)
    if size == 1:
        return scores.copy()
    return ndimage.median_filter(scores, size=(size, 1))


def binarize(scores: np.ndarray, thresholds: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """Frame activity: `scores > thresholds`.

    Strictly greater, as the original HTS-AT DESED protocol ("exceeds the threshold") and sed_scores_eval's
    `scores_to_event_list`; a score exactly at the threshold is inactive.

    Args:
        scores: `(..., classes)` scores, typically `(frames, classes)`.
        thresholds: one threshold for all classes, or `(classes,)` per-class thresholds in the column order of
            `scores` (see `threshold_vector` for a `{label: threshold}` mapping).

    Returns:
        boolean array of the shape of `scores`.
    """
    scores = np.asarray(scores)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim > 1 or (thresholds.ndim == 1 and thresholds.shape[0] != scores.shape[-1]):
        raise ValueError(
            f"thresholds must be a scalar or one per class ({scores.shape[-1]} classes for scores of shape "
            f"{scores.shape}), got shape {thresholds.shape}"
        )
    if not np.all(np.isfinite(thresholds)):
        raise ValueError(f"thresholds must be finite, got {thresholds}")
    return scores > thresholds


def activity_to_events(
    active: np.ndarray,
    frame_times: np.ndarray,
    labels: Sequence[str],
    scores: np.ndarray | None = None,
    min_duration: float = 0.0,
    min_gap: float = 0.0,
) -> list[Event]:
    """Join runs of active frames into events.

    Runs of the same class separated by less than `min_gap` seconds are merged first, then events shorter than
    `min_duration` seconds are dropped (so a burst of short blips close together survives as one event).

    Args:
        active: `(frames, classes)` boolean activity.
        frame_times: `(frames + 1,)` increasing frame boundaries in seconds (see `frame_times`).
        labels: `classes` labels, in column order.
        scores: optional `(frames, classes)` scores; an event's score is the maximum score over its active frames
            (the peak, so that a ranking by score follows the most confident frame; the gap frames of merged events
            do not count).
        min_duration: events strictly shorter than this are dropped.
        min_gap: runs of one class separated by a gap strictly shorter than this are merged into one event.

    Returns:
        `Event(onset, offset, label, score)` tuples sorted by onset, then by class column; `score` is None
        without `scores`.
    """
    active = np.asarray(active)
    if active.ndim != 2 or active.dtype != np.bool_:
        raise ValueError(f"active must be a (frames, classes) boolean array, got {active.dtype} {active.shape}")
    num_frames, num_classes = active.shape
    times = np.asarray(frame_times, dtype=np.float64)
    if times.shape != (num_frames + 1,):
        raise ValueError(
            f"frame_times must hold the {num_frames + 1} boundaries of {num_frames} frames, got shape {times.shape}"
        )
    if not np.all(np.diff(times) > 0):
        raise ValueError("frame_times must be strictly increasing")
    labels = list(labels)
    if len(labels) != num_classes:
        raise ValueError(f"got {len(labels)} labels for {num_classes} classes")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != active.shape:
            raise ValueError(f"scores must have the shape of active {active.shape}, got {scores.shape}")
    if min_duration < 0 or min_gap < 0:
        raise ValueError(f"min_duration and min_gap must be >= 0, got {min_duration} and {min_gap}")

    # Class-major rows (classes, frames + 2) padded with inactive frames, so that every run has a rising edge at
    # its first frame and a falling edge after its last; nonzero() then lists runs class by class, in time order,
    # and the k-th rising edge pairs with the k-th falling edge.
    padded = np.zeros((num_classes, num_frames + 2), dtype=np.int8)
    padded[:, 1:-1] = active.T
    edges = np.diff(padded, axis=1)
    run_class, run_start = np.nonzero(edges == 1)
    _, run_end = np.nonzero(edges == -1)  # exclusive frame index
    if run_start.size == 0:
        return []

    onsets, offsets = times[run_start], times[run_end]
    run_scores = None
    if scores is not None:
        # Maximum over each run [start, end) of the class-major flattened scores; reduceat reduces between
        # consecutive indices, so interleave starts and ends and keep the even slots. The appended element keeps
        # an end index of the last class's last frame inside the array.
        flat = np.append(scores.T.ravel(), -np.inf)
        base = run_class * num_frames
        bounds = np.stack([base + run_start, base + run_end], axis=1).ravel()
        run_scores = np.maximum.reduceat(flat, bounds)[::2]

    # A run starts a new event unless it follows a run of the same class after a gap shorter than min_gap.
    merge = np.zeros(run_start.size, dtype=bool)
    merge[1:] = (run_class[1:] == run_class[:-1]) & (onsets[1:] - offsets[:-1] < min_gap)
    first = np.flatnonzero(~merge)
    last = np.append(first[1:], run_start.size) - 1
    event_class, event_onset, event_offset = run_class[first], onsets[first], offsets[last]
    event_score = None if run_scores is None else np.maximum.reduceat(run_scores, first)

    keep = event_offset - event_onset >= min_duration
    selected = np.flatnonzero(keep)[np.lexsort((event_class[keep], event_onset[keep]))]
    event_class, event_onset, event_offset = event_class[selected], event_onset[selected], event_offset[selected]
    if event_score is not None:
        event_score = event_score[selected]
    return [
        Event(
            float(event_onset[k]),
            float(event_offset[k]),
            labels[event_class[k]],
            None if event_score is None else float(event_score[k]),
        )
        for k in range(event_class.size)
    ]


def detect_events(
    frame_scores: np.ndarray,
    duration: float,
    labels: Sequence[str],
    thresholds: float | Sequence[float] | np.ndarray,
    filter_seconds: float | None = None,
    min_duration: float = 0.0,
    min_gap: float = 0.0,
) -> list[Event]:
    """Events of one clip from its frame scores on the model's grid: median filter, `binarize`, join runs.

    Args:
        frame_scores: `(num_steps, classes)` probabilities (sigmoid of the frame logits, already mapped to the target
            classes if needed).
        duration: seconds of input the model saw (see `frame_times`).
        labels: `classes` labels.
        thresholds: scalar or `(classes,)` thresholds.
        filter_seconds, min_duration, min_gap: see `median_filter_scores` and `activity_to_events`.

    Returns:
        `Event` list as `activity_to_events`, scored with the filtered scores (those that were thresholded).
    """
    frame_scores = np.asarray(frame_scores)
    if frame_scores.ndim != 2:
        raise ValueError(f"frame_scores must be (num_steps, classes), got shape {frame_scores.shape}")
    times = frame_times(frame_scores.shape[0], duration)
    filtered = median_filter_scores(frame_scores, times[1] - times[0], filter_seconds)
    return activity_to_events(
        binarize(filtered, thresholds), times, labels, scores=filtered, min_duration=min_duration, min_gap=min_gap
    )


@dataclass(frozen=True)
class ClassMap:
    """A many-to-one map from a model's classes to target classes.

    Attributes:
        classes: `{target label: [model class indices]}` in target column order (0-based indices).
        num_source_classes: number of classes of the model the indices refer to (527 for AudioSet).
        thresholds: `{target label: threshold}` when the map carries detection thresholds, else None.
        description: free text from the file.
    """

    classes: dict[str, list[int]]
    num_source_classes: int
    thresholds: dict[str, float] | None = None
    description: str = ""

    @property
    def labels(self) -> list[str]:
        return list(self.classes)

    def threshold_vector(self) -> np.ndarray:
        """`(n_target,)` thresholds in target column order, for `binarize`."""
        if self.thresholds is None:
            raise ValueError("this class map carries no thresholds")
        return threshold_vector(self.thresholds, self.labels)


def map_scores(scores: np.ndarray, class_map: Mapping[str, Sequence[int]] | ClassMap) -> np.ndarray:
    """Scores of target classes as the maximum over their member classes.

    Args:
        scores: `(..., source_classes)` scores, e.g. `(frames, 527)` AudioSet probabilities.
        class_map: `{target label: [source class indices]}` or a `ClassMap`.

    Returns:
        `(..., n_target)` array, columns in the map's order.
    """
    scores = np.asarray(scores)
    classes = class_map.classes if isinstance(class_map, ClassMap) else class_map
    if scores.ndim < 1:
        raise ValueError("scores must have a class axis")
    if not classes:
        raise ValueError("the class map is empty")
    num_source = scores.shape[-1]
    for label, indices in classes.items():
        indices = list(indices)
        if not indices:
            raise ValueError(f"class {label!r} of the class map has no source classes")
        bad = [i for i in indices if not 0 <= i < num_source]
        if bad:
            raise ValueError(
                f"class {label!r} of the class map uses indices {bad} outside the {num_source} classes of the scores"
            )
    return np.stack([scores[..., list(indices)].max(axis=-1) for indices in classes.values()], axis=-1)


def load_class_map(path_or_name: str | Path, num_classes: int | None = None) -> ClassMap:
    """Read a class map: a packaged one by name (`"desed"`: AudioSet -> DESED with HTS-AT's thresholds) or a JSON
    file of the same format::

        {"num_source_classes": 527,
         "description": "optional text",
         "classes": [{"label": "Speech", "indices": [0, 1, 2], "threshold": 0.275}, ...]}

    `threshold` is optional, but given for all classes or none.

    Args:
        path_or_name: packaged map name or path to a JSON file.
        num_classes: the model's class count (`config.num_labels`); when given, it must equal the map's
            `num_source_classes`.

    Raises:
        ValueError: unknown name, a file in another format, duplicate labels, indices out of range.
    """
    name = str(path_or_name)
    if name in _PACKAGED_CLASS_MAPS:
        source = f"packaged class map {name!r}"
        text = (
            resources.files("htsat_hf")
            .joinpath("data")
            .joinpath(_PACKAGED_CLASS_MAPS[name])
            .read_text(encoding="utf-8")
        )
    else:
        path = Path(path_or_name)
        if not path.is_file():
            raise ValueError(
                f"{name!r} is neither a packaged class map ({', '.join(sorted(_PACKAGED_CLASS_MAPS))}) nor a file"
            )
        source = str(path)
        text = path.read_text(encoding="utf-8")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: not JSON ({error})") from None
    return _parse_class_map(document, source, num_classes)


def _parse_class_map(document, source: str, num_classes: int | None) -> ClassMap:
    expected = (
        'expected {"num_source_classes": N, "classes": [{"label": str, "indices": [int, ...], '
        '"threshold": float (optional)}, ...]}'
    )
    if not isinstance(document, dict) or "classes" not in document or "num_source_classes" not in document:
        raise ValueError(f"{source}: unknown class map format, {expected}")
    unknown_keys = set(document) - {"classes", "num_source_classes", "description"}
    if unknown_keys:
        raise ValueError(f"{source}: unknown keys {sorted(unknown_keys)}, {expected}")
    num_source = document["num_source_classes"]
    if not isinstance(num_source, int) or isinstance(num_source, bool) or num_source < 1:
        raise ValueError(f"{source}: num_source_classes must be a positive integer, got {num_source!r}")
    if num_classes is not None and num_classes != num_source:
        raise ValueError(f"{source} maps a model with {num_source} classes, but the model has {num_classes} classes")
    entries = document["classes"]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source}: 'classes' must be a non-empty list, {expected}")
    classes: dict[str, list[int]] = {}
    thresholds: dict[str, float] = {}
    for position, entry in enumerate(entries):
        where = f"{source}, classes[{position}]"
        if not isinstance(entry, dict) or not {"label", "indices"} <= set(entry) <= {"label", "indices", "threshold"}:
            raise ValueError(f"{where}: unknown entry format {entry!r}, {expected}")
        label, indices = entry["label"], entry["indices"]
        if not isinstance(label, str) or not label:
            raise ValueError(f"{where}: label must be a non-empty string, got {label!r}")
        if label in classes:
            raise ValueError(f"{where}: duplicate label {label!r}")
        if (
            not isinstance(indices, list)
            or not indices
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices)
        ):
            raise ValueError(f"{where} ({label}): indices must be a non-empty list of integers, got {indices!r}")
        bad = [i for i in indices if not 0 <= i < num_source]
        if bad:
            raise ValueError(f"{where} ({label}): indices {bad} are out of range for a model with {num_source} classes")
        classes[label] = list(indices)
        if "threshold" in entry:
            threshold = entry["threshold"]
            if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not np.isfinite(threshold):
                raise ValueError(f"{where} ({label}): threshold must be a finite number, got {threshold!r}")
            thresholds[label] = float(threshold)
    if thresholds and len(thresholds) != len(classes):
        missing = [label for label in classes if label not in thresholds]
        raise ValueError(f"{source}: thresholds must be given for all classes or none; missing for {missing}")
    return ClassMap(
        classes=classes,
        num_source_classes=num_source,
        thresholds=thresholds or None,
        description=str(document.get("description", "")),
    )


def read_thresholds(path: str | Path) -> dict[str, float]:
    """Per-class thresholds from a file: JSON `{"label": threshold, ...}` (`.json`) or tab-separated lines
    `label<TAB>threshold` without header (`.tsv`, `.txt`; blank lines are skipped).

    Raises:
        ValueError: unknown extension, malformed content (with file and line), duplicate labels, non-finite values.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    thresholds: dict[str, float] = {}
    if suffix == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not JSON ({error})") from None
        if not isinstance(document, dict) or not document:
            raise ValueError(f'{path}: expected a JSON object {{"label": threshold, ...}}')
        for label, value in document.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
                raise ValueError(f"{path}: threshold of {label!r} must be a finite number, got {value!r}")
            thresholds[label] = float(value)
        return thresholds
    if suffix not in (".tsv", ".txt"):
        raise ValueError(f"{path}: unknown thresholds format {suffix!r}; use .json or .tsv (label<TAB>threshold)")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) != 2 or not fields[0]:
            raise ValueError(f"{path}, line {number}: expected 'label<TAB>threshold', got {line!r}")
        label, value = fields
        try:
            threshold = float(value)
        except ValueError:
            raise ValueError(f"{path}, line {number}: threshold {value!r} of {label!r} is not a number") from None
        if not np.isfinite(threshold):
            raise ValueError(f"{path}, line {number}: threshold of {label!r} must be finite, got {value!r}")
        if label in thresholds:
            raise ValueError(f"{path}, line {number}: duplicate label {label!r}")
        thresholds[label] = threshold
    if not thresholds:
        raise ValueError(f"{path}: no thresholds")
    return thresholds


def threshold_vector(thresholds: Mapping[str, float], labels: Sequence[str]) -> np.ndarray:
    """`(len(labels),)` float64 thresholds in the order of `labels`, for `binarize`; every label needs a threshold
    and every threshold a label."""
    missing = [label for label in labels if label not in thresholds]
    unknown = [label for label in thresholds if label not in set(labels)]
    if missing or unknown:
        raise ValueError(
            f"thresholds do not match the classes: missing for {missing}, unknown labels {unknown} "
            f"(classes: {list(labels)})"
        )
    return np.array([thresholds[label] for label in labels], dtype=np.float64)
