"""Tags and timed events for audio files of any length: the logic behind `htsat-hf predict`.

Files are read by `audio_io.read_audio` (soundfile, or FFmpeg for formats it cannot read), downmixed to mono and
resampled to the model's rate. `sliding_window_scores` then runs the model over windows of its clip length:

- clip tags: multi-label models (`problem_type="multi_label_classification"`) score each class with the sigmoid of
  each window's clip logits, averaged over the windows; single-label models with the softmax of each window's clip
  logits, averaged over the windows (the scores of a file then sum to 1);
- events: the per-step sigmoid frame probabilities, optionally median filtered, thresholded, and runs of active
  steps joined into `(onset, offset, label, score)` (score = the peak probability inside the event).
"""

import csv
import io
import json
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from .audio_io import AudioReadError, read_audio
from .feature_extraction_htsat import HTSATFeatureExtractor
from .modeling_htsat import HTSATForSoundEventDetection
from .sed_inference import sliding_window_scores
from .sed_postprocessing import ClassMap, Event, load_class_map, map_scores

FORMATS = ("table", "json", "tsv")
TSV_COLUMNS = ("filename", "onset", "offset", "event_label", "score", "kind")
DEFAULT_THRESHOLD = 0.5


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


def load_predictor(
    model_name_or_path: str | PathLike, device: str = "cpu"
) -> tuple[HTSATForSoundEventDetection, HTSATFeatureExtractor]:
    """The detection model (any saved HTS-AT head loads into it) in eval mode on `device`, and its feature
    extractor (built from the config when the folder has none)."""
    model = HTSATForSoundEventDetection.from_pretrained(model_name_or_path).to(device).eval()
    try:
        extractor = HTSATFeatureExtractor.from_pretrained(model_name_or_path)
    except OSError:
        extractor = HTSATFeatureExtractor.from_config(model.config)
    return model, extractor


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
    """A `ClassMap` from a packaged name (`"desed"`), a JSON file, or one given as is."""
    if class_map is None or isinstance(class_map, ClassMap):
        return class_map
    return load_class_map(class_map, num_classes=num_classes)


@torch.no_grad()
def predict_waveform(
    model: HTSATForSoundEventDetection,
    feature_extractor: HTSATFeatureExtractor,
    waveform: np.ndarray,
    top_k: int = 5,
    threshold: float | None = None,
    class_map: ClassMap | None = None,
    median_filter_seconds: float | None = None,
    batch_size: int = 8,
) -> tuple[list[tuple[str, float]], list[Event]]:
    """Top tags and events of mono audio of any length at the extractor's rate.

    Args:
        waveform: `(samples,)` float audio, at least 0.1 s.
        top_k: number of tags to return.
        threshold: event threshold for every class; None means the class map's thresholds when it has them,
            else 0.5.
        class_map: maps the model's classes to target classes (max over members) for tags and events.
        median_filter_seconds: median filter over the frame probabilities before thresholding.
        batch_size: windows per forward pass.

    Returns:
        `([(label, score)] best first, [Event] by onset)`.
    """
    recorder = _ClipLogitRecorder(model)
    frame_scores = sliding_window_scores(
        recorder, feature_extractor, waveform, feature_extractor.sampling_rate, batch_size=batch_size
    )
    if model.config.problem_type == "single_label_classification":
        clip = torch.cat(recorder.clip_logits).softmax(dim=-1).mean(dim=0).numpy()
    else:
        clip = frame_scores.clip_scores["mean"]
    labels = frame_scores.labels
    if class_map is not None:
        frame_scores = frame_scores.mapped(class_map)
        clip = map_scores(clip, class_map)
        labels = class_map.labels
    order = np.argsort(-clip, kind="stable")[: max(0, top_k)]
    tags = [(labels[i], float(clip[i])) for i in order]

    if threshold is not None:
        thresholds = float(threshold)
    elif class_map is not None and class_map.thresholds:
        thresholds = class_map.threshold_vector()
    else:
        thresholds = DEFAULT_THRESHOLD
    events = frame_scores.events(thresholds, median_filter_seconds)
    return tags, events


def predict_file(
    model: HTSATForSoundEventDetection,
    feature_extractor: HTSATFeatureExtractor,
    path: str | PathLike,
    **kwargs,
) -> FilePrediction:
    """[`predict_waveform`] on a decoded file; `kwargs` are its options.

    Raises:
        AudioReadError: for files that cannot be decoded or are too short, naming the file.
    """
    waveform, source_rate = read_audio(path, feature_extractor.sampling_rate)
    try:
        tags, events = predict_waveform(model, feature_extractor, waveform, **kwargs)
    except ValueError as error:
        # Audio-dependent refusals (too short, ...) name the file, like decoding errors.
        raise AudioReadError(f"{path}: {error}") from None
    return FilePrediction(
        path=str(path),
        duration=waveform.shape[0] / feature_extractor.sampling_rate,
        sampling_rate=source_rate,
        tags=tags,
        events=events,
    )


def format_predictions(predictions: list[FilePrediction], fmt: str = "table") -> str:
    """Render predictions: `"table"` for reading, `"json"` (one array of `FilePrediction.to_dict()`), or `"tsv"`
    (columns `TSV_COLUMNS`; `kind` is `tag` for a clip tag, spanning the whole file, or `event`; the event rows
    are in the DCASE layout `filename, onset, offset, event_label`)."""
    if fmt == "json":
        return json.dumps([p.to_dict() for p in predictions], indent=2)
    if fmt == "tsv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
        writer.writerow(TSV_COLUMNS)
        for p in predictions:
            for label, score in p.tags:
                writer.writerow([p.path, "0.000", f"{p.duration:.3f}", label, f"{score:.6f}", "tag"])
            for e in p.events:
                score = "" if e.score is None else f"{e.score:.6f}"
                writer.writerow([p.path, f"{e.onset:.3f}", f"{e.offset:.3f}", e.label, score, "event"])
        return buffer.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
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
    "AudioReadError",
    "FilePrediction",
    "format_predictions",
    "load_predictor",
    "predict_file",
    "predict_waveform",
    "resolve_class_map",
]
