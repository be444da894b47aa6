"""The tables of sound event detection, read and written with pandas: DCASE event tables, durations, per-threshold
detections, sed_scores_eval score tables and per-class thresholds. Nothing here needs the metric libraries.

Formats (tab-separated, one header line; `.csv` event tables are comma-separated):

- ground truth: `filename onset offset event_label`; a file without events has one row with only its filename;
- detections (`events.tsv`): `filename onset offset event_label` (a run adds the event's peak `score`; extra
  columns are ignored when reading, so the DCASE baseline's `predictions0.5.csv` with its index column reads too);
- durations: `filename duration`, in seconds;
- operating points: a directory of detection tables whose names end with their threshold (the DCASE baseline's
  `predictions_th_0.50.tsv`, sed_scores_eval's `0.500.tsv`);
- scores: one table per audio file, `<audio id>.tsv` where the audio id is the file name without its extension,
  columns `onset offset <class 1> ... <class K>`, one row per frame (sed_scores_eval's format, written here exactly
  as its `write_sed_scores` does: `DataFrame.to_csv(sep="\\t", index=False)`);
- thresholds: JSON `{"label": threshold, ...}`, or `label<TAB>threshold` lines without header (`.tsv`, `.txt`).

Onsets, offsets and durations are seconds from the start of the file. Every problem with a table is an
[`InputError`] naming the file and line (or, for a DataFrame, its row).

pandas is imported when a table is read or written, so that thresholds files (and `import htsat_hf`, whose pipeline
reads them) do not need it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = [
    "EVENT_COLUMNS",
    "audio_id",
    "detection_table",
    "durations_mapping",
    "events_to_dataframe",
    "ground_truth_table",
    "merge_intervals",
    "merge_overlapping_events",
    "predictions_kind",
    "read_detection_tsv",
    "read_durations_tsv",
    "read_ground_truth_tsv",
    "read_operating_points",
    "read_score_tsvs",
    "read_text_file",
    "read_thresholds",
    "scores_dataframe",
    "write_durations_tsv",
    "write_events_tsv",
    "write_score_tsv",
    "write_skipped_audio_tsv",
]

EVENT_COLUMNS = ("filename", "onset", "offset", "event_label")


def _pandas():
    try:
        import pandas
    except ImportError as error:
        raise ImportError("detection tables are read and written with pandas: pip install pandas") from error
    return pandas


def audio_id(filename: str) -> str:
    """sed_scores_eval's key for a file: its name without the last extension (`a.b.wav` -> `a.b`)."""
    return filename.rsplit(".", maxsplit=1)[0]


# ------------------------------------------------------------------------------------------------------ event tables


def read_ground_truth_tsv(path: str | Path, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Read and check a ground-truth TSV.

    Args:
        path: TSV with columns `filename onset offset event_label`.
        labels: when given, the allowed event labels.

    Returns:
        DataFrame with columns `filename` (str), `onset`, `offset` (float64 seconds), `event_label` (str), in file
        order; files without events keep their row, with NaN onset, offset and label. Overlapping events of one
        class in one file (as older DESED releases have) are merged into one, with a warning naming the file and
        lines (see `merge_overlapping_events`): the metric libraries refuse them, and strong-label training
        counts their union.

    Raises:
        InputError naming the file and line: a missing or unreadable file, missing columns, empty filename, a row
        with only some of onset, offset and label, non-numeric or negative onset, onset > offset, a label outside
        `labels`.
    """
    return _check_events(_read_table(path), str(path), _file_line, labels, keep_empty_rows=True)


def read_detection_tsv(path: str | Path, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Read and check a detection table (TSV, or comma-separated for `.csv`); the checks are those of
    `read_ground_truth_tsv`. Rows without an event are dropped.

    Returns:
        DataFrame with columns `filename onset offset event_label`.
    """
    return _check_events(_read_table(path), str(path), _file_line, labels, keep_empty_rows=False)


def ground_truth_table(ground_truth: str | Path | pd.DataFrame, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """A checked ground-truth table from a TSV path or a DataFrame (errors name its row), as
    `read_ground_truth_tsv` returns it."""
    pd = _pandas()
    if isinstance(ground_truth, pd.DataFrame):
        return _check_events(ground_truth.reset_index(drop=True), "ground truth DataFrame", _frame_row, labels, True)
    return read_ground_truth_tsv(ground_truth, labels)


def detection_table(
    detections: str | Path | pd.DataFrame, labels: Sequence[str] | None = None, what: str = "detections"
) -> pd.DataFrame:
    """A checked detection table from a TSV/CSV path or a DataFrame (errors name `what` and the row), as
    `read_detection_tsv` returns it."""
    pd = _pandas()
    if isinstance(detections, pd.DataFrame):
        return _check_events(detections.reset_index(drop=True), f"{what} DataFrame", _frame_row, labels, False)
    return read_detection_tsv(detections, labels)


def read_operating_points(directory: str | Path) -> dict[float, pd.DataFrame]:
    """Detection tables at several thresholds from a directory of TSVs whose names end with their threshold.

    Returns:
        `{threshold: detections}` (see `read_detection_tsv`), sorted by threshold.

    Raises:
        InputError: not a directory, a file name without a threshold, two files for one threshold, no TSV.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory of detection TSVs")
    tables = {}
    for path in sorted(directory.glob("*.tsv")):
        match = re.search(r"(\d+(?:\.\d+)?)$", path.stem)
        if match is None:
            raise InputError(
                f"{path}: the file name does not end with a threshold (expected e.g. predictions_th_0.50.tsv)"
            )
        threshold = float(match.group(1))
        if threshold in tables:
            raise InputError(f"{path}: a second file for threshold {threshold}")
        tables[threshold] = read_detection_tsv(path)
    if not tables:
        raise InputError(f"{directory} holds no .tsv detection files")
    return dict(sorted(tables.items()))


def events_to_dataframe(events: Mapping[str, Sequence[tuple]]) -> pd.DataFrame:
    """Detection table from `{filename: [(onset, offset, label) or (onset, offset, label, score)]}` (an `Event` is
    such a tuple).

    Returns:
        DataFrame with columns `filename onset offset event_label`, plus `score` when every event has one.
    """
    pd = _pandas()
    rows = [(filename, *event) for filename, file_events in events.items() for event in file_events]
    bad = [row for row in rows if len(row) not in (4, 5)]
    if bad:
        raise ValueError(f"events must be (onset, offset, label) or (onset, offset, label, score), got {bad[0][1:]}")
    table = pd.DataFrame(
        {
            "filename": [row[0] for row in rows],
            "onset": np.array([row[1] for row in rows], dtype=np.float64),
            "offset": np.array([row[2] for row in rows], dtype=np.float64),
            "event_label": [row[3] for row in rows],
        }
    )
    scores = [row[4] if len(row) == 5 else None for row in rows]
    if rows and all(score is not None for score in scores):
        table["score"] = np.array(scores, dtype=np.float64)
    return table


def write_events_tsv(events: pd.DataFrame | Mapping[str, Sequence[tuple]], path: str | Path) -> None:
    """Write detections as a DCASE TSV (`filename onset offset event_label`, plus `score` when the events carry
    one), times at full precision.

    Args:
        events: a detection DataFrame or `{filename: events}` (see `events_to_dataframe`).
        path: output file.
    """
    pd = _pandas()
    table = events if isinstance(events, pd.DataFrame) else events_to_dataframe(events)
    missing = [column for column in EVENT_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"events are missing columns {missing}")
    columns = list(EVENT_COLUMNS) + (["score"] if "score" in table.columns else [])
    table[columns].to_csv(path, sep="\t", index=False)


# --------------------------------------------------------------------------------------------------------- durations


def read_durations_tsv(path: str | Path) -> dict[str, float]:
    """`{filename: duration in seconds}` from a TSV with columns `filename duration`.

    Raises:
        InputError naming the file and line: missing columns, an empty filename, a duration that is not a positive
        number, a duplicate filename.
    """
    return _check_durations(_read_table(path), str(path), _file_line)


def durations_mapping(durations: str | Path | pd.DataFrame | Mapping[str, float]) -> dict[str, float]:
    """`{filename: seconds}` from a durations TSV path, a `filename duration` DataFrame or a mapping, checked as
    `read_durations_tsv` checks a file (errors name the row of a DataFrame or mapping)."""
    pd = _pandas()
    if isinstance(durations, (str, Path)):
        return read_durations_tsv(durations)
    if not isinstance(durations, pd.DataFrame):
        durations = pd.DataFrame({"filename": list(durations), "duration": list(durations.values())})
    return _check_durations(durations.reset_index(drop=True), "durations", _frame_row)


def write_durations_tsv(durations: Mapping[str, float], path: str | Path) -> None:
    """Write `{filename: seconds}` as a durations TSV (`filename duration`)."""
    pd = _pandas()
    pd.DataFrame({"filename": list(durations), "duration": list(durations.values())}).to_csv(
        path, sep="\t", index=False
    )


def write_skipped_audio_tsv(skipped: Sequence[tuple[str, str]], path: str | Path) -> None:
    """Write the `(filename, reason)` of files left out of a run as a TSV (`filename reason`)."""
    pd = _pandas()
    pd.DataFrame(list(skipped), columns=["filename", "reason"]).to_csv(path, sep="\t", index=False)


# ------------------------------------------------------------------------------------------------------------ scores


def scores_dataframe(scores: np.ndarray, frame_times: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """One file's scores as a sed_scores_eval table.

    Args:
        scores: `(frames, classes)` scores.
        frame_times: `(frames + 1,)` increasing frame boundaries in seconds (`FrameScores.boundaries`).
        labels: `classes` labels.

    Returns:
        DataFrame `onset offset <labels...>` with one row per frame. The score columns are float32 (the model's
        precision): sed_scores_eval 0.0.4 hands a table's score columns to a Cython routine that needs a writable
        buffer, and pandas 3 exposes columns as read-only arrays; float32 columns make sed_scores_eval's own
        conversion to float64 produce a fresh, writable array.
    """
    pd = _pandas()
    scores = np.asarray(scores)
    times = np.asarray(frame_times, dtype=np.float64)
    labels = list(labels)
    if scores.ndim != 2 or scores.shape[1] != len(labels):
        raise ValueError(f"scores must be (frames, {len(labels)} classes), got shape {scores.shape}")
    if times.shape != (scores.shape[0] + 1,) or not np.all(np.diff(times) > 0):
        raise ValueError(f"frame_times must be {scores.shape[0] + 1} increasing boundaries, got shape {times.shape}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate labels in {labels}")
    columns = {"onset": times[:-1], "offset": times[1:]}
    columns.update({label: scores[:, k].astype(np.float32) for k, label in enumerate(labels)})
    return pd.DataFrame(columns)


def write_score_tsv(path: str | Path, scores: np.ndarray, frame_times: np.ndarray, labels: Sequence[str]) -> None:
    """Write one file's scores in sed_scores_eval's format, byte for byte what its `write_sed_scores` writes. Name
    it `<audio id>.tsv` and put all files of a set in one directory (which `read_score_tsvs`, sed_scores_eval's
    `read_sed_scores` and `metrics.psds` read).

    Args:
        path: output TSV.
        scores, frame_times, labels: see `scores_dataframe`.
    """
    scores_dataframe(scores, frame_times, labels).to_csv(path, sep="\t", index=False)


def read_score_tsvs(directory: str | Path) -> dict[str, pd.DataFrame]:
    """The score tables of a directory, as sed_scores_eval's `read_sed_scores` reads them.

    Returns:
        `{audio id: DataFrame onset offset <classes...>}`, sorted by audio id.

    Raises:
        InputError naming the file: a directory holding anything but `.tsv` files (as sed_scores_eval refuses),
        a table without `onset offset <class...>` columns, non-numeric values, frames of zero length or not
        contiguous.
    """
    pd = _pandas()
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory of score TSVs")
    tables = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.suffix != ".tsv":
            raise InputError(f"{directory}: a directory of score TSVs must hold only .tsv files, but holds {path.name}")
        try:
            table = pd.read_csv(path, sep="\t")
        except (OSError, ValueError) as error:  # pandas' parser errors are ValueErrors
            raise InputError(f"{path}: cannot read the score table ({_one_line(error)})") from None
        columns = list(table.columns)
        if len(columns) < 3 or columns[:2] != ["onset", "offset"]:
            raise InputError(f"{path}: expected columns onset, offset, <class>..., got {columns}")
        if not all(pd.api.types.is_numeric_dtype(table[column]) for column in columns):
            raise InputError(f"{path}: every value of a score table must be a number")
        onsets, offsets = table["onset"].to_numpy(), table["offset"].to_numpy()
        if len(table) == 0 or not (offsets > onsets).all() or not (offsets[:-1] == onsets[1:]).all():
            raise InputError(f"{path}: frames must have positive lengths, each starting where the previous one ends")
        tables[path.stem] = table
    if not tables:
        raise InputError(f"{directory} holds no .tsv score files")
    return tables


def predictions_kind(path: str | Path) -> str:
    """What a predictions path holds: `"events"` (a TSV/CSV file), `"operating_points"` (a directory of detection
    TSVs) or `"scores"` (a directory of score TSVs), from the path and the first TSV's header.

    Raises:
        InputError: no such path, a directory without TSVs, or a first TSV of neither format.
    """
    path = Path(path)
    if path.is_file():
        return "events"
    if not path.is_dir():
        raise InputError(f"{path}: no such file or directory of predictions")
    tables = sorted(path.glob("*.tsv"))
    if not tables:
        raise InputError(f"{path}: no .tsv files (expected per-threshold detections or score tables)")
    with tables[0].open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
    if {"filename", "event_label"} <= set(header):
        return "operating_points"
    if header[:2] == ["onset", "offset"]:
        return "scores"
    raise InputError(
        f"{tables[0]}: neither a detection table (filename, onset, offset, event_label) nor a score table (onset, "
        f"offset, <classes>); header {header}"
    )


# -------------------------------------------------------------------------------------------------------- thresholds


def read_text_file(path: str | Path, what: str) -> str:
    """The UTF-8 text of a file the user named, e.g. `what="thresholds file"`.

    Raises:
        InputError: naming the file and `what` it should be, when it cannot be read or is not UTF-8 text.
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: the {what} is not UTF-8 text") from None


def read_thresholds(path: str | Path) -> dict[str, float]:
    """Per-class thresholds from a file: JSON `{"label": threshold, ...}` (`.json`) or tab-separated lines
    `label<TAB>threshold` without header (`.tsv`, `.txt`; blank lines are skipped).

    Raises:
        InputError naming the file (and line): unreadable file, unknown extension, malformed content, duplicate
        labels, values that are not probabilities (finite, in [0, 1]: they are compared with probabilities).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".tsv", ".txt"):
        raise InputError(f"{path}: unknown thresholds format {suffix!r}; use .json or .tsv (label<TAB>threshold)")
    text = read_text_file(path, "thresholds file")
    thresholds: dict[str, float] = {}
    if suffix == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: not JSON ({error})") from None
        if not isinstance(document, dict) or not document:
            raise InputError(f'{path}: expected a JSON object {{"label": threshold, ...}}')
        for label, value in document.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
                raise InputError(f"{path}: threshold of {label!r} must be a finite number, got {value!r}")
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{path}: threshold of {label!r} must be between 0 and 1, got {value!r}")
            thresholds[label] = float(value)
        return thresholds
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) != 2 or not fields[0]:
            raise InputError(f"{path}, line {number}: expected 'label<TAB>threshold', got {line!r}")
        label, value = fields
        try:
            threshold = float(value)
        except ValueError:
            raise InputError(f"{path}, line {number}: threshold {value!r} of {label!r} is not a number") from None
        if not np.isfinite(threshold):
            raise InputError(f"{path}, line {number}: threshold of {label!r} must be finite, got {value!r}")
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"{path}, line {number}: threshold of {label!r} must be between 0 and 1, got {value!r}")
        if label in thresholds:
            raise InputError(f"{path}, line {number}: duplicate label {label!r}")
        thresholds[label] = threshold
    if not thresholds:
        raise InputError(f"{path}: no thresholds")
    return thresholds


# ------------------------------------------------------------------------------------------------------------ checks


def _read_table(path: str | Path) -> pd.DataFrame:
    pd = _pandas()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    separator = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        # Everything as text, so that line numbers stay aligned (blank lines kept) and values are checked here.
        table = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (OSError, ValueError) as error:  # pandas' parser and decoding errors are ValueErrors
        raise InputError(f"{path}: cannot read the table ({_one_line(error)})") from None
    return table[~(table == "").all(axis=1)]


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _file_line(row) -> str:
    return f"line {row + 2}"  # header on line 1, row 0 on line 2


def _frame_row(row) -> str:
    return f"row {row!r}"


def _numeric(column: pd.Series) -> pd.Series:
    pd = _pandas()
    return pd.to_numeric(column.replace("", np.nan), errors="coerce").astype(np.float64)


def _is_missing(column: pd.Series) -> pd.Series:
    return column.isna() | (column.astype(object) == "")


def _check_events(
    table: pd.DataFrame, source: str, locate, labels: Sequence[str] | None, keep_empty_rows: bool
) -> pd.DataFrame:
    pd = _pandas()
    missing = [column for column in EVENT_COLUMNS if column not in table.columns]
    if missing:
        raise InputError(
            f"{source}: missing columns {missing} (found {list(table.columns)}; expected {list(EVENT_COLUMNS)})"
        )

    def fail(mask: pd.Series, problem: str):
        rows = table.index[mask.to_numpy()]
        if len(rows):
            first = rows[0]
            more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
            values = "\t".join(str(table.loc[first, column]) for column in EVENT_COLUMNS)
            raise InputError(f"{source}, {locate(first)}: {problem}: {values!r}{more}")

    filename_missing = _is_missing(table["filename"])
    fail(filename_missing, "empty filename")
    onset, offset = _numeric(table["onset"]), _numeric(table["offset"])
    no_onset, no_offset = _is_missing(table["onset"]), _is_missing(table["offset"])
    no_label = _is_missing(table["event_label"])
    fail((onset.isna() & ~no_onset) | (offset.isna() & ~no_offset), "onset and offset must be numbers")
    empty_row = no_onset & no_offset & no_label
    fail(~empty_row & (no_onset | no_offset | no_label), "a row needs onset, offset and event_label, or none of them")
    fail(~np.isfinite(onset.fillna(0)) | ~np.isfinite(offset.fillna(0)), "onset and offset must be finite")
    fail(onset < 0, "negative onset")
    fail(onset > offset, "onset after offset")
    if labels is not None:
        allowed = set(labels)
        fail(~empty_row & ~table["event_label"].isin(allowed), f"unknown event label (known: {sorted(allowed)})")

    checked = pd.DataFrame(
        {
            "filename": table["filename"].astype(str).to_numpy(),
            "onset": onset.to_numpy(),
            "offset": offset.to_numpy(),
            "event_label": table["event_label"].where(~no_label, np.nan).to_numpy(dtype=object),
        },
        index=table.index,
    )
    if not keep_empty_rows:
        return checked[~empty_row.to_numpy()].reset_index(drop=True)
    return merge_overlapping_events(checked, source, locate).reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ overlapping events


def merge_intervals(intervals: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of `(onset, offset)` intervals as sorted, disjoint intervals: intervals that overlap (one starts
    before the other ends) become one; touching intervals (`offset == onset`) stay apart, as the metrics count
    them as two events. The one rule for overlapping annotations, used by ground-truth reading and frame targets."""
    merged: list[list[float]] = []
    for onset, offset in sorted((float(a), float(b)) for a, b in intervals):
        if merged and onset < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], offset)
        else:
            merged.append([onset, offset])
    return [(a, b) for a, b in merged]


def merge_overlapping_events(table: pd.DataFrame, source: str = "ground truth", locate=None) -> pd.DataFrame:
    """Merge the overlapping events of one class in one file (`merge_intervals`) of a checked event table, logging
    a warning that names the file, the class and the lines (`locate(index)`, default: the table's row) merged.

    Returns:
        The table with each group of overlapping events replaced by one row (at the first one's position); tables
        without such events are returned as they are.
    """
    locate = locate or _frame_row
    events = table[table["event_label"].notna()]
    if events.empty:
        return table
    drop, changed, reports = [], {}, []
    for (filename, label), group in events.groupby(["filename", "event_label"], sort=False):
        if len(group) < 2:
            continue
        ordered = group.sort_values(["onset", "offset"], kind="stable")
        current, end, members = None, -np.inf, []

        def close():
            if current is not None and len(members) > 1:
                changed[current] = end
                drop.extend(members[1:])
                reports.append(f"{filename} ({label}): {', '.join(locate(i) for i in sorted(members))}")

        for index, row in zip(ordered.index, ordered.itertuples(index=False), strict=True):
            if current is not None and row.onset < end:
                members.append(index)
                end = max(end, row.offset)
            else:
                close()
                current, end, members = index, row.offset, [index]
        close()
    if not drop:
        return table
    logger.warning(
        "%s: merged %d overlapping events of one class in one file into %d (the metrics refuse them): %s%s",
        source, len(drop) + len(reports), len(reports), "; ".join(reports[:5]),
        f"; and {len(reports) - 5} more" if len(reports) > 5 else "",
    )
    merged = table.copy()
    for index, offset in changed.items():  # the group's earliest event keeps its row and onset
        merged.loc[index, "offset"] = offset
    return merged.drop(index=drop)


def _check_durations(table: pd.DataFrame, source: str, locate) -> dict[str, float]:
    missing = [column for column in ("filename", "duration") if column not in table.columns]
    if missing:
        raise InputError(
            f"{source}: missing columns {missing} (found {list(table.columns)}; expected filename, duration)"
        )
    duration = _numeric(table["duration"])
    bad = table.index[(_is_missing(table["filename"]) | ~(duration > 0) | ~np.isfinite(duration.fillna(0))).to_numpy()]
    if len(bad):
        raise InputError(f"{source}, {locate(bad[0])}: expected a filename and a positive duration")
    duplicated = table.index[table["filename"].duplicated().to_numpy()]
    if len(duplicated):
        name = table.loc[duplicated[0], "filename"]
        raise InputError(f"{source}, {locate(duplicated[0])}: duplicate filename {name!r}")
    return dict(zip(table["filename"].astype(str), duration.astype(float), strict=True))
