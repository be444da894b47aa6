"""Sound event detection metrics, computed by the libraries DCASE uses, on DCASE-format inputs.

- `intersection_f1`: psds_eval's intersection-based macro F1 (the metric of the HTS-AT paper's DESED results);
- `collar_event_f1`: sed_eval's collar-based event F1 (200 ms collar, 20 % offset tolerance);
- `segment_f1`: sed_eval's segment-based F1 (1 s segments);
- `psds`: PSDS scenario 1 or 2 with sed_scores_eval, from score tables or from detections at several thresholds;
- `evaluate_detection` gathers them into one JSON-serialisable dict, `format_metrics_table` prints it.

This is the only module that needs the metric libraries (`pip install 'htsat-hf[sed]'`); each is imported when a
metric that uses it runs, with an `ImportError` saying what to install. Reading and writing the tables (formats in
`htsat_hf.sed.io`) does not need them.

The evaluated classes are those of the ground truth; detections of another class are an error (a class map or
label file mismatch), as are detections for files absent from the ground truth. Every metric covers every file of
the ground truth, including files without events and files without detections.

F1 values are fractions in [0, 1] (the table prints percentages).
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .io import (
    EVENT_COLUMNS,
    audio_id,
    detection_table,
    durations_mapping,
    ground_truth_table,
    read_score_tsvs,
    scores_dataframe,
)

__all__ = [
    "PSDS_SCENARIOS",
    "collar_event_f1",
    "evaluate_detection",
    "format_metrics_table",
    "intersection_f1",
    "operating_points_to_scores",
    "psds",
    "segment_f1",
]

# DCASE task 4 settings (since 2021) for sed_scores_eval.intersection_based.psds.
PSDS_SCENARIOS = {
    1: {
        "dtc_threshold": 0.7,
        "gtc_threshold": 0.7,
        "cttc_threshold": None,
        "alpha_ct": 0.0,
        "alpha_st": 1.0,
        "max_efpr": 100.0,
    },
    2: {
        "dtc_threshold": 0.1,
        "gtc_threshold": 0.1,
        "cttc_threshold": 0.3,
        "alpha_ct": 0.5,
        "alpha_st": 1.0,
        "max_efpr": 100.0,
    },
}

EventTable = str | Path | pd.DataFrame
Durations = str | Path | pd.DataFrame | Mapping[str, float]

# The versions the DESED tests check against; sed_eval's dcase_util imports pkg_resources (setuptools < 81).
_INSTALL = "pip install 'htsat-hf[sed]' (sed_scores_eval==0.0.4 sed_eval psds_eval==0.5.3 'setuptools<81')"


def _library(module: str):
    """Import a metric library, or fail saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"this metric needs {module.split('.')[0]}: {_INSTALL}. Import failed with: {error}"
        ) from error


# ------------------------------------------------------------------------------------------------------------ inputs


@dataclass
class _Inputs:
    ground_truth: pd.DataFrame  # with empty-file rows
    labels: list[str]
    files: list[str]  # ground-truth files, in order of first appearance
    durations: dict[str, float] | None


def _ground_truth(ground_truth: EventTable, durations: Durations | None) -> _Inputs:
    table = ground_truth_table(ground_truth)
    labels = sorted(table["event_label"].dropna().unique())
    if not labels:
        raise ValueError("the ground truth has no events")
    files = list(dict.fromkeys(table["filename"]))
    ids = pd.Series([audio_id(name) for name in files])
    if ids.duplicated().any():
        raise ValueError(f"ground-truth files {ids[ids.duplicated()].tolist()[:3]} differ only by extension")
    inputs = _Inputs(table, labels, files, None)
    if durations is not None:
        durations = durations_mapping(durations)
        missing = [name for name in files if name not in durations]
        extra = sorted(set(durations) - set(files))
        if missing or extra:
            raise ValueError(
                f"durations and ground truth must list the same files: {len(missing)} ground-truth files lack a "
                f"duration (e.g. {missing[:3]}), {len(extra)} durations are for files absent from the ground truth "
                f"(e.g. {extra[:3]})"
            )
        inputs.durations = durations
    return inputs


def _detections(detections: EventTable, inputs: _Inputs, what: str = "detections") -> pd.DataFrame:
    table = detection_table(detections, inputs.labels, what)
    unknown = sorted(set(table["filename"]) - set(inputs.files))
    if unknown:
        raise ValueError(f"{what} for {len(unknown)} files absent from the ground truth, e.g. {unknown[:3]}")
    return table


def _per_file_records(table: pd.DataFrame) -> dict[str, list[dict]]:
    events = table.dropna(subset=["event_label"])
    return {
        filename: group[list(EVENT_COLUMNS)].to_dict("records")
        for filename, group in events.groupby("filename", sort=False)
    }


def _number(value) -> float | None:
    """JSON-friendly float: None for NaN."""
    value = float(value)
    return None if math.isnan(value) else value


# ----------------------------------------------------------------------------------------------------------- metrics


def intersection_f1(
    detections: EventTable,
    ground_truth: EventTable,
    durations: Durations,
    dtc: float = 0.5,
    gtc: float = 0.5,
    cttc: float = 0.3,
) -> dict:
    """Intersection-based macro F1 (psds_eval `compute_macro_f_score`), the metric of the HTS-AT paper's DESED
    results (dtc = gtc = 0.5, cttc = 0.3). A cross-trigger counts as a false positive.

    psds_eval 0.5.3 derives a class's ground-truth count as TP / TP-rate, which is NaN for a class without true
    positives, and then leaves that class out of its average; such a class scores 0 here (its F1 is 0: it has
    ground-truth events and none is found), so the macro average covers every class.

    Returns:
        `{"macro_f1", "class_wise": {label: f1}, "dtc", "gtc", "cttc"}`.
    """
    inputs = _ground_truth(ground_truth, durations)
    return _intersection_f1(_detections(detections, inputs), inputs, dtc, gtc, cttc)


def _intersection_f1(detections: pd.DataFrame, inputs: _Inputs, dtc: float, gtc: float, cttc: float) -> dict:
    metadata = pd.DataFrame({"filename": list(inputs.durations), "duration": list(inputs.durations.values())})
    # psds_eval 0.5.3 uses pandas arguments that pandas 3 deprecates, and divides 0 by 0 for classes without true
    # positives (handled below): its warnings say nothing to the user.
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.filterwarnings("ignore", module="psds_eval")
        evaluator = _library("psds_eval").PSDSEval(dtc, gtc, cttc, ground_truth=inputs.ground_truth, metadata=metadata)
        per_class = None if detections.empty else evaluator.compute_macro_f_score(detections)[1]
    if per_class is None:
        class_wise = dict.fromkeys(inputs.labels, 0.0)
    else:
        class_wise = {label: float(np.nan_to_num(per_class[label], nan=0.0)) for label in inputs.labels}
    return {
        "macro_f1": float(np.mean(list(class_wise.values()))),
        "class_wise": class_wise,
        "dtc": dtc,
        "gtc": gtc,
        "cttc": cttc,
    }


def collar_event_f1(
    detections: EventTable, ground_truth: EventTable, collar: float = 0.2, percentage_of_length: float = 0.2
) -> dict:
    """Collar-based event F1 (sed_eval `EventBasedMetrics`): a detection matches an event of its class when its
    onset is within `collar` seconds, and its offset within max(`collar`, `percentage_of_length` x event length).
    Every ground-truth file is evaluated; a class without detections scores 0 (`zero_score`).

    Returns:
        `{"macro_f1", "micro_f1", "class_wise": {label: f1}, "collar", "percentage_of_length"}`.
    """
    inputs = _ground_truth(ground_truth, None)
    return _collar_event_f1(_detections(detections, inputs), inputs, collar, percentage_of_length)


def _collar_event_f1(detections: pd.DataFrame, inputs: _Inputs, collar: float, percentage_of_length: float) -> dict:
    metric = _library("sed_eval").sound_event.EventBasedMetrics(
        event_label_list=inputs.labels,
        t_collar=float(collar),
        percentage_of_length=float(percentage_of_length),
        empty_system_output_handling="zero_score",
    )
    _evaluate_files(metric, detections, inputs)
    return {**_sed_eval_f1(metric, inputs.labels), "collar": collar, "percentage_of_length": percentage_of_length}


def segment_f1(detections: EventTable, ground_truth: EventTable, segment_seconds: float = 1.0) -> dict:
    """Segment-based F1 (sed_eval `SegmentBasedMetrics`) on `segment_seconds` segments. Each file is evaluated up
    to its latest reference or detected offset (sed_eval's default, as DCASE reports it); a class without
    detections scores 0 (`zero_score`) instead of leaving the macro average.

    Returns:
        `{"macro_f1", "micro_f1", "class_wise": {label: f1}, "segment_seconds"}`.
    """
    inputs = _ground_truth(ground_truth, None)
    return _segment_f1(_detections(detections, inputs), inputs, segment_seconds)


def _segment_f1(detections: pd.DataFrame, inputs: _Inputs, segment_seconds: float) -> dict:
    metric = _library("sed_eval").sound_event.SegmentBasedMetrics(
        event_label_list=inputs.labels, time_resolution=float(segment_seconds)
    )
    # The constructor does not take it, but the base class's F1 code reads it.
    metric.empty_system_output_handling = "zero_score"
    _evaluate_files(metric, detections, inputs)
    return {**_sed_eval_f1(metric, inputs.labels), "segment_seconds": segment_seconds}


def _evaluate_files(metric, detections: pd.DataFrame, inputs: _Inputs) -> None:
    reference = _per_file_records(inputs.ground_truth)
    estimated = _per_file_records(detections)
    for filename in inputs.files:
        metric.evaluate(
            reference_event_list=reference.get(filename, []), estimated_event_list=estimated.get(filename, [])
        )


def _sed_eval_f1(metric, labels: list[str]) -> dict:
    results = metric.results()
    return {
        "macro_f1": _number(results["class_wise_average"]["f_measure"]["f_measure"]),
        "micro_f1": _number(results["overall"]["f_measure"]["f_measure"]),
        "class_wise": {label: _number(results["class_wise"][label]["f_measure"]["f_measure"]) for label in labels},
    }


def operating_points_to_scores(
    operating_points: Mapping[float, EventTable], ground_truth: EventTable, durations: Durations
) -> dict[str, pd.DataFrame]:
    """Piecewise-constant sed_scores_eval scores from detections at several thresholds: at each time, a class's
    score is the highest threshold whose detections contain that time, 0 where no threshold detects it.
    Thresholding these scores just below a threshold T gives back the detections at T when detections at higher
    thresholds are contained in those at lower ones (as with a monotonic post-processing), so that PSDS computed
    on them is the PSDS of those operating points.

    Args:
        operating_points: `{threshold: detections}` (paths or DataFrames); thresholds > 0.
        ground_truth, durations: as for `psds`; every ground-truth file gets a table spanning
            [0, max(duration, last detected offset)].

    Returns:
        `{audio id: score DataFrame}` (see `scores_dataframe`), classes in sorted order.
    """
    inputs = _ground_truth(ground_truth, durations)
    return _operating_points_to_scores(operating_points, inputs)


def _operating_points_to_scores(
    operating_points: Mapping[float, EventTable], inputs: _Inputs
) -> dict[str, pd.DataFrame]:
    if not operating_points:
        raise ValueError("no operating points")
    thresholds = np.array([float(threshold) for threshold in operating_points], dtype=np.float64)
    as_float32 = thresholds.astype(np.float32)
    if not np.all(np.isfinite(thresholds)) or np.any(as_float32 <= 0) or len(np.unique(as_float32)) != len(thresholds):
        raise ValueError(
            f"operating-point thresholds must be distinct positive numbers (0 is the score where nothing is "
            f"detected), got {sorted(thresholds.tolist())}"
        )
    tables = []
    for threshold, detections in operating_points.items():
        table = _detections(detections, inputs, what=f"detections at threshold {threshold}")
        tables.append(table.assign(threshold=float(threshold)))
    events = pd.concat(tables, ignore_index=True)
    events["class_index"] = events["event_label"].map({label: k for k, label in enumerate(inputs.labels)})
    by_file = {filename: group for filename, group in events.groupby("filename", sort=False)}

    scores = {}
    for filename in inputs.files:
        group = by_file.get(filename)
        if group is None:
            times = np.array([0.0, inputs.durations[filename]])
            values = np.zeros((1, len(inputs.labels)), dtype=np.float32)
        else:
            onsets, offsets = group["onset"].to_numpy(), group["offset"].to_numpy()
            times = np.unique(np.concatenate(([0.0, inputs.durations[filename]], onsets, offsets)))
            values = np.zeros((len(times) - 1, len(inputs.labels)), dtype=np.float32)
            first, stop = np.searchsorted(times, onsets), np.searchsorted(times, offsets)
            lengths = stop - first
            # Row indices of every segment covered by every event, as one flat array of concatenated ranges.
            rows = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths - first, lengths)
            np.maximum.at(
                values,
                (rows, np.repeat(group["class_index"].to_numpy(), lengths)),
                np.repeat(group["threshold"].to_numpy(np.float32), lengths),
            )
        scores[audio_id(filename)] = scores_dataframe(values, times, inputs.labels)
    return scores


def psds(
    scores_or_operating_points: str | Path | Mapping[str, pd.DataFrame] | Mapping[float, EventTable],
    ground_truth: EventTable,
    durations: Durations,
    scenario: int = 1,
) -> dict:
    """Polyphonic sound detection score with sed_scores_eval (`intersection_based.psds`), DCASE scenario 1
    (dtc = gtc = 0.7, alpha_ct = 0, alpha_st = 1, max eFPR 100/h) or 2 (dtc = gtc = 0.1, cttc = 0.3,
    alpha_ct = 0.5, alpha_st = 1, max eFPR 100/h).

    Args:
        scores_or_operating_points: either scores, as `{audio id: score DataFrame}` (sed_scores_eval format, audio
            id = file name without extension) or the path of a directory of `<audio id>.tsv` score files; or
            operating points, as `{threshold: detections}` (paths or DataFrames, see `read_operating_points`),
            turned into piecewise-constant scores by `operating_points_to_scores`.
        ground_truth: ground-truth TSV path or DataFrame; its classes are the evaluated ones, each needs an event.
        durations: durations TSV path, DataFrame or `{filename: seconds}` for exactly the ground-truth files.
        scenario: 1 or 2.

    Returns:
        `{"psds", "class_wise": {label: psds}, "scenario", "dtc_threshold", "gtc_threshold", "cttc_threshold",
        "alpha_ct", "alpha_st", "max_efpr"}`.
    """
    inputs = _ground_truth(ground_truth, durations)
    return _psds(_scores(scores_or_operating_points, inputs), inputs, scenario)


def _scores(scores_or_operating_points, inputs: _Inputs) -> dict[str, pd.DataFrame]:
    source = scores_or_operating_points
    if isinstance(source, (str, Path)):
        if not Path(source).is_dir():
            raise ValueError(f"{source} is not a directory of sed_scores_eval score files")
        source = read_score_tsvs(source)
    if not isinstance(source, Mapping) or not source:
        raise ValueError("expected a non-empty {audio id: score DataFrame} or {threshold: detections} mapping")
    keys = list(source)
    if all(isinstance(key, (int, float, np.number)) and not isinstance(key, bool) for key in keys):
        return _operating_points_to_scores(source, inputs)
    if not all(isinstance(key, str) for key in keys):
        raise ValueError("mapping keys must be all audio ids (scores) or all thresholds (operating points)")

    expected = {audio_id(filename) for filename in inputs.files}
    missing, extra = sorted(expected - set(keys)), sorted(set(keys) - expected)
    if missing or extra:
        raise ValueError(
            f"score tables must cover exactly the ground-truth files, keyed by audio id (file name without "
            f"extension): {len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unknown (e.g. {extra[:3]})"
        )
    validate_score_dataframe = _library("sed_scores_eval.base_modules.scores").validate_score_dataframe
    scores = {}
    for key in sorted(keys):
        table = source[key]
        try:
            times, classes = validate_score_dataframe(table)
        except ValueError as error:
            raise ValueError(f"score table of {key!r}: {error}") from None
        if sorted(classes) != inputs.labels:
            raise ValueError(f"score table of {key!r} has classes {classes}, the ground truth {inputs.labels}")
        scores[key] = scores_dataframe(table[inputs.labels].to_numpy(), times, inputs.labels)
    return scores


def _psds(scores: dict[str, pd.DataFrame], inputs: _Inputs, scenario: int) -> dict:
    if scenario not in PSDS_SCENARIOS:
        raise ValueError(f"scenario must be one of {sorted(PSDS_SCENARIOS)}, got {scenario!r}")
    parameters = PSDS_SCENARIOS[scenario]
    if len(inputs.labels) == 1 and parameters["cttc_threshold"] is not None:
        # sed_scores_eval 0.0.4 fails (TypeError) on cross-trigger statistics without a second class. With one class
        # nothing can cross-trigger: the term is zero, and the value is the same computation without it.
        parameters = {**parameters, "cttc_threshold": None, "alpha_ct": 0.0}
    sed_scores_eval = _library("sed_scores_eval")
    read_ground_truth_events = _library("sed_scores_eval.base_modules.io").read_ground_truth_events
    value, class_wise, _, _ = sed_scores_eval.intersection_based.psds(
        scores,
        read_ground_truth_events(inputs.ground_truth),
        {audio_id(filename): duration for filename, duration in inputs.durations.items()},
        **parameters,
    )
    return {
        "psds": float(value),
        "class_wise": {label: float(class_wise[label]) for label in inputs.labels},
        "scenario": scenario,
        **parameters,
    }


def evaluate_detection(
    detections: EventTable,
    ground_truth: EventTable,
    durations: Durations,
    scores_or_operating_points: str | Path | Mapping | None = None,
) -> dict:
    """All metrics at once: intersection F1, collar event F1 and segment F1 of `detections`, and PSDS1 and PSDS2 of
    `scores_or_operating_points` when given (see `psds`). Inputs are read and checked once.

    Returns:
        JSON-serialisable `{"num_files", "classes", "intersection_f1", "collar_event_f1", "segment_f1"[, "psds1",
        "psds2"]}`, each metric as returned by its function.
    """
    inputs = _ground_truth(ground_truth, durations)
    table = _detections(detections, inputs)
    results = {
        "num_files": len(inputs.files),
        "classes": inputs.labels,
        "intersection_f1": _intersection_f1(table, inputs, 0.5, 0.5, 0.3),
        "collar_event_f1": _collar_event_f1(table, inputs, 0.2, 0.2),
        "segment_f1": _segment_f1(table, inputs, 1.0),
    }
    if scores_or_operating_points is not None:
        scores = _scores(scores_or_operating_points, inputs)
        results["psds1"] = _psds(scores, inputs, 1)
        results["psds2"] = _psds(scores, inputs, 2)
    return results


def format_metrics_table(metrics: dict) -> str:
    """Plain-text summary of `evaluate_detection`'s dict: one line per metric, then per-class values."""

    def percent(value) -> str:
        return "-" if value is None else f"{100 * value:.2f} %"

    def ratio(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    summary = []
    columns = []  # (header, per-class values, formatter)
    if "intersection_f1" in metrics:
        m = metrics["intersection_f1"]
        name = f"intersection F1 (dtc {m['dtc']:g}, gtc {m['gtc']:g}, cttc {m['cttc']:g})"
        summary.append((name, percent(m["macro_f1"]), "-"))
        columns.append(("intersection F1", m["class_wise"], percent))
    if "collar_event_f1" in metrics:
        m = metrics["collar_event_f1"]
        name = f"collar event F1 (collar {m['collar']:g} s, offset {100 * m['percentage_of_length']:g} % of length)"
        summary.append((name, percent(m["macro_f1"]), percent(m["micro_f1"])))
        columns.append(("collar F1", m["class_wise"], percent))
    if "segment_f1" in metrics:
        m = metrics["segment_f1"]
        name = f"segment F1 ({m['segment_seconds']:g} s segments)"
        summary.append((name, percent(m["macro_f1"]), percent(m["micro_f1"])))
        columns.append(("segment F1", m["class_wise"], percent))
    for key in ("psds1", "psds2"):
        if key in metrics:
            m = metrics[key]
            settings = f"dtc {m['dtc_threshold']:g}, gtc {m['gtc_threshold']:g}"
            if m["cttc_threshold"] is not None:
                settings += f", cttc {m['cttc_threshold']:g}, alpha_ct {m['alpha_ct']:g}"
            settings += f", alpha_st {m['alpha_st']:g}, max eFPR {m['max_efpr']:g}/h"
            summary.append((f"PSDS{m['scenario']} ({settings})", ratio(m["psds"]), "-"))
            columns.append((f"PSDS{m['scenario']}", m["class_wise"], ratio))

    header = ""
    if "num_files" in metrics:
        header = f"{metrics['num_files']} files, {len(metrics['classes'])} classes\n"
    width = max([len("metric")] + [len(row[0]) for row in summary])
    lines = [f"{'metric':<{width}}  {'macro':>9}  {'micro':>9}"]
    lines += [f"{name:<{width}}  {macro:>9}  {micro:>9}" for name, macro, micro in summary]
    if columns:
        labels = list(dict.fromkeys(label for _, values, _ in columns for label in values))
        label_width = max(len("class"), *(len(label) for label in labels))
        widths = [max(len(title), 9) for title, _, _ in columns]
        lines.append("")
        titles = "".join(f"  {title:>{w}}" for (title, _, _), w in zip(columns, widths, strict=True))
        lines.append(f"{'class':<{label_width}}{titles}")
        for label in labels:
            cells = "".join(
                f"  {fmt(values.get(label)):>{w}}" for (_, values, fmt), w in zip(columns, widths, strict=True)
            )
            lines.append(f"{label:<{label_width}}{cells}")
    return header + "\n".join(lines)
