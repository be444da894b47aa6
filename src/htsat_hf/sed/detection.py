"""Detection over many files, and its scoring: what `run_sed.py` runs, as a library.

A detection run ([`run_detection`], or [`detect`] without scoring) writes into its output directory:

- `events.tsv`: the detected events, DCASE format (`filename onset offset event_label`, plus the event's peak
  `score`);
- `scores/<audio id>.tsv`: per-file frame scores in sed_scores_eval's format (`onset offset <class...>`, the audio id
  being the file name without extension), after class mapping and median filtering, i.e. the scores the thresholds
  were applied to; `sed_scores_eval.io.read_sed_scores(".../scores")` reads the directory;
- `durations.tsv`: `filename duration` (seconds) of every processed file;
- `plots/<audio id>.png`: spectrogram, class activity and event timeline (see `plot.plot_detection`);
- with ground truth: `metrics.json`: intersection F1, collar event F1, segment F1 of `events.tsv`, PSDS1 and PSDS2
  of the scores (see `metrics.evaluate_detection`), and the settings;
- `skipped_audio.tsv` when `skip_bad_audio` left files out.

A run never leaves a mix of old and new results: it writes these outputs into a temporary folder inside the output
directory (`.sed-run-*`) and moves them into place only once all are written, replacing exactly the previous run's
detection outputs (`DETECTION_OUTPUTS`; a stale `skipped_audio.tsv` or `metrics.json` is removed) and leaving every
other file in the directory alone (see [`staged_outputs`]). A run that fails or is interrupted leaves the previous
results as they were and no temporary folder.

[`score_predictions`] scores existing detections (an events table, per-threshold detections or score tables)
without a model. Every problem with the inputs is an [`InputError`] naming the file (and line, for tables).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..audio import audio_duration
from ..errors import InputError
from ..inputs import AudioItem
from ..loading import check_output_dir, load_feature_extractor, load_model
from ..modeling_htsat import HTSATForSoundEventDetection
from .io import (
    audio_id,
    detection_table,
    events_to_dataframe,
    predictions_kind,
    read_durations_tsv,
    read_ground_truth_tsv,
    read_operating_points,
    read_score_tsvs,
    scores_dataframe,
    write_durations_tsv,
    write_events_tsv,
    write_score_tsv,
    write_skipped_audio_tsv,
)
from .metrics import evaluate_detection, format_metrics_table, operating_points_to_scores, psds
from .plot import plot_detection
from .postprocessing import (
    DEFAULT_THRESHOLD,
    SHORT_AUDIO_MODES,
    ClassMap,
    DetectionSettings,
    Event,
    frame_scores_events,
    load_class_map,
    map_frame_scores,
    median_filter_frame_scores,
    median_filter_scores,
    resolve_thresholds,
    scores_to_events,
)
from .windows import MIN_AUDIO_SECONDS, FrameScores, check_detection_duration, sliding_window_scores

logger = logging.getLogger(__name__)

__all__ = [
    "DETECTION_OUTPUTS",
    "SCORE_ONLY_OUTPUTS",
    "SHORT_AUDIO_MODES",
    "DetectionResult",
    "DetectionSettings",
    "Detector",
    "FileDetection",
    "check_audio_items",
    "check_reference_audio",
    "detect",
    "evaluate_result",
    "file_scores",
    "load_detection_model",
    "metrics_table",
    "one_by_one",
    "postprocess",
    "prepare_output_dir",
    "read_reference",
    "resolve_settings",
    "run_detection",
    "score_predictions",
    "staged_outputs",
    "write_metrics",
]

# What a detection run writes into its output directory, and so replaces there.
DETECTION_OUTPUTS = ("events.tsv", "scores", "durations.tsv", "plots", "metrics.json", "skipped_audio.tsv")
# What scoring existing predictions replaces: its metrics (and events.tsv only when it writes one: the events file of
# the folder may be the predictions being scored).
SCORE_ONLY_OUTPUTS = ("metrics.json",)
STAGING_PREFIX = ".sed-run-"


# ------------------------------------------------------------------------------------------------- model and outputs


def load_detection_model(model_name_or_path: str | None, device: str | None = None, dtype: str | None = None):
    """`(model, feature_extractor)`: an `HTSATForSoundEventDetection` (any saved HTS-AT head loads into it) in eval
    mode on `device` (default: cuda when there is one), in `dtype` (`"float32"`, `"bfloat16"`, `"float16"`; default:
    as saved), and its extractor, checked against the model's config.

    Raises:
        InputError: no model given, an unknown dtype, or what `loading.load_model` and
            `loading.load_feature_extractor` refuse.
    """
    if model_name_or_path is None:
        raise InputError("give --model_name_or_path (a converted or trained HTS-AT model)")
    model = load_model(HTSATForSoundEventDetection, model_name_or_path, dtype)
    extractor = load_feature_extractor(model_name_or_path, model.config)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), extractor


def prepare_output_dir(directory: str | Path) -> Path:
    """Create the output directory and check that files can be written there.

    Raises:
        InputError naming the directory when it cannot be created or written to.
    """
    directory = check_output_dir(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as error:
        raise InputError(f"cannot write to the output directory {directory}: {error.strerror or error}") from None
    return directory


@contextmanager
def staged_outputs(output_dir: str | Path, replaces: Sequence[str] = DETECTION_OUTPUTS) -> Iterator[Path]:
    """A temporary folder inside `output_dir` to write a run's outputs into; when the block ends without an
    exception, the outputs of `replaces` (and any other name written) are taken out of `output_dir` and the staged
    ones moved in, so that the folder holds exactly the new run's outputs besides its unrelated files. When the
    block raises (an error, KeyboardInterrupt), or moving fails, `output_dir` is left as it was. The temporary
    folder is removed in every case.

    Raises:
        InputError: the output directory cannot be created or written to.
    """
    output_dir = prepare_output_dir(output_dir)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=output_dir))
    try:
        yield staging
        _commit(staging, output_dir, replaces)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _commit(staging: Path, output_dir: Path, replaces: Sequence[str]) -> None:
    """Swap the staged outputs into `output_dir`: the old ones go into `staging/.previous` (deleted with the staging
    folder), and come back if any move fails."""
    previous = staging / ".previous"
    previous.mkdir()
    new = sorted(path.name for path in staging.iterdir() if path.name != previous.name)
    moved_out, moved_in = [], []
    try:
        for name in dict.fromkeys([*replaces, *new]):
            if (output_dir / name).exists() or (output_dir / name).is_symlink():
                (output_dir / name).rename(previous / name)
                moved_out.append(name)
        for name in new:
            (staging / name).rename(output_dir / name)
            moved_in.append(name)
    except BaseException:
        for name in moved_in:
            (output_dir / name).rename(staging / name)
        for name in moved_out:
            (previous / name).rename(output_dir / name)
        raise
    if moved_out:
        logger.info("replaced the outputs of a previous run in %s: %s", output_dir, ", ".join(moved_out))


# ----------------------------------------------------------------------------------------------------------- settings


def resolve_settings(
    model,
    class_map: str | Path | ClassMap | None = None,
    threshold: float | Mapping[str, float] | str | Path | None = None,
    median_filter_seconds: float | None = None,
    min_duration: float = 0.0,
    min_gap: float = 0.0,
    window_seconds: float | None = None,
    hop_seconds: float | None = None,
    batch_size: int = 8,
    short_audio: str = "stretch",
) -> DetectionSettings:
    """The settings of a run for `model`: its classes or the class map's, the thresholds of `resolve_thresholds`.

    Raises:
        InputError: a class map that does not fit the model, thresholds that do not fit the classes, an unknown
            `short_audio`, a `batch_size` below 1.
    """
    if class_map is not None and not isinstance(class_map, ClassMap):
        class_map = load_class_map(class_map, num_classes=model.config.num_labels)
    if class_map is not None:
        labels = class_map.labels
    else:
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if short_audio not in SHORT_AUDIO_MODES:
        raise InputError(f"short_audio must be one of {SHORT_AUDIO_MODES}, got {short_audio!r}")
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    return DetectionSettings(
        labels=labels,
        thresholds=resolve_thresholds(labels, threshold, class_map),
        class_map=class_map,
        median_filter_seconds=median_filter_seconds,
        min_duration=min_duration,
        min_gap=min_gap,
        window_seconds=window_seconds,
        hop_seconds=hop_seconds,
        batch_size=batch_size,
        short_audio=short_audio,
    )


# ----------------------------------------------------------------------------------------------------------- one file


def file_scores(model, feature_extractor, waveform: np.ndarray, settings: DetectionSettings) -> FrameScores:
    """Frame scores of one file's `(samples,)` waveform, class-mapped (not median filtered). Audio shorter than a
    window is stretched over the model's steps or, with `short_audio="pad"`, zero-padded to a full window (steps past
    its end dropped)."""
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
        scores = replace(scores, scores=scores.scores[:steps], duration=waveform.shape[0] / rate)
    return map_frame_scores(scores, settings.class_map) if settings.class_map is not None else scores


def postprocess(scores: FrameScores, settings: DetectionSettings) -> tuple[FrameScores, list[Event]]:
    """The median-filtered scores (those written and scored) and the events thresholded from them."""
    filtered = median_filter_frame_scores(scores, settings.median_filter_seconds)
    events = frame_scores_events(filtered, settings.thresholds, None, settings.min_duration, settings.min_gap)
    return filtered, events


# ---------------------------------------------------------------------------------------------------------- detection


@dataclass
class DetectionResult:
    """What a detection run produced (also written to the output directory).

    Attributes:
        events: `{filename: events}`.
        durations: `{filename: seconds}` of the processed files.
        skipped: `(filename, reason)` of the files left out by `skip_bad_audio`.
        scores: `{filename: filtered FrameScores}`, kept for evaluation.
        metrics: the metrics, when scored against ground truth.
    """

    events: dict[str, list[Event]]
    durations: dict[str, float]
    skipped: list[tuple[str, str]]
    scores: dict[str, FrameScores] = field(default_factory=dict)
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
    skipped: Sequence[tuple[str, str]] = (),
    detector: Detector | None = None,
) -> DetectionResult:
    """Detect events in every item and write `events.tsv`, `scores/`, `durations.tsv` and PNGs of the first
    `max_plots` inputs (None: all; 0: none) into `output_dir`, replacing the detection outputs of an earlier run there only once all
    are written (see `staged_outputs`).

    Args:
        reference: ground truth (`io.read_ground_truth_tsv`), drawn in the plots of its files.
        keep_scores: keep every file's filtered scores in the result (for evaluation).
        progress: show a progress bar.
        skipped: `(filename, reason)` of files already left out (by `check_audio_items`), listed with the others.
        detector: what scores the files (default [`one_by_one`]; `htsat_hf.engine.InferenceEngine.detections`
            batches across files in parallel workers with memory flat in duration).

    Raises:
        InputError naming the file for missing, unreadable, empty or too short audio, unless `skip_bad_audio`
        (then counted, logged, and listed in `skipped_audio.tsv`).
    """
    check_settings(settings, feature_extractor)
    with staged_outputs(output_dir) as staging:
        return _detect_into(staging, model, feature_extractor, list(items), settings, skip_bad_audio, max_plots,
                            plot_top_k, reference, keep_scores, progress, skipped, Path(output_dir), detector)


def check_settings(settings: DetectionSettings, feature_extractor) -> None:
    """Refuse a window longer than the model's clip or a hop longer than the window, before any audio is read."""
    longest = feature_extractor.max_length_seconds
    window = settings.window_seconds if settings.window_seconds is not None else longest
    if not MIN_AUDIO_SECONDS <= window <= longest:
        raise InputError(f"window_seconds must be between {MIN_AUDIO_SECONDS} and {longest:g} (the model's clip), "
                         f"got {window:g}")
    if settings.hop_seconds is not None and settings.hop_seconds > window:
        raise InputError(f"hop_seconds ({settings.hop_seconds:g}) must not exceed the window ({window:g} s): audio "
                         "between windows would not be scored")


# One file's detection as a run records it: `(index into the items, duration in seconds, events, filtered scores
# or None when not kept, error message or None)`; the scores file is already written into the scores folder.
FileDetection = tuple[int, float, list[Event], FrameScores | None, str | None]
# What scores a run's files: `(items, scores folder, keep scores) -> FileDetection`s, in any order.
Detector = Callable[[Sequence[AudioItem], Path, bool], Iterator[FileDetection]]


def one_by_one(model, feature_extractor, settings: DetectionSettings) -> Detector:
    """A [`Detector`] that decodes and scores each file whole, in turn (`file_scores` + `postprocess`). Runs
    through `htsat_hf.engine.InferenceEngine.detections` instead decode in workers, batch across files and keep memory
    flat in duration, with the same results."""

    def detect_files(items: Sequence[AudioItem], scores_dir: Path, keep_scores: bool) -> Iterator[FileDetection]:
        rate = feature_extractor.sampling_rate
        for index, item in enumerate(items):
            try:
                waveform = item.load(rate)
                check_detection_duration(waveform.shape[0] / rate, item.source)
            except InputError as error:
                yield index, 0.0, [], None, str(error)
                continue
            filtered, events = postprocess(file_scores(model, feature_extractor, waveform, settings), settings)
            path = scores_dir / f"{item.audio_id}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_score_tsv(path, filtered.scores, filtered.boundaries, filtered.labels)
            yield index, filtered.duration, events, filtered if keep_scores else None, None

    return detect_files


def _detect_into(staging: Path, model, feature_extractor, items: list[AudioItem], settings: DetectionSettings,
                 skip_bad_audio: bool, max_plots: int | None, plot_top_k: int, reference, keep_scores: bool,
                 progress: bool, skipped: Sequence[tuple[str, str]], final_dir: Path,
                 detector: Detector | None = None) -> DetectionResult:
    scores_dir, plots_dir = staging / "scores", staging / "plots"
    scores_dir.mkdir(parents=True, exist_ok=True)
    rate = feature_extractor.sampling_rate
    reference_events = _reference_events(reference)
    result = DetectionResult(events={}, durations={}, skipped=list(skipped))
    detector = detector or one_by_one(model, feature_extractor, settings)
    found: dict[int, tuple] = {}
    for index, duration, events, filtered, error in tqdm(detector(items, scores_dir, keep_scores),
                                                         total=len(items), desc="detecting events", unit="file",
                                                         disable=not progress):
        item = items[index]
        if error is not None:
            if not skip_bad_audio:
                raise InputError(error)
            result.skipped.append((item.name, error))
            logger.warning("skipping %s (%d skipped so far): %s", item.name, len(result.skipped), error)
            continue
        found[index] = (duration, events, filtered)
        if max_plots is None or index < max_plots:  # the first inputs, whatever order they finish in
            # The waveform is decoded again for its plot, and the scores read back from their file: a run holds
            # neither for all of its files.
            plots_dir.mkdir(exist_ok=True)
            shown = filtered if filtered is not None else _read_scores(scores_dir / f"{item.audio_id}.tsv",
                                                                        settings.labels, duration)
            plot_detection(
                plots_dir / f"{item.audio_id}.png",
                item.load(rate),
                rate,
                shown,
                events,
                reference=reference_events.get(item.name, ()),
                thresholds=settings.thresholds,
                top_k=plot_top_k,
                title=item.name,
            )
    # Tables in input order, whatever order the detector finished the files in.
    for index in sorted(found):
        duration, events, filtered = found[index]
        name = items[index].name
        result.events[name] = events
        result.durations[name] = duration
        if keep_scores:
            result.scores[name] = filtered
    write_events_tsv(result.events, staging / "events.tsv")
    write_durations_tsv(result.durations, staging / "durations.tsv")
    if result.skipped:
        write_skipped_audio_tsv(result.skipped, staging / "skipped_audio.tsv")
        logger.warning("%d of %d files were skipped (--skip_bad_audio), see %s", len(result.skipped),
                       len(items) + len(skipped), final_dir / "skipped_audio.tsv")
    num_events = sum(len(events) for events in result.events.values())
    logger.info("%d events in %d files written to %s", num_events, len(result.events), final_dir / "events.tsv")
    return result


def _read_scores(path: Path, labels: Sequence[str], duration: float) -> FrameScores:
    """A file's filtered scores read back from its score TSV (for its plot)."""
    table = pd.read_csv(path, sep="\t")
    onsets = table["onset"].to_numpy(np.float64)
    step = float(onsets[1] - onsets[0]) if len(onsets) > 1 else float(table["offset"].iloc[0])
    return FrameScores(table[list(labels)].to_numpy(np.float32), step, duration, list(labels))


def check_audio_items(items: Sequence[AudioItem], skip_bad_audio: bool = False
                      ) -> tuple[list[AudioItem], list[tuple[str, str]]]:
    """Check, from their headers, that the inputs' audio can be read and is long enough for detection, before a
    model runs or anything is written (files that soundfile cannot open are decoded once with FFmpeg).

    Returns:
        `(usable items, skipped)`: with `skip_bad_audio`, the `(filename, reason)` of the files left out (logged).

    Raises:
        InputError naming the first bad file, unless `skip_bad_audio`.
    """
    usable, skipped = [], []
    for item in items:
        try:
            duration = _item_duration(item)
            if duration is not None:
                check_detection_duration(duration, item.source)
        except InputError as error:
            if not skip_bad_audio:
                raise
            skipped.append((item.name, str(error)))
            logger.warning("skipping %s (%d skipped so far): %s", item.name, len(skipped), error)
            continue
        usable.append(item)
    return usable, skipped


def _item_duration(item: AudioItem) -> float | None:
    """The item's duration from its header, or None for audio given as samples or a decoder (checked when loaded)."""
    if item.path is not None:
        return audio_duration(item.path)
    value = item.value()
    if isinstance(value, (str, Path)):
        return audio_duration(value, item.source)
    if isinstance(value, dict) and value.get("bytes") is not None and value.get("array") is None:
        return audio_duration(bytes(value["bytes"]), item.source)
    if isinstance(value, dict) and value.get("path") is not None and value.get("array") is None:
        return audio_duration(value["path"], item.source)
    return None


def _reference_events(reference: pd.DataFrame | None) -> dict[str, list[tuple[float, float, str]]]:
    if reference is None:
        return {}
    rows = reference.dropna(subset=["event_label"])
    events: dict[str, list[tuple[float, float, str]]] = {}
    for row in rows.itertuples():
        events.setdefault(row.filename, []).append((row.onset, row.offset, row.event_label))
    return events


def run_detection(
    model,
    feature_extractor,
    items: Sequence[AudioItem],
    settings: DetectionSettings,
    output_dir: str | Path,
    where: str,
    ground_truth: str | Path | None = None,
    durations: str | Path | None = None,
    threshold_sweep: int = 0,
    skip_bad_audio: bool = False,
    max_plots: int | None = None,
    plot_top_k: int = 5,
    progress: bool = True,
    check_audio: bool = True,
    skipped: Sequence[tuple[str, str]] = (),
    detector: Detector | None = None,
) -> DetectionResult:
    """Detect (see `detect`) and, with `ground_truth`, score: the ground truth is checked against the settings'
    classes and the inputs, and the audio's headers (`check_audio_items`, unless `check_audio` is False because the
    caller did it), before the model runs; the metrics go to `metrics.json` and `result.metrics`. Nothing replaces
    the previous outputs in `output_dir` before everything is written (see `staged_outputs`).

    Args:
        where: how messages name the inputs (folders, a dataset split).
        ground_truth, durations: DCASE TSVs (see `io`); without durations, the audio's lengths are used. Both, and
            `threshold_sweep`, only serve scoring.
        threshold_sweep: also compute PSDS from this many operating points (see `evaluate_result`); 0: off.
        skipped: `(filename, reason)` of inputs the caller's `check_audio_items` left out (listed in
            `skipped_audio.tsv`).
        detector: what scores the files (see `detect`).

    Raises:
        InputError: as `read_reference`, `check_reference_audio`, `detect` and `evaluate_result`.
    """
    reference = lengths = None
    if ground_truth is not None:
        reference, lengths = read_reference(ground_truth, durations, settings.labels)
        check_reference_audio(reference, ground_truth, items, where, skip_bad_audio)
    if threshold_sweep and reference is None:
        raise InputError("threshold_sweep is for scoring: give ground truth too")
    check_settings(settings, feature_extractor)
    skipped = list(skipped)
    if check_audio:
        items, more = check_audio_items(items, skip_bad_audio)
        skipped += more
    with staged_outputs(output_dir) as staging:
        result = _detect_into(staging, model, feature_extractor, list(items), settings, skip_bad_audio, max_plots,
                              plot_top_k, reference, reference is not None, progress, skipped, Path(output_dir),
                              detector)
        if reference is not None:
            result.metrics = evaluate_result(result, reference, lengths, settings, threshold_sweep)
            result.metrics["skipped_files"] = [name for name, _ in result.skipped]
            write_metrics(result.metrics, staging, settings.describe())
    return result


# ---------------------------------------------------------------------------------------------------------- evaluation


def read_reference(
    ground_truth: str | Path, durations: str | Path | None, labels: Sequence[str] | None
) -> tuple[pd.DataFrame, dict[str, float] | None]:
    """The checked ground truth (labels must be among `labels`, when given) and durations.

    Raises:
        InputError naming the file and line, or a ground truth without events.
    """
    table = read_ground_truth_tsv(ground_truth, labels=labels)
    lengths = read_durations_tsv(durations) if durations is not None else None
    if table["event_label"].dropna().empty:
        raise InputError(f"{ground_truth}: no events to score against")
    check_durations_cover(table, lengths, ground_truth, durations)
    return table, lengths


def check_reference_audio(
    reference: pd.DataFrame, ground_truth: str | Path, items: Sequence[AudioItem], where: str, skip: bool
) -> list[str]:
    """Ground-truth files that are not among the inputs: an `InputError` naming them, or with `skip` a logged
    list."""
    names = {item.name for item in items}
    missing = [name for name in dict.fromkeys(reference["filename"]) if name not in names]
    if missing and not skip:
        raise InputError(
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
    """Metrics of a detection run over the ground-truth files it processed (see `metrics.evaluate_detection`): F1
    scores of its events, PSDS of its scores, and with `threshold_sweep` N also PSDS from the events at the N
    operating points `(k + 0.5) / N`; files skipped or missing are left out and listed in `excluded_files`.

    Raises:
        InputError: no ground-truth file was processed, or the metrics refuse the inputs.
    """
    files = list(dict.fromkeys(reference["filename"]))
    evaluated = [name for name in files if name in result.scores]
    excluded = [name for name in files if name not in result.scores]
    if not evaluated:
        raise InputError("none of the ground-truth files was processed; nothing to score")
    reference = reference[reference["filename"].isin(evaluated)].reset_index(drop=True)
    lengths = {name: (durations[name] if durations is not None else result.durations[name]) for name in evaluated}
    classes = sorted(reference["event_label"].dropna().unique())
    columns = [settings.labels.index(label) for label in classes]

    def detections(events_by_file) -> pd.DataFrame:
        table = events_to_dataframe({name: events_by_file[name] for name in evaluated})
        return table[table["event_label"].isin(classes)] if len(table) else table

    scores = {
        audio_id(name): scores_dataframe(
            result.scores[name].scores[:, columns], result.scores[name].boundaries, classes
        )
        for name in evaluated
    }
    try:
        metrics = evaluate_detection(detections(result.events), reference, lengths, scores)
        if threshold_sweep:
            metrics["threshold_sweep"] = threshold_sweep_psds(
                threshold_sweep,
                lambda threshold: detections({
                    name: frame_scores_events(
                        result.scores[name], threshold, None, settings.min_duration, settings.min_gap
                    )
                    for name in evaluated
                }),
                reference,
                lengths,
            )
    except InputError:
        raise
    except ValueError as error:
        raise InputError(f"scoring failed: {error}") from None
    metrics["excluded_files"] = excluded
    return metrics


def threshold_sweep_psds(num_thresholds: int, events_at, reference: pd.DataFrame, durations) -> dict:
    """PSDS1 and PSDS2 from the detections at `num_thresholds` operating points `(k + 0.5) / N` (as DCASE did
    before scores-based PSDS); `events_at(threshold)` gives the detection table at a threshold."""
    thresholds = (np.arange(num_thresholds) + 0.5) / num_thresholds
    operating_points = {float(threshold): events_at(float(threshold)) for threshold in thresholds}
    # Piecewise-constant scores once, for both scenarios.
    sweep_scores = operating_points_to_scores(operating_points, reference, durations)
    return {
        "num_thresholds": num_thresholds,
        "psds1": psds(sweep_scores, reference, durations, 1)["psds"],
        "psds2": psds(sweep_scores, reference, durations, 2)["psds"],
    }


def write_metrics(metrics: dict, output_dir: str | Path, settings: dict | None = None) -> Path:
    """Write `metrics.json` (with `settings`, when given) into `output_dir`; returns its path."""
    document = dict(metrics)
    if settings is not None:
        document["settings"] = settings
    path = Path(output_dir, "metrics.json")
    path.write_text(json.dumps(document, indent=2, allow_nan=False, default=str) + "\n")
    return path


def metrics_table(metrics: dict) -> str:
    """The metrics as text (`metrics.format_metrics_table`), with the threshold sweep's PSDS and the count of
    ground-truth files left unscored."""
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


# ---------------------------------------------------------------------------------------------- existing predictions


def score_predictions(
    predictions: str | Path,
    ground_truth: str | Path,
    durations: str | Path,
    output_dir: str | Path,
    psds_predictions: str | Path | None = None,
    threshold: float | Mapping[str, float] | str | Path | None = None,
    class_map: str | Path | ClassMap | None = None,
    median_filter_seconds: float | None = None,
    min_duration: float = 0.0,
    min_gap: float = 0.0,
    threshold_sweep: int = 0,
) -> dict:
    """Score existing predictions against the ground truth, writing `metrics.json` (and `events.tsv` when the
    events come from score tables) into `output_dir`, in place of the previous ones only once all is computed (see
    `staged_outputs`; an events file there that this run does not write is left alone, as it may be the
    predictions).

    Args:
        predictions: an events TSV/CSV (F1 scores; PSDS from `psds_predictions` when given), a directory of
            per-threshold detections (F1 scores at `threshold`, default 0.5, which must be one of them; PSDS from
            all), or a directory of score tables (events thresholded as in a detection run, with `threshold`,
            `class_map`, `median_filter_seconds`, `min_duration` and `min_gap`; PSDS from the filtered scores).
        psds_predictions: a directory of per-threshold detections or of score tables to compute PSDS from.
        threshold: as `postprocessing.resolve_thresholds` takes it, for the ground truth's classes.
        class_map: restricts the ground truth's labels to its classes, and gives its thresholds.
        threshold_sweep: also compute PSDS from this many operating points thresholded from the score tables (of
            `predictions`, filtered as for the F1 scores, or of `psds_predictions`); refused without score tables.

    Returns:
        `metrics.evaluate_detection`'s dict plus `predictions: {"path", "kind"}`.

    Raises:
        InputError naming the file: malformed tables, predictions of neither kind, no operating point at the
            threshold, or predictions the metrics refuse.
    """
    if class_map is not None and not isinstance(class_map, ClassMap):
        class_map = load_class_map(class_map)
    reference, lengths = read_reference(ground_truth, durations, class_map.labels if class_map else None)
    kind = predictions_kind(predictions)
    psds_source = psds_kind = None
    if psds_predictions is not None:
        psds_kind = predictions_kind(psds_predictions)
        if psds_kind == "events":
            raise InputError(f"{psds_predictions}: PSDS predictions must be a directory (operating points or scores)")
        read = read_operating_points if psds_kind == "operating_points" else read_score_tsvs
        psds_source = read(psds_predictions)
    if threshold_sweep and "scores" not in (kind, psds_kind):
        raise InputError(
            f"--threshold_sweep needs score tables to threshold, but {predictions} holds {kind.replace('_', ' ')}"
            + (f" and {psds_predictions} {psds_kind.replace('_', ' ')}" if psds_kind else "")
            + " (give a directory of score TSVs as --predictions or --psds_predictions)"
        )
    classes = sorted(reference["event_label"].dropna().unique())
    names = {audio_id(name): name for name in reference["filename"]}

    try:
        events_tables = None
        if kind == "events":
            detections = detection_table(predictions)
        elif kind == "operating_points":
            operating_points = read_operating_points(predictions)
            detections = operating_points[_operating_point(operating_points, threshold, predictions)]
            psds_source = operating_points if psds_source is None else psds_source
        else:
            scores = read_score_tsvs(predictions)
            thresholds = resolve_thresholds(classes, threshold, _restricted_class_map(class_map, classes))
            events = {}
            for key, table in scores.items():
                _check_score_classes(table, classes, f"{predictions}/{key}.tsv")
                scores[key], events[names.get(key, f"{key}.wav")] = _table_events(
                    table[["onset", "offset", *classes]], classes, thresholds, median_filter_seconds, min_duration,
                    min_gap,
                )
            events_tables = events
            detections = events_to_dataframe(events)
            psds_source = scores if psds_source is None else psds_source
        metrics = evaluate_detection(detections, reference, lengths, psds_source)
        if threshold_sweep:
            sweep_tables = scores if kind == "scores" else psds_source
            if kind != "scores":
                for key, table in sweep_tables.items():
                    _check_score_classes(table, classes, f"{psds_predictions}/{key}.tsv")
            metrics["threshold_sweep"] = threshold_sweep_psds(
                threshold_sweep,
                lambda t: events_to_dataframe({
                    names.get(key, f"{key}.wav"): _table_events(
                        table[["onset", "offset", *classes]], classes, t, None, min_duration, min_gap
                    )[1]
                    for key, table in sweep_tables.items()
                }),
                reference,
                lengths,
            )
    except InputError:
        raise
    except ValueError as error:
        raise InputError(f"scoring failed: {error}") from None
    metrics["predictions"] = {"path": str(predictions), "kind": kind}
    with staged_outputs(output_dir, SCORE_ONLY_OUTPUTS) as staging:
        if events_tables is not None:
            write_events_tsv(events_tables, staging / "events.tsv")
        write_metrics(metrics, staging)
    return metrics


def _check_score_classes(table: pd.DataFrame, classes: list[str], where: str) -> None:
    missing = [label for label in classes if label not in table.columns]
    if missing:
        raise InputError(f"{where}: no scores for classes {missing}")


def check_durations_cover(reference: pd.DataFrame, lengths: dict[str, float] | None, ground_truth, durations) -> None:
    """Refuse durations that miss files of the ground truth, naming the files, before anything runs."""
    if lengths is None:
        return
    missing = [name for name in dict.fromkeys(reference["filename"]) if name not in lengths]
    if missing:
        raise InputError(f"{durations}: no duration for {len(missing)} files of {ground_truth}, e.g. "
                         f"{', '.join(missing[:5])}")


def _operating_point(operating_points: dict[float, pd.DataFrame], threshold, directory) -> float:
    """The operating point at the F1 threshold (one number; default `DEFAULT_THRESHOLD`)."""
    wanted = DEFAULT_THRESHOLD if threshold is None else threshold
    if isinstance(wanted, bool) or not isinstance(wanted, (int, float, np.number)):
        raise InputError(
            f"{directory}: per-threshold detections are chosen by one threshold, not by per-class thresholds "
            f"({wanted!r})"
        )
    matches = [t for t in operating_points if math.isclose(t, wanted, abs_tol=1e-9)]
    if not matches:
        raise InputError(
            f"{directory}: no detections at threshold {wanted:g} for the F1 scores (it has {min(operating_points):g} "
            f"... {max(operating_points):g}); pass one of its thresholds (--threshold), or the detections file as the "
            "predictions and this directory for PSDS (--psds_predictions)"
        )
    return matches[0]


def _restricted_class_map(class_map: ClassMap | None, classes: list[str]) -> ClassMap | None:
    """The class map's thresholds for the ground truth's classes only (scores of a run cover all the map's)."""
    if class_map is None or not class_map.thresholds:
        return None
    return ClassMap({c: class_map.classes[c] for c in classes}, class_map.num_source_classes,
                    {c: class_map.thresholds[c] for c in classes})


def _table_events(table: pd.DataFrame, classes: list[str], thresholds, median_filter_seconds, min_duration, min_gap):
    """A score table median filtered (its mean step as the step) and its events, as in a detection run."""
    onsets, offsets = table["onset"].to_numpy(np.float64), table["offset"].to_numpy(np.float64)
    boundaries = np.append(onsets, offsets[-1])
    step = float(np.mean(np.diff(boundaries)))
    filtered = median_filter_scores(table[classes].to_numpy(np.float32), step, median_filter_seconds)
    events = scores_to_events(filtered, boundaries, classes, thresholds, min_duration, min_gap)
    filtered_table = table.copy()
    for column, label in enumerate(classes):
        filtered_table[label] = filtered[:, column].astype(np.float32)
    return filtered_table, events
