"""Tags and timed events for audio files of any length: the logic behind `htsat-hf predict`.

Files are read by `audio.read_audio` (soundfile, or FFmpeg for formats it cannot read), downmixed to mono and
resampled to the model's rate. `sliding_window_scores` then runs the model over windows of its clip length:

- clip tags: a file of at most the model's clip length (10 s) is scored in one pass as the model was trained and as
  `pipeline("audio-classification")` scores it (padded to the clip length by the extractor's `pad_mode`); a longer
  file by averaging over the windows. Multi-label models (`problem_type="multi_label_classification"`) give each
  class the sigmoid of the clip logits, single-label models the softmax (the scores of a file then sum to 1);
- events: the per-step sigmoid frame probabilities, optionally median filtered, thresholded (thresholds from
  `sed.postprocessing.resolve_thresholds`), and runs of active steps joined into `(onset, offset, label, score)`
  (score = the peak probability inside the event).
"""

import csv
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike

import numpy as np
import torch

from .audio import read_audio
from .errors import InputError, error_line
from .feature_extraction_htsat import HTSATFeatureExtractor
from .loading import load_feature_extractor, load_model
from .modeling_htsat import HTSATForSoundEventDetection
from .sed.postprocessing import (
    ClassMap,
    Event,
    frame_scores_events,
    load_class_map,
    map_frame_scores,
    map_scores,
    resolve_thresholds,
)
from .sed.windows import check_detection_duration, sliding_window_scores

FORMATS = ("table", "json", "tsv")
TSV_COLUMNS = ("filename", "onset", "offset", "event_label", "score", "kind")
def load_predictor(
    model_name_or_path: str | PathLike, device: str = "cpu", dtype: str | torch.dtype | None = None
) -> tuple[HTSATForSoundEventDetection, HTSATFeatureExtractor]:
    """The detection model (any saved HTS-AT head loads into it) in eval mode on `device`, in `dtype` (`"float32"`,
    `"bfloat16"`, `"float16"` or a torch dtype; default: as saved), and its feature extractor (built from the config
    when the folder has none), checked against each other. Features stay float32; the model casts them to its dtype.

    Raises:
        InputError: see [`load_model`] and [`load_feature_extractor`]; a device torch cannot use, an unknown dtype.
    """
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise InputError(f"device {device!r}: not a torch device ({error_line(error)})") from None
    model = load_model(HTSATForSoundEventDetection, model_name_or_path, dtype)
    try:
        model = model.to(device).eval()
    except (RuntimeError, AssertionError) as error:  # torch reports an absent backend with either
        raise InputError(f"device {str(device)!r}: cannot be used here ({error_line(error)})") from None
    return model, load_feature_extractor(model_name_or_path, model.config)


# --------------------------------------------------------------------------------------------------------------------
# Predicting
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class FilePrediction:
    """What `predict_file` found in one file.

    Attributes:
        path: the file as given.
        duration: seconds of audio.
        sampling_rate: the file's own rate (None when ffmpeg decoded it straight to the model's rate).
        tags: `(label, score)` pairs, best first (at most `top_k`).
        events: detected events sorted by onset.
    """

    path: str
    duration: float
    sampling_rate: int | None
    tags: list[tuple[str, float]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "file": self.path,
            "duration": round(self.duration, 6),
            "sampling_rate": self.sampling_rate,
            "tags": [{"label": label, "score": round(float(score), 6)} for label, score in self.tags],
            "events": [
                {
                    "onset": round(float(e.onset), 6),
                    "offset": round(float(e.offset), 6),
                    "label": e.label,
                    "score": None if e.score is None else round(float(e.score), 6),
                }
                for e in self.events
            ],
        }


class _ClipLogitRecorder:
    """Stands in for the model inside `sliding_window_scores` and keeps each window's clip logits: that function
    returns only sigmoid clip scores, which are the wrong scores for a single-label (softmax) model."""

    def __init__(self, model):
        self.model = model
        self.clip_logits: list[torch.Tensor] = []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        output = self.model(*args, **kwargs)
        self.clip_logits.append(output.clip_logits.float().cpu())
        return output


def resolve_class_map(class_map: str | PathLike | ClassMap | None, num_classes: int) -> ClassMap | None:
    """A `ClassMap` from a packaged name (`"desed"`), a JSON file, or one given as is.

    Raises:
        InputError: an unknown name, an unreadable or malformed file, or a map for another number of classes.
    """
    if class_map is None:
        return None
    if isinstance(class_map, ClassMap):
        if class_map.num_source_classes != num_classes:
            raise InputError(
                f"the class map maps a model with {class_map.num_source_classes} classes, but the model has "
                f"{num_classes} classes"
            )
        return class_map
    return load_class_map(class_map, num_classes=num_classes)


def check_eval_mode(model) -> None:
    """Refuse a model in training mode, whose dropout and drop path would make every prediction random (a tester's
    `predict_files` on a `.train()` model gave other tags on each call).

    Raises:
        InputError: `model.training` is set.
    """
    if model.training:
        raise InputError(
            "the model is in training mode, where dropout and drop path make predictions random; call model.eval() "
            "first (from_pretrained and load_predictor return it in eval mode)"
        )


def check_options(
    model: HTSATForSoundEventDetection,
    top_k: int = 5,
    threshold: float | Mapping[str, float] | str | PathLike | None = None,
    class_map: str | PathLike | ClassMap | None = None,
    median_filter_seconds: float | None = None,
    batch_size: int = 8,
) -> tuple[ClassMap | None, float | np.ndarray]:
    """Check [`predict_waveform`]'s options before any audio is read.

    Returns:
        `(class map, event thresholds)`: the class map read (see [`resolve_class_map`]), and `resolve_thresholds`
        on the labels events are reported in.

    Raises:
        InputError: a model in training mode (see [`check_eval_mode`]); naming the option: `top_k` or `batch_size` not
            a whole number (>= 0, >= 1), a negative or non-finite `median_filter_seconds`, a class map for another
            number of classes, or a threshold `resolve_thresholds` refuses.
    """
    check_eval_mode(model)
    for name, value, smallest in (("top_k", top_k, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < smallest:
            raise InputError(f"{name} must be a whole number >= {smallest}, got {value!r}")
    seconds = median_filter_seconds
    if seconds is not None and (
        isinstance(seconds, bool) or not isinstance(seconds, (int, float, np.number)) or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise InputError(f"median_filter_seconds must be a number of seconds >= 0, got {seconds!r}")
    config = model.config
    class_map = resolve_class_map(class_map, config.num_labels)
    labels = class_map.labels if class_map is not None else [config.id2label[i] for i in range(config.num_labels)]
    return class_map, resolve_thresholds(labels, threshold, class_map)


@torch.no_grad()
def predict_waveform(
    model: HTSATForSoundEventDetection,
    feature_extractor: HTSATFeatureExtractor,
    waveform: np.ndarray,
    top_k: int = 5,
    threshold: float | Mapping[str, float] | str | PathLike | None = None,
    class_map: str | PathLike | ClassMap | None = None,
    median_filter_seconds: float | None = None,
    batch_size: int = 8,
) -> tuple[list[tuple[str, float]], list[Event]]:
    """Top tags and events of mono audio of any length at the extractor's rate.

    Args:
        waveform: `(samples,)` float audio, at least 0.1 s.
        top_k: number of tags to return.
        threshold: event threshold: one for every class, a `{label: threshold}` mapping or a thresholds file;
            None means the class map's thresholds when it has them, else 0.5 (see `resolve_thresholds`).
        class_map: maps the model's classes to target classes (max over members) for tags and events: a
            `ClassMap`, a packaged map's name (`"desed"`) or a class-map JSON file.
        median_filter_seconds: median filter over the frame probabilities before thresholding.
        batch_size: windows per forward pass.

    Returns:
        `([(label, score)] best first, [Event] by onset)`.

    Raises:
        InputError: an option [`check_options`] refuses, a feature extractor that does not fit the model
            (`check_matches_config`), or audio that is too short, not mono or not finite.
    """
    class_map, thresholds = check_options(model, top_k, threshold, class_map, median_filter_seconds, batch_size)
    recorder = _ClipLogitRecorder(model)
    frame_scores = sliding_window_scores(
        recorder, feature_extractor, waveform, feature_extractor.sampling_rate, batch_size=batch_size
    )
    single_label = model.config.problem_type == "single_label_classification"
    if waveform.shape[0] <= feature_extractor.max_length_samples:
        # A clip the model reads whole is tagged as the model was trained, and as pipeline("audio-classification")
        # and the extractor's defaults tag it: padded to `max_length_seconds` by `pad_mode`. The detection windows
        # stretch a short clip over the model's steps instead, which gives other clip scores.
        features = feature_extractor(
            waveform, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt", device=model.device
        )["input_features"]  # float32: the model casts them (see HTSATModel.forward)
        logits = model(features).clip_logits.float().cpu()[0]
        clip = (logits.softmax(dim=-1) if single_label else logits.sigmoid()).numpy()
    elif single_label:
        clip = torch.cat(recorder.clip_logits).softmax(dim=-1).mean(dim=0).numpy()
    else:
        clip = frame_scores.clip_scores["mean"]
    if class_map is not None:
        frame_scores = map_frame_scores(frame_scores, class_map)
        clip = map_scores(clip, class_map)
    order = np.argsort(-clip, kind="stable")[:top_k]
    tags = [(frame_scores.labels[i], float(clip[i])) for i in order]
    return tags, frame_scores_events(frame_scores, thresholds, median_filter_seconds)


def predict_file(
    model: HTSATForSoundEventDetection,
    feature_extractor: HTSATFeatureExtractor,
    path: str | PathLike,
    top_k: int = 5,
    threshold: float | Mapping[str, float] | str | PathLike | None = None,
    class_map: str | PathLike | ClassMap | None = None,
    median_filter_seconds: float | None = None,
    batch_size: int = 8,
) -> FilePrediction:
    """[`predict_waveform`] on a decoded file (see there for the options).

    Raises:
        InputError: an option [`check_options`] refuses or a feature extractor that does not fit the model
            (`check_matches_config`), both checked before the file is read and not naming it; a file that is
            missing, cannot be decoded or is too short, naming the file.
    """
    class_map, _ = check_options(model, top_k, threshold, class_map, median_filter_seconds, batch_size)
    feature_extractor.check_matches_config(model.config)
    options = dict(top_k=top_k, threshold=threshold, class_map=class_map,
                   median_filter_seconds=median_filter_seconds, batch_size=batch_size)
    waveform, source_rate = read_audio(path, feature_extractor.sampling_rate)
    check_detection_duration(waveform.shape[0] / feature_extractor.sampling_rate, str(path))
    tags, events = predict_waveform(model, feature_extractor, waveform, **options)
    return FilePrediction(
        path=str(path),
        duration=waveform.shape[0] / feature_extractor.sampling_rate,
        sampling_rate=source_rate,
        tags=tags,
        events=events,
    )


def tsv_rows(prediction: FilePrediction) -> list[list[str]]:
    """One file's rows under `TSV_COLUMNS`: a `tag` row per tag (spanning the whole file), then an `event` row per
    event (the DCASE layout `filename onset offset event_label`, times in seconds to the millisecond)."""
    p = prediction
    rows = [[p.path, "0.000", f"{p.duration:.3f}", label, f"{score:.6f}", "tag"] for label, score in p.tags]
    for e in p.events:
        score = "" if e.score is None else f"{e.score:.6f}"
        rows.append([p.path, f"{e.onset:.3f}", f"{e.offset:.3f}", e.label, score, "event"])
    return rows


def format_predictions(predictions: list[FilePrediction], fmt: str = "table") -> str:
    """Render predictions: `"table"` for reading, `"json"` (one array of `FilePrediction.to_dict()`), or `"tsv"`
    (columns `TSV_COLUMNS`; `kind` is `tag` for a clip tag, spanning the whole file, or `event`; the event rows
    are in the DCASE layout `filename, onset, offset, event_label`).

    Raises:
        InputError: a format not in `FORMATS`.
    """
    if fmt == "json":
        return json.dumps([p.to_dict() for p in predictions], indent=2)
    if fmt == "tsv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
        writer.writerow(TSV_COLUMNS)
        for p in predictions:
            writer.writerows(tsv_rows(p))
        return buffer.getvalue().rstrip("\n")
    if fmt != "table":
        raise InputError(f"format must be one of {FORMATS}, got {fmt!r}")
    blocks = []
    for p in predictions:
        lines = [f"{p.path}  ({p.duration:.2f} s)", "  tags:"]
        lines += [f"    {score:6.3f}  {label}" for label, score in p.tags]
        if p.events:
            lines.append("  events:")
            lines.append(f"    {'onset':>8}  {'offset':>8}  {'score':>6}  label")
            for e in p.events:
                score = "" if e.score is None else f"{e.score:6.3f}"
                lines.append(f"    {e.onset:8.3f}  {e.offset:8.3f}  {score:>6}  {e.label}")
        else:
            lines.append("  events: none above the threshold")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


__all__ = [
    "FilePrediction",
    "check_eval_mode",
    "check_options",
    "format_predictions",
    "load_predictor",
    "predict_file",
    "predict_waveform",
    "resolve_class_map",
    "tsv_rows",
]
