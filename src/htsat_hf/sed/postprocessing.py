"""Post-processing of HTS-AT frame scores into sound events.

The chain for sound event detection is: frame probabilities `(frames, classes)` on the model's time grid
(`frame_times`, or a [`FrameScores`]' own boundaries), optionally mapped to a target class set (`map_scores`,
`map_frame_scores`, e.g. AudioSet -> DESED with `load_class_map("desed")`), median filtered along time
(`median_filter_scores`), thresholded (`binarize`, with the thresholds of `resolve_thresholds`), and runs of active
frames joined into events (`activity_to_events`; `scores_to_events` thresholds and joins). `detect_events` (arrays of
one clip) and `frame_scores_events` (a `FrameScores` of any length) chain the last three steps.

HTS-AT's frame output has 32 steps per clip, whatever the clip length: the model stretches every spectrogram of at
most 1024 frames to 1024 frames, so the 32 steps evenly cover the input it was given (312.5 ms each for a 10 s
input, 125 ms for a 4 s input given with `padding="longest"`).

The functions on arrays are numpy/scipy; problems with what a user gave (a class map, thresholds) are
[`InputError`]s naming the file or option.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from ..errors import InputError
from .io import read_text_file, read_thresholds
from .windows import FrameScores

__all__ = [
    "DEFAULT_THRESHOLD",
    "SHORT_AUDIO_MODES",
    "ClassMap",
    "DetectionSettings",
    "Event",
    "activity_to_events",
    "binarize",
    "detect_events",
    "frame_scores_events",
    "frame_times",
    "load_class_map",
    "map_frame_scores",
    "map_scores",
    "median_filter_frame_scores",
    "median_filter_kernel_frames",
    "median_filter_scores",
    "resolve_thresholds",
    "scores_to_events",
    "threshold_vector",
]

DEFAULT_THRESHOLD = 0.5
# How audio shorter than a window is scored: stretched over the model's steps, or zero padded to a full window.
SHORT_AUDIO_MODES = ("stretch", "pad")

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


def scores_to_events(
    scores: np.ndarray,
    frame_times: np.ndarray,
    labels: Sequence[str],
    thresholds: float | Sequence[float] | np.ndarray,
    min_duration: float = 0.0,
    min_gap: float = 0.0,
) -> list[Event]:
    """Events from (already median-filtered) scores: `binarize`, then `activity_to_events` scored with `scores`.

    Args:
        scores: `(frames, classes)` scores.
        frame_times: `(frames + 1,)` frame boundaries in seconds.
        labels, min_duration, min_gap: see `activity_to_events`.
        thresholds: scalar or `(classes,)` thresholds (see `resolve_thresholds`).
    """
    return activity_to_events(
        binarize(scores, thresholds), frame_times, labels, scores=scores, min_duration=min_duration, min_gap=min_gap
    )


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
    return scores_to_events(filtered, times, labels, thresholds, min_duration, min_gap)


def frame_scores_events(
    frame_scores: FrameScores,
    thresholds: float | Sequence[float] | np.ndarray,
    median_filter_seconds: float | None = None,
    min_duration: float = 0.0,
    min_gap: float = 0.0,
) -> list[Event]:
    """Events of a [`FrameScores`] (audio of any length, its steps at their true times): median filter over time,
    `binarize` with scalar or per-class thresholds (see `resolve_thresholds`), runs of active steps joined.

    Returns:
        `Event(onset, offset, label, score)` list as `activity_to_events`, onsets and offsets in seconds from the
        start of the audio, scored with the filtered scores.
    """
    filtered = median_filter_frame_scores(frame_scores, median_filter_seconds)
    return scores_to_events(filtered.scores, filtered.boundaries, filtered.labels, thresholds, min_duration, min_gap)


def median_filter_frame_scores(frame_scores: FrameScores, filter_seconds: float | None) -> FrameScores:
    """A [`FrameScores`] with its step scores median filtered over `filter_seconds` (see `median_filter_scores`;
    the filter counts steps of `step_seconds`, the last step being clipped to the audio's end)."""
    return replace(
        frame_scores, scores=median_filter_scores(frame_scores.scores, frame_scores.step_seconds, filter_seconds)
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


def map_frame_scores(frame_scores: FrameScores, class_map: Mapping[str, Sequence[int]] | ClassMap) -> FrameScores:
    """A [`FrameScores`] of a class map's target classes: step and clip scores as the maximum over each target's
    member classes (`map_scores`), on the same time axis."""
    labels = class_map.labels if isinstance(class_map, ClassMap) else list(class_map)
    return replace(
        frame_scores,
        scores=map_scores(frame_scores.scores, class_map),
        labels=labels,
        clip_scores={name: map_scores(values, class_map) for name, values in frame_scores.clip_scores.items()},
    )


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
        InputError: unknown name, an unreadable file, a file in another format, duplicate labels, indices out of
            range, naming the file and entry.
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
            raise InputError(
                f"{name!r} is neither a packaged class map ({', '.join(sorted(_PACKAGED_CLASS_MAPS))}) nor a file"
            )
        source = str(path)
        text = read_text_file(path, "class map")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{source}: not JSON ({error})") from None
    return _parse_class_map(document, source, num_classes)


def _parse_class_map(document, source: str, num_classes: int | None) -> ClassMap:
    expected = (
        'expected {"num_source_classes": N, "classes": [{"label": str, "indices": [int, ...], '
        '"threshold": float (optional)}, ...]}'
    )
    if not isinstance(document, dict) or "classes" not in document or "num_source_classes" not in document:
        raise InputError(f"{source}: unknown class map format, {expected}")
    unknown_keys = set(document) - {"classes", "num_source_classes", "description"}
    if unknown_keys:
        raise InputError(f"{source}: unknown keys {sorted(unknown_keys)}, {expected}")
    num_source = document["num_source_classes"]
    if not isinstance(num_source, int) or isinstance(num_source, bool) or num_source < 1:
        raise InputError(f"{source}: num_source_classes must be a positive integer, got {num_source!r}")
    if num_classes is not None and num_classes != num_source:
        raise InputError(f"{source} maps a model with {num_source} classes, but the model has {num_classes} classes")
    entries = document["classes"]
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{source}: 'classes' must be a non-empty list, {expected}")
    classes: dict[str, list[int]] = {}
    thresholds: dict[str, float] = {}
    for position, entry in enumerate(entries):
        where = f"{source}, classes[{position}]"
        if not isinstance(entry, dict) or not {"label", "indices"} <= set(entry) <= {"label", "indices", "threshold"}:
            raise InputError(f"{where}: unknown entry format {entry!r}, {expected}")
        label, indices = entry["label"], entry["indices"]
        if not isinstance(label, str) or not label:
            raise InputError(f"{where}: label must be a non-empty string, got {label!r}")
        if label in classes:
            raise InputError(f"{where}: duplicate label {label!r}")
        if (
            not isinstance(indices, list)
            or not indices
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices)
        ):
            raise InputError(f"{where} ({label}): indices must be a non-empty list of integers, got {indices!r}")
        bad = [i for i in indices if not 0 <= i < num_source]
        if bad:
            raise InputError(f"{where} ({label}): indices {bad} are out of range for a model with {num_source} classes")
        classes[label] = list(indices)
        if "threshold" in entry:
            threshold = entry["threshold"]
            if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not np.isfinite(threshold):
                raise InputError(f"{where} ({label}): threshold must be a finite number, got {threshold!r}")
            thresholds[label] = float(threshold)
    if thresholds and len(thresholds) != len(classes):
        missing = [label for label in classes if label not in thresholds]
        raise InputError(f"{source}: thresholds must be given for all classes or none; missing for {missing}")
    return ClassMap(
        classes=classes,
        num_source_classes=num_source,
        thresholds=thresholds or None,
        description=str(document.get("description", "")),
    )


def threshold_vector(thresholds: Mapping[str, float], labels: Sequence[str]) -> np.ndarray:
    """`(len(labels),)` float64 thresholds in the order of `labels`, for `binarize`.

    Raises:
        InputError: a label without a threshold, or a threshold for a label that is not a class.
    """
    missing = [label for label in labels if label not in thresholds]
    unknown = [label for label in thresholds if label not in set(labels)]
    if missing or unknown:
        raise InputError(
            f"thresholds do not match the classes: missing for {missing}, unknown labels {unknown} "
            f"(classes: {list(labels)})"
        )
    return np.array([thresholds[label] for label in labels], dtype=np.float64)


def resolve_thresholds(
    labels: Sequence[str],
    threshold: float | Mapping[str, float] | str | Path | None = None,
    class_map: ClassMap | None = None,
) -> float | np.ndarray:
    """The detection thresholds every entry point applies (the pipeline, `htsat-hf predict`, `run_sed.py`).

    Args:
        labels: the classes the thresholds apply to (the class map's targets when one is used).
        threshold: one threshold for every class, a `{label: threshold}` mapping, or a thresholds file (see
            `io.read_thresholds`); None means the class map's own thresholds when it carries some, else
            `DEFAULT_THRESHOLD` (0.5).
        class_map: the class map in use, if any.

    Returns:
        A float, or `(len(labels),)` float64 thresholds in label order.

    Raises:
        InputError: a threshold that is not a number in [0, 1], a mapping or file that does not name exactly the
            classes, or an unreadable file (naming it).
    """
    if threshold is None:
        if class_map is not None and class_map.thresholds:
            return class_map.threshold_vector()
        return DEFAULT_THRESHOLD
    if isinstance(threshold, (str, Path)):
        try:
            return threshold_vector(read_thresholds(threshold), labels)
        except InputError as error:
            message = str(error)
            raise InputError(message if message.startswith(str(threshold)) else f"{threshold}: {message}") from None
    if isinstance(threshold, Mapping):
        return _probability_thresholds(threshold_vector(threshold, labels), labels, "threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) or not np.isfinite(threshold):
        raise InputError(
            f"a threshold must be a finite number, a {{label: threshold}} dict or a file, got {threshold!r}"
        )
    return _probability_thresholds(float(threshold), labels, "threshold")


def _probability_thresholds(thresholds, labels: Sequence[str], source: str):
    """`thresholds` unchanged when every value lies in [0, 1]: they are compared with probabilities, so a value
    outside would silently detect everything or nothing."""
    values = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    bad = [(labels[i] if values.size > 1 else None, v) for i, v in enumerate(values) if not 0.0 <= v <= 1.0]
    if bad:
        label, value = bad[0]
        where = f" of {label!r}" if label is not None else ""
        raise InputError(f"{source}: the threshold{where} must be a probability between 0 and 1, got {value:g}")
    return thresholds


@dataclass
class DetectionSettings:
    """Post-processing and windowing of a detection run, resolved against the model.

    Attributes:
        labels: the classes of the events (the class map's targets when one is used).
        thresholds: one threshold, or `(len(labels),)` per-class thresholds.
        class_map: the map from the model's classes to `labels`, if any.
        median_filter_seconds, min_duration, min_gap: post-processing in seconds (see `postprocessing`).
        window_seconds, hop_seconds, batch_size: the sliding window (see `windows.sliding_window_scores`).
        short_audio: audio shorter than a window is `"stretch"`ed over the model's steps or zero-`"pad"`ded.
    """

    labels: list[str]
    thresholds: float | np.ndarray
    class_map: ClassMap | None = None
    median_filter_seconds: float | None = None
    min_duration: float = 0.0
    min_gap: float = 0.0
    window_seconds: float | None = None
    hop_seconds: float | None = None
    batch_size: int = 8
    short_audio: str = "stretch"

    def describe(self) -> dict:
        """The settings as JSON values (`metrics.json`'s `settings`): thresholds by label, the class map's labels."""
        thresholds = self.thresholds
        if isinstance(thresholds, np.ndarray):
            thresholds = dict(zip(self.labels, thresholds.tolist(), strict=True))
        values = asdict(self)
        values.update(thresholds=thresholds, class_map=None if self.class_map is None else self.class_map.labels)
        values.pop("labels")
        return values
