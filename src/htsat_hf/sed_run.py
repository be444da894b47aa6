"""The logic of `run_sed.py`: sound event detection over files, folders, list files or a `datasets` split, scoring
against DCASE-format ground truth, scoring existing detections, and strong-label fine-tuning.

Outputs of a detection run, in the output directory:

- `events.tsv`: the detected events, DCASE format (`filename onset offset event_label`, plus the event's peak
  `score`);
- `scores/<audio id>.tsv`: per-file frame scores in sed_scores_eval's format (`onset offset <class...>`, the audio id
  being the file name without extension), after class mapping and median filtering, i.e. the scores the thresholds
  were applied to; `sed_scores_eval.io.read_sed_scores(".../scores")` reads the directory;
- `durations.tsv`: `filename duration` of every processed file;
- `plots/<audio id>.png`: spectrogram, class activity and event timeline (see `sed_plot`);
- with ground truth: `metrics.json` (and the table on stdout): intersection F1, collar event F1, segment F1 of
  `events.tsv`, PSDS1 and PSDS2 of the scores (see `sed_metrics.evaluate_detection`);
- `skipped_audio.tsv` when `skip_bad_audio` left files out.

Every problem with the inputs is a `SEDRunError` whose message names the file (and line, for tables).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .audio_io import AudioReadError, read_audio
from .audio_io import audio_duration as read_duration
from .sed_inference import MIN_AUDIO_SECONDS, FrameScores, sliding_window_scores
from .sed_postprocessing import ClassMap, Event, load_class_map, median_filter_scores, read_thresholds, threshold_vector

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff", ".wma", ".webm")
SHORT_AUDIO_MODES = ("stretch", "pad")


class SEDRunError(ValueError):
    """A problem with run_sed's inputs or output directory; the message names the file (and line, for tables)."""


# --------------------------------------------------------------------------------------------------------- arguments


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "HTS-AT model directory or Hub id (loaded as HTSATForSoundEventDetection); the start of "
                          "fine-tuning with --do_train."},
    )
    config_name: str | None = field(
        default=None, metadata={"help": "HTSATConfig JSON file to train from scratch (with --do_train)."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Config fields to train from scratch: 'embed_dim=16,depths=[2,2,2,2],num_heads=[1,2,4,8]'."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow remote code for Hub models."})
    device: str | None = field(
        default=None, metadata={"help": "Device for detection, e.g. 'cpu', 'cuda', 'cuda:1' (default: cuda if any)."}
    )


@dataclass
class DetectionArguments:
    inputs: list[str] = field(
        default_factory=list,
        metadata={"help": "Audio files, folders (their audio files, not recursive) or list files (one path per line, "
                          "relative to the list file; '#' starts a comment)."},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "A `datasets` dataset (Hub id or local directory) to detect events in."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration name."})
    split: str = field(default="test", metadata={"help": "Its split."})
    audio_column_name: str = field(default="audio", metadata={"help": "Its audio column."})
    class_map: str | None = field(
        default=None,
        metadata={"help": "Map the model's classes to target classes: 'desed' (AudioSet to DESED, with the paper's "
                          "per-class thresholds) or a class map JSON file."},
    )
    threshold: float | None = field(
        default=None, metadata={"help": "One threshold for every class (default 0.5, or the class map's thresholds)."}
    )
    thresholds_file: str | None = field(
        default=None, metadata={"help": "Per-class thresholds: JSON {label: threshold} or TSV label<TAB>threshold."}
    )
    median_filter_seconds: float | None = field(
        default=None, metadata={"help": "Median filter length in seconds (default none; odd number of steps)."}
    )
    min_duration: float = field(default=0.0, metadata={"help": "Drop events shorter than this (seconds)."})
    min_gap: float = field(default=0.0, metadata={"help": "Join events of a class closer than this (seconds)."})
    window_seconds: float | None = field(
        default=None, metadata={"help": "Sliding window length (default: the model's clip, 10 s)."}
    )
    hop_seconds: float | None = field(
        default=None, metadata={"help": "Distance between windows (default: half a window); overlaps are averaged."}
    )
    batch_size: int = field(default=8, metadata={"help": "Windows per forward pass."})
    short_audio: str = field(
        default="stretch",
        metadata={"help": "Audio shorter than a window: 'stretch' it over the model's 32 steps (the pipeline's "
                          "behaviour) or 'pad' it with zeros to a full window (the original DESED protocol, and how "
                          "training clips are presented).", "choices": list(SHORT_AUDIO_MODES)},
    )
    plot: bool = field(default=True, metadata={"help": "Save a PNG per file (spectrogram, activity, events)."})
    max_plots: int | None = field(default=None, metadata={"help": "Plot at most this many files."})
    plot_top_k: int = field(default=5, metadata={"help": "Classes shown besides those with events."})
    skip_bad_audio: bool = field(
        default=False, metadata={"help": "Skip missing, unreadable, empty or too short audio (counted and logged)."}
    )


@dataclass
class EvaluationArguments:
    ground_truth: str | None = field(
        default=None, metadata={"help": "Ground truth TSV (filename, onset, offset, event_label) to score against."}
    )
    durations: str | None = field(
        default=None,
        metadata={"help": "Durations TSV (filename, duration); default for detection runs: the audio's lengths."},
    )
    threshold_sweep: int = field(
        default=0,
        metadata={"help": "Also compute PSDS from this many operating points (thresholds (k + 0.5) / N), as DCASE "
                          "did before scores-based PSDS; 0: off."},
    )
    score_only: bool = field(
        default=False, metadata={"help": "Score existing detections (--predictions) without running a model."}
    )
    predictions: str | None = field(
        default=None,
        metadata={"help": "With --score_only: an events TSV/CSV, a directory of per-threshold TSVs "
                          "(predictions_th_0.50.tsv) or a directory of sed_scores_eval score TSVs."},
    )
    psds_predictions: str | None = field(
        default=None,
        metadata={"help": "With --score_only: the directory (operating points or scores) to compute PSDS from, when "
                          "--predictions is an events file."},
    )


@dataclass
class StrongLabelArguments:
    train_dir: str | None = field(
        default=None, metadata={"help": "Training folder: audio/ and annotations.tsv (strong labels)."}
    )
    eval_dir: str | None = field(
        default=None, metadata={"help": "Evaluation folder, same layout; scored with the detection metrics after "
                                        "training (into <output_dir>/eval_detection)."}
    )
    target_mode: str = field(
        default="fraction",
        metadata={"help": "Frame targets: 'fraction' of each model step covered by an event, or 'majority' (1 where "
                          ">= half is covered).", "choices": ["fraction", "majority"]},
    )
    spec_augment: bool = field(default=True, metadata={"help": "SpecAugment in training (the config's stripes)."})


# -------------------------------------------------------------------------------------------------------------- audio


def load_audio(path: str | Path, sampling_rate: int, start: float = 0.0, seconds: float | None = None) -> np.ndarray:
    """`audio_io.read_audio`'s waveform, with its errors as `SEDRunError` (what this module's callers handle)."""
    try:
        return read_audio(path, sampling_rate, start, seconds)[0]
    except AudioReadError as error:
        raise SEDRunError(str(error)) from None


def audio_duration(path: str | Path) -> float:
    """`audio_io.audio_duration`, with its errors as `SEDRunError`."""
    try:
        return read_duration(path)
    except AudioReadError as error:
        raise SEDRunError(str(error)) from None


# ------------------------------------------------------------------------------------------------------------- inputs


@dataclass
class AudioItem:
    """One input: `name` is its file name in the output tables (and in the ground truth); the audio comes from
    `path`, or from a `datasets` audio value."""

    name: str
    path: str | None = None
    dataset: object = None
    index: int | None = None
    column: str = "audio"

    @property
    def audio_id(self) -> str:
        return self.name.rsplit(".", maxsplit=1)[0]

    def load(self, sampling_rate: int) -> np.ndarray:
        if self.path is not None:
            return load_audio(self.path, sampling_rate)
        from .training.data import DataError, decode_audio

        try:
            return decode_audio(self.dataset[self.index][self.column], sampling_rate)
        except DataError as error:
            raise SEDRunError(f"{self.name} (row {self.index}): {error}") from None


def collect_inputs(paths: Sequence[str | Path], skip_missing: bool = False) -> list[AudioItem]:
    """Audio files from files, folders (their audio files, sorted, not recursive) and list files (any other file:
    one path per line, relative to the list file, blank lines and '#' comments skipped).

    Raises:
        SEDRunError: a path that does not exist (the list file and line for listed ones, unless `skip_missing`), a
            folder without audio, two inputs with the same file name, no input at all.
    """
    items: list[AudioItem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                raise SEDRunError(f"{path}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder")
            items += [AudioItem(p.name, str(p)) for p in found]
        elif path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS:
            items.append(AudioItem(path.name, str(path)))
        elif path.is_file():
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                listed = Path(line) if Path(line).is_absolute() else path.parent / line
                if not listed.is_file():
                    message = f"{path}, line {number}: {listed} does not exist"
                    if not skip_missing:
                        raise SEDRunError(message)
                    logger.warning("skipping: %s", message)
                    continue
                items.append(AudioItem(listed.name, str(listed)))
        else:
            raise SEDRunError(f"{path}: no such file or folder")
    if not items:
        raise SEDRunError(f"no audio to process in {[str(p) for p in paths]}")
    seen: dict[str, str] = {}
    for item in items:
        if item.name in seen and seen[item.name] != item.path:
            raise SEDRunError(
                f"two inputs have the file name {item.name!r} ({seen[item.name]} and {item.path}); output tables are "
                "keyed by file name"
            )
        seen[item.name] = item.path
    return list({item.name: item for item in items}.values())


def dataset_items(name: str, config_name: str | None, split: str, audio_column: str) -> list[AudioItem]:
    """The rows of a `datasets` split as inputs, named by their audio file name (or `<split>_<row>.wav`)."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, config_name, split=split)
    except Exception as error:  # datasets raises many types (not found, unknown split, no connection)
        raise SEDRunError(f"cannot load split {split!r} of dataset {name!r}: {error}") from None
    if audio_column not in dataset.column_names:
        raise SEDRunError(f"dataset {name!r}, split {split!r} has no column {audio_column!r}: {dataset.column_names}")
    dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    items, used = [], set()
    for index, value in enumerate(dataset.select_columns([audio_column])[audio_column]):
        path = value.get("path") if isinstance(value, dict) else None
        item_name = Path(path).name if path else f"{split}_{index:06d}.wav"
        if item_name in used:
            item_name = f"{index:06d}_{item_name}"
        used.add(item_name)
        items.append(AudioItem(item_name, dataset=dataset, index=index, column=audio_column))
    if not items:
        raise SEDRunError(f"dataset {name!r}, split {split!r} is empty")
    return items


# ------------------------------------------------------------------------------------------------- output directory


def prepare_output_dir(directory: str | Path) -> Path:
    """Create the output directory and check that files can be written there.

    Raises:
        SEDRunError naming the directory when it cannot be created or written to.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as error:
        raise SEDRunError(
            f"cannot write to the output directory {directory}: {error.strerror or error}"
        ) from None
    return directory


def _clear_outputs(directory: Path, pattern: str) -> None:
    stale = sorted(directory.glob(pattern)) if directory.is_dir() else []
    if stale:
        logger.info("removing %d outputs of a previous run from %s", len(stale), directory)
        for path in stale:
            path.unlink()


# ------------------------------------------------------------------------------------------------------------- model


def load_detection_model(model_name_or_path: str, device: str | None = None, trust_remote_code: bool = False):
    """`(model, feature_extractor)`: an `HTSATForSoundEventDetection` in eval mode on `device` and its extractor."""
    import torch
    from transformers import AutoFeatureExtractor, AutoModelForAudioFrameClassification

    if model_name_or_path is None:
        raise SEDRunError("give --model_name_or_path (a converted or trained HTS-AT model)")
    model = AutoModelForAudioFrameClassification.from_pretrained(
        model_name_or_path, trust_remote_code=trust_remote_code
    )
    if not hasattr(model.config, "num_time_steps"):
        raise SEDRunError(f"{model_name_or_path}: not an HTS-AT model ({type(model).__name__})")
    extractor = AutoFeatureExtractor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), extractor


# ----------------------------------------------------------------------------------------------------------- settings


@dataclass
class DetectionSettings:
    """Post-processing and windowing of a detection run, resolved against the model."""

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
        thresholds = self.thresholds
        if isinstance(thresholds, np.ndarray):
            thresholds = dict(zip(self.labels, thresholds.tolist(), strict=True))
        values = asdict(self)
        values.update(thresholds=thresholds, class_map=None if self.class_map is None else self.class_map.labels)
        values.pop("labels")
        return values


def resolve_thresholds(
    labels: Sequence[str], threshold: float | None, thresholds_file: str | None, class_map: ClassMap | None
) -> float | np.ndarray:
    """A scalar (`threshold`, default 0.5) or per-class thresholds (`thresholds_file`, else the class map's)."""
    if threshold is not None and thresholds_file is not None:
        raise SEDRunError("give --threshold or --thresholds_file, not both")
    if thresholds_file is not None:
        try:
            return threshold_vector(read_thresholds(thresholds_file), labels)
        except (OSError, ValueError) as error:
            raise SEDRunError(f"{thresholds_file}: {error}") from None
    if threshold is not None:
        if not math.isfinite(threshold):
            raise SEDRunError(f"--threshold must be finite, got {threshold}")
        return float(threshold)
    if class_map is not None and class_map.thresholds:
        return class_map.threshold_vector()
    return 0.5


def resolve_settings(args: DetectionArguments, model) -> DetectionSettings:
    class_map = None
    if args.class_map is not None:
        try:
            class_map = load_class_map(args.class_map, num_classes=model.config.num_labels)
        except ValueError as error:
            raise SEDRunError(str(error)) from None
        labels = class_map.labels
    else:
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if args.short_audio not in SHORT_AUDIO_MODES:
        raise SEDRunError(f"--short_audio must be one of {SHORT_AUDIO_MODES}, got {args.short_audio!r}")
    if args.batch_size < 1:
        raise SEDRunError(f"--batch_size must be positive, got {args.batch_size}")
    return DetectionSettings(
        labels=labels,
        thresholds=resolve_thresholds(labels, args.threshold, args.thresholds_file, class_map),
        class_map=class_map,
        median_filter_seconds=args.median_filter_seconds,
        min_duration=args.min_duration,
        min_gap=args.min_gap,
        window_seconds=args.window_seconds,
        hop_seconds=args.hop_seconds,
        batch_size=args.batch_size,
        short_audio=args.short_audio,
    )


def file_scores(model, feature_extractor, waveform: np.ndarray, settings: DetectionSettings) -> FrameScores:
    """Frame scores of one file, class-mapped (not median filtered). Audio shorter than a window is stretched over
    the model's steps or, with `short_audio="pad"`, zero-padded to a full window (steps past its end dropped)."""
    rate = feature_extractor.sampling_rate
    window_seconds = settings.window_seconds or feature_extractor.max_length_seconds
    window = int(round(window_seconds * rate))
    padded = settings.short_audio == "pad" and waveform.shape[0] < window
    scores = sliding_window_scores(
        model,
        feature_extractor,
        np.pad(waveform, (0, window - waveform.shape[0])) if padded else waveform,
        rate,
        window_seconds=settings.window_seconds,
        hop_seconds=settings.hop_seconds,
        batch_size=settings.batch_size,
    )
    if padded:
        steps = min(scores.scores.shape[0], math.ceil(waveform.shape[0] / rate / scores.step_seconds - 1e-9))
        scores = FrameScores(
            scores.scores[:steps], scores.step_seconds, waveform.shape[0] / rate, scores.labels, scores.clip_scores
        )
    return scores.mapped(settings.class_map) if settings.class_map is not None else scores


def postprocess(scores: FrameScores, settings: DetectionSettings) -> tuple[FrameScores, list[Event]]:
    """The median-filtered scores and the events thresholded from them."""
    filtered = FrameScores(
        median_filter_scores(scores.scores, scores.step_seconds, settings.median_filter_seconds),
        scores.step_seconds,
        scores.duration,
        scores.labels,
        scores.clip_scores,
    )
    try:
        events = filtered.events(settings.thresholds, None, settings.min_duration, settings.min_gap)
    except ValueError as error:
        raise SEDRunError(str(error)) from None
    return filtered, events


# ----------------------------------------------------------------------------------------------------------- detection


@dataclass
class DetectionResult:
    """What a detection run produced (also written to the output directory)."""

    events: dict[str, list[Event]]
    durations: dict[str, float]
    skipped: list[tuple[str, str]]
    scores: dict[str, FrameScores] = field(default_factory=dict)  # filtered scores, kept for evaluation
    metrics: dict | None = None


def detect(
    model,
    feature_extractor,
    items: Iterable[AudioItem],
    settings: DetectionSettings,
    output_dir: str | Path,
    skip_bad_audio: bool = False,
    max_plots: int | None = None,
    plot_top_k: int = 5,
    reference: pd.DataFrame | None = None,
    keep_scores: bool = False,
    progress: bool = True,
) -> DetectionResult:
    """Detect events in every item and write `events.tsv`, `scores/`, `durations.tsv` and up to `max_plots` PNGs
    (None: all; 0: none) into `output_dir`.

    Args:
        reference: ground truth (`read_ground_truth_tsv`), drawn in the plots of its files.
        keep_scores: keep every file's filtered scores in the result (for evaluation).

    Raises:
        SEDRunError naming the file for missing, unreadable, empty or too short audio, unless `skip_bad_audio`
        (then counted, logged, and listed in `skipped_audio.tsv`).
    """
    from tqdm.auto import tqdm

    from .sed_metrics import write_events_tsv, write_score_tsv

    output_dir = Path(output_dir)
    scores_dir, plots_dir = output_dir / "scores", output_dir / "plots"
    _clear_outputs(scores_dir, "*.tsv")
    _clear_outputs(plots_dir, "*.png")
    scores_dir.mkdir(parents=True, exist_ok=True)
    items = list(items)
    rate = feature_extractor.sampling_rate
    reference_events = _reference_events(reference)
    result = DetectionResult(events={}, durations={}, skipped=[])
    plotted = 0
    for item in tqdm(items, desc="detecting events", unit="file", disable=not progress):
        try:
            waveform = item.load(rate)
            if waveform.shape[0] < MIN_AUDIO_SECONDS * rate:
                raise SEDRunError(
                    f"{item.path or item.name}: {1000 * waveform.shape[0] / rate:.1f} ms of audio, too short for "
                    f"detection (at least {1000 * MIN_AUDIO_SECONDS:.0f} ms)"
                )
        except SEDRunError as error:
            if not skip_bad_audio:
                raise
            result.skipped.append((item.name, str(error)))
            logger.warning("skipping %s (%d skipped so far): %s", item.name, len(result.skipped), error)
            continue
        filtered, events = postprocess(file_scores(model, feature_extractor, waveform, settings), settings)
        result.events[item.name] = events
        result.durations[item.name] = filtered.duration
        if keep_scores:
            result.scores[item.name] = filtered
        write_score_tsv(scores_dir / f"{item.audio_id}.tsv", filtered.scores, filtered.boundaries, filtered.labels)
        if max_plots is None or plotted < max_plots:
            from .sed_plot import plot_detection

            plot_detection(
                plots_dir / f"{item.audio_id}.png",
                waveform,
                rate,
                filtered,
                events,
                reference=reference_events.get(item.name, ()),
                thresholds=settings.thresholds,
                top_k=plot_top_k,
                title=item.name,
            )
            plotted += 1
        del waveform
    write_events_tsv(result.events, output_dir / "events.tsv")
    pd.DataFrame({"filename": list(result.durations), "duration": list(result.durations.values())}).to_csv(
        output_dir / "durations.tsv", sep="\t", index=False
    )
    if result.skipped:
        pd.DataFrame(result.skipped, columns=["filename", "reason"]).to_csv(
            output_dir / "skipped_audio.tsv", sep="\t", index=False
        )
        logger.warning("%d of %d files were skipped (--skip_bad_audio), see %s", len(result.skipped), len(items),
                       output_dir / "skipped_audio.tsv")
    num_events = sum(len(events) for events in result.events.values())
    logger.info("%d events in %d files written to %s", num_events, len(result.events), output_dir / "events.tsv")
    return result


def _reference_events(reference: pd.DataFrame | None) -> dict[str, list[tuple[float, float, str]]]:
    if reference is None:
        return {}
    rows = reference.dropna(subset=["event_label"])
    events: dict[str, list[tuple[float, float, str]]] = {}
    for row in rows.itertuples():
        events.setdefault(row.filename, []).append((row.onset, row.offset, row.event_label))
    return events


# ---------------------------------------------------------------------------------------------------------- evaluation


def read_reference(
    ground_truth: str | Path, durations: str | Path | None, labels: Sequence[str] | None
) -> tuple[pd.DataFrame, dict[str, float] | None]:
    """Read and check the ground truth (labels must be among `labels`) and durations; errors name file and line."""
    from .sed_metrics import read_durations_tsv, read_ground_truth_tsv

    try:
        table = read_ground_truth_tsv(ground_truth, labels=labels)
        lengths = read_durations_tsv(durations) if durations is not None else None
    except (OSError, ValueError) as error:
        raise SEDRunError(str(error)) from None
    if table["event_label"].dropna().empty:
        raise SEDRunError(f"{ground_truth}: no events to score against")
    return table, lengths


def check_reference_audio(
    reference: pd.DataFrame, ground_truth: str | Path, items: Sequence[AudioItem], where: str, skip: bool
) -> list[str]:
    """Ground-truth files that are not among the inputs: an error naming them, or with `skip` a logged list."""
    names = {item.name for item in items}
    missing = [name for name in dict.fromkeys(reference["filename"]) if name not in names]
    if missing and not skip:
        raise SEDRunError(
            f"{len(missing)} audio files listed in {ground_truth} are missing from {where}: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    if missing:
        logger.warning("%d files of %s are missing from %s and are not scored: %s", len(missing), ground_truth,
                       where, missing[:5])
    extra = [item.name for item in items if item.name not in set(reference["filename"])]
    if extra:
        logger.warning("%d input files are not in %s and are not scored, e.g. %s", len(extra), ground_truth,
                       extra[:3])
    return missing


def evaluate_result(
    result: DetectionResult,
    reference: pd.DataFrame,
    durations: dict[str, float] | None,
    settings: DetectionSettings,
    threshold_sweep: int = 0,
) -> dict:
    """Metrics of a detection run over the ground-truth files it processed (see `sed_metrics.evaluate_detection`):
    F1 scores of its events, PSDS of its scores; files skipped or missing are left out and listed."""
    from .sed_metrics import events_to_dataframe, scores_dataframe

    files = list(dict.fromkeys(reference["filename"]))
    evaluated = [name for name in files if name in result.scores]
    excluded = [name for name in files if name not in result.scores]
    if not evaluated:
        raise SEDRunError("none of the ground-truth files was processed; nothing to score")
    reference = reference[reference["filename"].isin(evaluated)].reset_index(drop=True)
    lengths = {name: (durations[name] if durations is not None else result.durations[name]) for name in evaluated}
    classes = sorted(reference["event_label"].dropna().unique())
    columns = [settings.labels.index(label) for label in classes]

    def detections(events_by_file) -> pd.DataFrame:
        table = events_to_dataframe({name: events_by_file[name] for name in evaluated})
        return table[table["event_label"].isin(classes)] if len(table) else table

    scores = {
        name.rsplit(".", maxsplit=1)[0]: scores_dataframe(
            result.scores[name].scores[:, columns], result.scores[name].boundaries, classes
        )
        for name in evaluated
    }
    try:
        metrics = score_detections(detections(result.events), reference, lengths, scores)
        if threshold_sweep:
            thresholds = (np.arange(threshold_sweep) + 0.5) / threshold_sweep
            operating_points = {
                float(threshold): detections({
                    name: result.scores[name].events(float(threshold), None, settings.min_duration, settings.min_gap)
                    for name in evaluated
                })
                for threshold in thresholds
            }
            metrics["threshold_sweep"] = {
                "num_thresholds": threshold_sweep,
                "psds1": psds_score(operating_points, reference, lengths, 1)["psds"],
                "psds2": psds_score(operating_points, reference, lengths, 2)["psds"],
            }
    except ValueError as error:
        raise SEDRunError(f"scoring failed: {error}") from None
    metrics["excluded_files"] = excluded
    return metrics


def score_detections(detections, reference, durations, psds_source=None) -> dict:
    """`sed_metrics.evaluate_detection`'s metrics: F1 scores of `detections`, PSDS1/PSDS2 of `psds_source` (score
    tables or operating points) when given, via `psds_score`."""
    from .sed_metrics import evaluate_detection, operating_points_to_scores, read_durations_tsv, read_ground_truth_tsv

    if isinstance(reference, (str, Path)):
        reference = read_ground_truth_tsv(reference)
    if isinstance(durations, (str, Path)):
        durations = read_durations_tsv(durations)
    metrics = evaluate_detection(detections, reference, durations)
    if isinstance(psds_source, Mapping) and all(isinstance(key, (int, float, np.number)) for key in psds_source):
        psds_source = operating_points_to_scores(psds_source, reference, durations)  # once for both scenarios
    if psds_source is not None:
        for scenario in (1, 2):
            metrics[f"psds{scenario}"] = psds_score(psds_source, reference, durations, scenario)
    return metrics


def psds_score(source, reference: pd.DataFrame, durations: dict[str, float], scenario: int) -> dict:
    """`sed_metrics.psds` of a score source (tables, a directory of score TSVs, or operating points)."""
    from .sed_metrics import psds

    return psds(source, reference, durations, scenario)


def write_metrics(metrics: dict, output_dir: str | Path, settings: dict | None = None) -> str:
    """Write `metrics.json` and return the table (also printed on stdout by the script)."""
    from .sed_metrics import format_metrics_table

    document = dict(metrics)
    if settings is not None:
        document["settings"] = settings
    Path(output_dir, "metrics.json").write_text(json.dumps(document, indent=2, allow_nan=False, default=str) + "\n")
    table = format_metrics_table(metrics)
    sweep = metrics.get("threshold_sweep")
    if sweep:
        table += (
            f"\nPSDS from {sweep['num_thresholds']} operating points: PSDS1 {sweep['psds1']:.3f}, "
            f"PSDS2 {sweep['psds2']:.3f}"
        )
    if metrics.get("excluded_files"):
        table += f"\n{len(metrics['excluded_files'])} ground-truth files were not scored (skipped or missing)"
    return table


# ---------------------------------------------------------------------------------------------------------- score only


def predictions_kind(path: str | Path) -> str:
    """`"events"` (a TSV/CSV file), `"operating_points"` (a directory of detection TSVs) or `"scores"` (a directory
    of sed_scores_eval score TSVs), from the path and the first TSV's header."""
    path = Path(path)
    if path.is_file():
        return "events"
    if not path.is_dir():
        raise SEDRunError(f"{path}: no such file or directory of predictions")
    tables = sorted(path.glob("*.tsv"))
    if not tables:
        raise SEDRunError(f"{path}: no .tsv files (expected per-threshold detections or score tables)")
    with tables[0].open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
    if {"filename", "event_label"} <= set(header):
        return "operating_points"
    if header[:2] == ["onset", "offset"]:
        return "scores"
    raise SEDRunError(
        f"{tables[0]}: neither a detection table (filename, onset, offset, event_label) nor a score table (onset, "
        f"offset, <classes>); header {header}"
    )


def score_only(
    detection_args: DetectionArguments, evaluation_args: EvaluationArguments, output_dir: str | Path
) -> dict:
    """Score existing predictions against the ground truth, writing `metrics.json` (and `events.tsv` when the
    events come from score tables).

    `--predictions` is an events file (F1 scores; PSDS from `--psds_predictions` when given), a directory of
    per-threshold detections (F1 scores at `--threshold`, default 0.5, which must be one of them; PSDS from all), or a
    directory of score tables (events thresholded as in a detection run; PSDS from the scores).
    """
    from .sed_metrics import events_to_dataframe, read_operating_points, write_events_tsv

    if evaluation_args.predictions is None:
        raise SEDRunError("--score_only needs --predictions")
    if evaluation_args.ground_truth is None or evaluation_args.durations is None:
        raise SEDRunError("--score_only needs --ground_truth and --durations")
    class_map = None
    if detection_args.class_map is not None:
        try:
            class_map = load_class_map(detection_args.class_map)
        except ValueError as error:
            raise SEDRunError(str(error)) from None
    reference, _ = read_reference(
        evaluation_args.ground_truth, evaluation_args.durations, class_map.labels if class_map else None
    )
    kind = predictions_kind(evaluation_args.predictions)
    psds_source = None
    if evaluation_args.psds_predictions is not None:
        psds_kind = predictions_kind(evaluation_args.psds_predictions)
        if psds_kind == "events":
            raise SEDRunError(f"{evaluation_args.psds_predictions}: --psds_predictions must be a directory")
        psds_source = _read_psds_source(evaluation_args.psds_predictions, psds_kind)

    try:
        if kind == "events":
            detections = evaluation_args.predictions
        elif kind == "operating_points":
            operating_points = read_operating_points(evaluation_args.predictions)
            wanted = 0.5 if detection_args.threshold is None else detection_args.threshold
            matches = [t for t in operating_points if math.isclose(t, wanted, abs_tol=1e-9)]
            if not matches:
                raise SEDRunError(
                    f"{evaluation_args.predictions}: no detections at threshold {wanted:g} for the F1 scores (it has "
                    f"{min(operating_points):g} ... {max(operating_points):g}); pass one of its thresholds with "
                    "--threshold, or the detections file with --predictions and this directory with --psds_predictions"
                )
            detections = operating_points[matches[0]]
            psds_source = operating_points if psds_source is None else psds_source
        else:
            scores = _read_psds_source(evaluation_args.predictions, "scores")
            classes = sorted(reference["event_label"].dropna().unique())
            thresholds = resolve_thresholds(
                classes, detection_args.threshold, detection_args.thresholds_file,
                _restricted_class_map(class_map, classes),
            )
            names = {name.rsplit(".", maxsplit=1)[0]: name for name in reference["filename"]}
            events = {}
            for audio_id, table in scores.items():
                missing = [label for label in classes if label not in table.columns]
                if missing:
                    raise SEDRunError(f"{evaluation_args.predictions}/{audio_id}.tsv: no scores for classes {missing}")
                table = table[["onset", "offset", *classes]]
                scores[audio_id], events[names.get(audio_id, f"{audio_id}.wav")] = _events_from_table(
                    table, classes, thresholds, detection_args
                )
            write_events_tsv(events, Path(output_dir) / "events.tsv")
            detections = events_to_dataframe(events)
            psds_source = scores if psds_source is None else psds_source
        metrics = score_detections(detections, evaluation_args.ground_truth, evaluation_args.durations, psds_source)
    except ValueError as error:
        if isinstance(error, SEDRunError):
            raise
        raise SEDRunError(f"scoring failed: {error}") from None
    metrics["predictions"] = {"path": str(evaluation_args.predictions), "kind": kind}
    return metrics


def _read_psds_source(path: str | Path, kind: str):
    from .sed_metrics import read_operating_points

    try:
        if kind == "operating_points":
            return read_operating_points(path)
        from sed_scores_eval.base_modules.io import read_sed_scores

        return read_sed_scores(path)
    except (OSError, ValueError) as error:
        raise SEDRunError(f"{path}: {error}") from None


def _restricted_class_map(class_map: ClassMap | None, classes: list[str]) -> ClassMap | None:
    if class_map is None or not class_map.thresholds:
        return None
    return ClassMap({c: class_map.classes[c] for c in classes}, class_map.num_source_classes,
                    {c: class_map.thresholds[c] for c in classes})


def _events_from_table(table: pd.DataFrame, classes: list[str], thresholds, args: DetectionArguments):
    """A score table median filtered (its mean step as the step) and its events, as in a detection run."""
    from .sed_postprocessing import activity_to_events, binarize

    onsets, offsets = table["onset"].to_numpy(np.float64), table["offset"].to_numpy(np.float64)
    boundaries = np.append(onsets, offsets[-1])
    step = float(np.mean(np.diff(boundaries)))
    filtered = median_filter_scores(table[classes].to_numpy(np.float32), step, args.median_filter_seconds)
    try:
        events = activity_to_events(
            binarize(filtered, thresholds), boundaries, classes, filtered, args.min_duration, args.min_gap
        )
    except ValueError as error:
        raise SEDRunError(str(error)) from None
    filtered_table = table.copy()
    for column, label in enumerate(classes):
        filtered_table[label] = filtered[:, column].astype(np.float32)
    return filtered_table, events


# ------------------------------------------------------------------------------------------------------------ training


def train(
    model_args: ModelArguments,
    data_args: StrongLabelArguments,
    detection_args: DetectionArguments,
    training_args,
):
    """Strong-label fine-tuning with `HTSATTrainer`; returns `(model, feature_extractor, trainer)`.

    The label set is the training annotations'; a `--model_name_or_path` with other labels gets a re-initialised head
    (`load_for_labels`), otherwise a model is built from `--config_name`/`--config_overrides`.
    """
    from transformers import AutoFeatureExtractor

    from .feature_extraction_htsat import HTSATFeatureExtractor
    from .modeling_htsat import HTSATForSoundEventDetection
    from .sed_training import StrongLabelCollator, compute_frame_metrics, read_strong_label_dir
    from .training.model_setup import build_config, load_for_labels
    from .training.trainer import HTSATTrainer

    if data_args.train_dir is None:
        raise SEDRunError("--do_train needs --train_dir (a folder with audio/ and annotations.tsv)")
    problem_type = "multi_label_classification"
    _, labels, _ = _peek_labels(data_args.train_dir)
    if model_args.model_name_or_path:
        model = load_for_labels(
            model_args.model_name_or_path, labels, problem_type, model_class=HTSATForSoundEventDetection,
            trust_remote_code=model_args.trust_remote_code,
        )
        extractor = AutoFeatureExtractor.from_pretrained(
            model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code
        )
    else:
        config = build_config(model_args.config_name, model_args.config_overrides, labels, problem_type)
        model = HTSATForSoundEventDetection(config)
        extractor = HTSATFeatureExtractor.from_config(config)
    if not data_args.spec_augment:
        model.config.spec_augment_time_stripes = model.config.spec_augment_freq_stripes = 0

    window = extractor.max_length_seconds
    train_examples, _, skipped = read_strong_label_dir(data_args.train_dir, labels, window, detection_args.skip_bad_audio)
    eval_examples = None
    if data_args.eval_dir is not None:
        eval_examples, _, more = read_strong_label_dir(data_args.eval_dir, labels, window, detection_args.skip_bad_audio)
        skipped += more
    logger.info("strong-label training on %d clips (%s), %d classes: %s; evaluation on %s clips", len(train_examples),
                data_args.train_dir, len(labels), labels, len(eval_examples) if eval_examples else 0)
    collator = StrongLabelCollator(
        extractor, labels, model.config.num_time_steps, data_args.target_mode, detection_args.skip_bad_audio
    )
    training_args.remove_unused_columns = False
    trainer = HTSATTrainer(
        model=model,
        args=training_args,
        train_dataset=train_examples,
        eval_dataset=eval_examples,
        data_collator=collator,
        processing_class=extractor,
        compute_metrics=compute_frame_metrics,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if eval_examples is not None:
        metrics = trainer.evaluate(ignore_keys=["clip_logits", "hidden_states", "attentions"])
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return trainer.model.eval(), extractor, trainer


def _peek_labels(directory: str | Path):
    from .sed_metrics import read_ground_truth_tsv

    annotations = Path(directory) / "annotations.tsv"
    if not annotations.is_file():
        raise SEDRunError(f"{directory}: expected audio/ and annotations.tsv (filename, onset, offset, event_label)")
    try:
        table = read_ground_truth_tsv(annotations)
    except (OSError, ValueError) as error:
        raise SEDRunError(str(error)) from None
    labels = sorted(table["event_label"].dropna().unique())
    if not labels:
        raise SEDRunError(f"{annotations}: no events to train on")
    return table, labels, annotations


def strong_label_items(directory: str | Path) -> tuple[list[AudioItem], Path, Path | None]:
    """The audio files of a strong-label folder's annotations, its annotations and (if present) durations TSV."""
    directory = Path(directory)
    table, _, annotations = _peek_labels(directory)
    items = [AudioItem(name, str(directory / "audio" / name)) for name in dict.fromkeys(table["filename"])]
    durations = directory / "durations.tsv"
    return items, annotations, durations if durations.is_file() else None


# ----------------------------------------------------------------------------------------------------------------- run


def run_detection(
    model,
    extractor,
    items: list[AudioItem],
    detection_args: DetectionArguments,
    evaluation_args: EvaluationArguments,
    output_dir: str | Path,
    where: str,
    progress: bool = True,
) -> DetectionResult:
    """Check the ground truth against the model and the inputs (before running the model), detect, and score."""
    output_dir = prepare_output_dir(output_dir)
    settings = resolve_settings(detection_args, model)
    reference = durations = None
    if evaluation_args.ground_truth is not None:
        reference, durations = read_reference(evaluation_args.ground_truth, evaluation_args.durations, settings.labels)
        check_reference_audio(reference, evaluation_args.ground_truth, items, where, detection_args.skip_bad_audio)
    elif evaluation_args.durations is not None or evaluation_args.threshold_sweep:
        raise SEDRunError("--durations and --threshold_sweep are for scoring: give --ground_truth too")
    max_plots = detection_args.max_plots if detection_args.plot else 0
    result = detect(
        model,
        extractor,
        items,
        settings,
        output_dir,
        skip_bad_audio=detection_args.skip_bad_audio,
        max_plots=max_plots,
        plot_top_k=detection_args.plot_top_k,
        reference=reference,
        keep_scores=reference is not None,
        progress=progress,
    )
    if reference is not None:
        result.metrics = evaluate_result(result, reference, durations, settings, evaluation_args.threshold_sweep)
        result.metrics["skipped_files"] = [name for name, _ in result.skipped]
        print(write_metrics(result.metrics, output_dir, settings.describe()))
    return result


def run(
    model_args: ModelArguments,
    detection_args: DetectionArguments,
    evaluation_args: EvaluationArguments,
    data_args: StrongLabelArguments,
    training_args,
    model=None,
    feature_extractor=None,
) -> dict:
    """What `run_sed.py` does: score only, or train (then score on the evaluation folder), and/or detect events in
    the inputs (and score them against the ground truth). `model`/`feature_extractor` replace
    `--model_name_or_path` for detection (tests, notebooks).

    Returns:
        `{"metrics": ..., "eval_detection_metrics": ..., "result": DetectionResult}`, the parts that ran.
    """
    output_dir = prepare_output_dir(training_args.output_dir)
    progress = not getattr(training_args, "disable_tqdm", False)
    summary: dict = {}
    if evaluation_args.score_only:
        metrics = score_only(detection_args, evaluation_args, output_dir)
        print(write_metrics(metrics, output_dir))
        summary["metrics"] = metrics
        return summary

    has_inputs = bool(detection_args.inputs) or detection_args.dataset_name is not None
    if not has_inputs and not training_args.do_train:
        raise SEDRunError("nothing to do: give --inputs, --dataset_name, --do_train or --score_only")
    if detection_args.inputs and detection_args.dataset_name is not None:
        raise SEDRunError("give --inputs or --dataset_name, not both")
    items = None
    if has_inputs:  # before loading or training a model: input errors first
        if detection_args.inputs:
            items = collect_inputs(detection_args.inputs, skip_missing=detection_args.skip_bad_audio)
            where = ", ".join(detection_args.inputs)
        else:
            items = dataset_items(detection_args.dataset_name, detection_args.dataset_config_name,
                                  detection_args.split, detection_args.audio_column_name)
            where = f"dataset {detection_args.dataset_name} ({detection_args.split})"
        if evaluation_args.ground_truth is not None:  # format and missing files; labels once the model is known
            reference, _ = read_reference(evaluation_args.ground_truth, evaluation_args.durations, None)
            check_reference_audio(reference, evaluation_args.ground_truth, items, where, detection_args.skip_bad_audio)

    if training_args.do_train:
        model, feature_extractor, trainer = train(model_args, data_args, detection_args, training_args)
        if data_args.eval_dir is not None and trainer.is_world_process_zero():
            eval_items, annotations, durations = strong_label_items(data_args.eval_dir)
            eval_detection_args = DetectionArguments(**{**asdict(detection_args), "class_map": None})
            eval_detection_args.max_plots = 0 if detection_args.max_plots is None else detection_args.max_plots
            result = run_detection(
                model, feature_extractor, eval_items, eval_detection_args,
                EvaluationArguments(ground_truth=str(annotations), durations=str(durations) if durations else None),
                output_dir / "eval_detection", f"{data_args.eval_dir}/audio", progress,
            )
            summary["eval_detection_metrics"] = result.metrics
        if not trainer.is_world_process_zero():
            return summary
    elif model is None:
        model, feature_extractor = load_detection_model(
            model_args.model_name_or_path, model_args.device, model_args.trust_remote_code
        )

    if items is not None:
        result = run_detection(
            model, feature_extractor, items, detection_args, evaluation_args, output_dir, where, progress
        )
        summary["result"] = result
        summary["metrics"] = result.metrics
    return summary


__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioItem",
    "DetectionArguments",
    "DetectionResult",
    "DetectionSettings",
    "EvaluationArguments",
    "ModelArguments",
    "SEDRunError",
    "StrongLabelArguments",
    "audio_duration",
    "check_reference_audio",
    "collect_inputs",
    "dataset_items",
    "detect",
    "evaluate_result",
    "file_scores",
    "load_audio",
    "load_detection_model",
    "postprocess",
    "predictions_kind",
    "prepare_output_dir",
    "read_reference",
    "resolve_settings",
    "resolve_thresholds",
    "run",
    "run_detection",
    "score_only",
    "train",
    "write_metrics",
]
