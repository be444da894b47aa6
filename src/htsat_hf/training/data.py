"""Labelled audio for training and evaluation: loading through `datasets`, label encoding, decoding with clear
errors, and the batch collator that pads/crops clips and runs the feature extractor once per batch.

Sources (`load_audio_splits`): a Hub or local dataset by name (`datasets.load_dataset`, optionally streaming),
`audiofolder` directories with a `metadata.csv`, or PANNs-style AudioSet hdf5 packs (see `audioset_hdf5_split`).
Audio stays encoded in the dataset and is decoded per example by the collator (in the DataLoader workers) with
`audio.load_waveform`, the package's one audio input layer: downmixed to mono, integer PCM scaled, resampled to the
model's rate. Every problem with the data is an `InputError` naming the split, row or file.
"""

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..audio import audio_duration, check_waveform, load_waveform, pcm_to_float
from ..convert_htsat_original_checkpoint import read_label_file
from ..errors import InputError, error_line
from ..feature_extraction_htsat import pad_waveform

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class LabelSpec:
    """The label set of a task and how a dataset's label column encodes it.

    Attributes:
        names: class names; the model's `id2label` is `dict(enumerate(names))`. Surrounding whitespace is dropped;
            blank names and names that are equal once it is dropped are refused.
        multi_label: whether an example may carry several classes (multi-hot targets, BCE) or exactly one
            (class id, cross-entropy).
        separator: for string columns, the separator of several labels in one string (multi-label only).
        numeric_ids: whether integer label values are class ids (`names[value]`: ClassLabel columns, integer labels,
            a label names file). When the names were read from string labels it is False, and a number is read as
            the class of that name (`3` is class `"3"`), never as a position in the sorted names.
        source: what the names came from, named in errors about them.

    Missing values (None, NaN, an empty string): in a single-label task an error naming the row; in a multi-label
    task a clip with no class (an all-zero target, e.g. background only).
    """

    names: list[str]
    multi_label: bool
    separator: str = ";"
    numeric_ids: bool = True
    source: str = "label set"
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self):
        self.names = check_label_names(self.names, self.source)
        self._index = {name: i for i, name in enumerate(self.names)}

    @property
    def problem_type(self) -> str:
        return "multi_label_classification" if self.multi_label else "single_label_classification"

    def _id(self, value, where: str) -> int:
        if _is_missing(value):
            raise InputError(f"{where}: a missing label among the labels of the example")
        if isinstance(value, (bool, np.bool_)):
            raise InputError(f"{where}: label {value!r} is a boolean, not a class name or id")
        if isinstance(value, (float, np.floating)):
            if not float(value).is_integer():
                raise InputError(f"{where}: label {value!r} is not a class name or a whole class id")
            value = int(value)  # a numeric column with an empty cell is read as floats
        if isinstance(value, (int, np.integer)):
            if not self.numeric_ids:
                if str(value) in self._index:
                    return self._index[str(value)]
                raise InputError(
                    f"{where}: label {value} is a number but the classes are names ({_preview(self.names)})"
                )
            if not 0 <= value < len(self.names):
                hint = " (-1 is how datasets marks a missing ClassLabel)" if value == -1 else ""
                raise InputError(
                    f"{where}: label id {value} is outside the label set 0..{len(self.names) - 1}{hint}"
                )
            return int(value)
        name = str(value).strip()
        if name not in self._index:
            raise InputError(f"{where}: label {name!r} is not in the label set ({_preview(self.names)})")
        return self._index[name]

    def encode(self, value, where: str = "example") -> int | np.ndarray:
        """A class id (single-label) or a float32 multi-hot vector (multi-label) for one label-column value."""
        if not self.multi_label and _is_missing(value):
            raise InputError(f"{where}: the label is empty (a single-label task needs one label per clip)")
        values = _split_label_value(value, self.separator if self.multi_label else None)
        if self.multi_label:
            if _is_multi_hot(values, len(self.names)):
                return np.asarray(values, dtype=np.float32)
            target = np.zeros(len(self.names), dtype=np.float32)
            target[[self._id(v, where) for v in values]] = 1.0
            return target
        if len(values) != 1:
            raise InputError(f"{where}: single-label task but the example has {len(values)} labels: {value!r}")
        return self._id(values[0], where)


def check_label_names(names: Sequence, source: str = "label set") -> list[str]:
    """Class names without surrounding whitespace, refusing blank and duplicate names.

    Raises:
        InputError: naming `source` (a file, a column) and the position of the blank or repeated name.
    """
    cleaned, seen = [], {}
    for i, name in enumerate(names):
        if _is_missing(name):
            raise InputError(f"{source}: class {i} has a blank name")
        text = str(name).strip()
        if text in seen:
            same = "" if str(names[seen[text]]) == str(name) else " once surrounding whitespace is dropped"
            raise InputError(f"{source}: classes {seen[text]} and {i} have the same name {text!r}{same}")
        seen[text] = i
        cleaned.append(text)
    return cleaned


def _is_missing(value) -> bool:
    """None, NaN or a blank string: what CSV readers make of an empty cell."""
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    return isinstance(value, str) and not value.strip()


def _preview(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(map(repr, names[:limit]))
    return shown + (f", ... {len(names)} in all" if len(names) > limit else "")


def _split_label_value(value, separator: str | None) -> list:
    """The labels in one label-column value. With a separator (multi-label) strings are split on it, and an empty
    or missing value is a clip with no labels (an all-zero target, e.g. background only)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    if separator and _is_missing(value):
        return []
    if separator and isinstance(value, str):
        return [part for part in (p.strip() for p in value.split(separator)) if part]
    return [value]


def _is_multi_hot(values: list, num_labels: int) -> bool:
    return (
        len(values) == num_labels
        and num_labels > 1
        and all(isinstance(v, (float, int, np.number)) and not isinstance(v, bool) and v in (0, 1) for v in values)
        and any(isinstance(v, float) for v in values)
    )


def default_row_name(role: str):
    """`row -> "train split, row 3"`, the default way errors name a row."""
    return lambda row: f"{role} split, row {row}"


def audiofolder_row_name(split, audio_column: str, metadata_file: str | Path, role: str = "train"):
    """`row -> "data/train/metadata.csv, line 3 (c1.wav)"` for a split read from an audiofolder, so that an error
    about a row names the line of `metadata.csv` to fix (falls back to the split's row where the file is unknown)."""
    metadata_file = Path(metadata_file)
    lines = {}
    try:
        with metadata_file.open(newline="", encoding="utf-8") as handle:
            for line, record in enumerate(csv.DictReader(handle), start=2):
                name = record.get("file_name")
                if name:
                    lines[str((metadata_file.parent / name).resolve())] = (line, name)
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    paths = [value.get("path") if isinstance(value, dict) else None
             for value in split.select_columns([audio_column])[audio_column]] if lines else []

    def name(row: int) -> str:
        path = paths[row] if row < len(paths) else None
        found = lines.get(str(Path(path).resolve())) if path else None
        if found is None:
            return f"{metadata_file} ({role} split, row {row})"
        return f"{metadata_file}, line {found[0]} ({found[1]})"

    return name


def infer_label_spec(dataset, label_column: str, multi_label: bool | None = None, separator: str = ";",
                     row_name=None) -> LabelSpec:
    """Read the label set from a (non-streaming) split's label column and its features.

    ClassLabel and lists of ClassLabel give their names; strings give their sorted distinct values without
    surrounding whitespace (split on `separator` when multi-label); integers (and whole floats, which is what a
    numeric CSV column with an empty cell becomes) give ids `0..max`; float lists of one length are multi-hot vectors.
    `multi_label=None` infers it: lists, multi-hot vectors and strings containing the separator are multi-label.

    Raises:
        InputError: a missing label in a single-label task, numbers mixed with names, or non-whole numbers,
            naming the row with `row_name(row)` (default: "split, row N").
    """
    from datasets import ClassLabel, List, Sequence as HFSequence

    row_name = row_name or default_row_name("train")
    feature = dataset.features[label_column]
    inner = getattr(feature, "feature", None) if isinstance(feature, (List, HFSequence)) else None
    source = f"the ClassLabel names of the label column {label_column!r}"
    if isinstance(feature, ClassLabel):
        return LabelSpec(list(feature.names), multi_label=bool(multi_label), separator=separator, source=source)
    if isinstance(inner, ClassLabel):
        return LabelSpec(list(inner.names), multi_label=True if multi_label is None else multi_label,
                         separator=separator, source=source)

    values = dataset.select_columns([label_column])[label_column]
    if not values:
        raise InputError(f"the label column {label_column!r} is empty")
    values = list(values)
    listed = [v for v in values if isinstance(v, (list, tuple))]
    if listed and len(listed) == len(values):
        lengths = {len(v) for v in listed}
        if len(lengths) == 1 and all(isinstance(x, float) for x in listed[0]):
            return LabelSpec([str(i) for i in range(lengths.pop())], multi_label=True, separator=separator)
        return _spec_from_values(
            [(row, x) for row, v in enumerate(values) for x in v], True if multi_label is None else multi_label,
            separator, row_name,
        )
    strings = [v for v in values if isinstance(v, str)]
    if multi_label is None:
        multi_label = any(separator in s for s in strings)
    if not multi_label:
        missing = next((row for row, v in enumerate(values) if _is_missing(v)), None)
        if missing is not None:
            raise InputError(
                f"{row_name(missing)}: the label is empty (a single-label task needs one label per clip; "
                f"several labels as 'a{separator}b' make the task multi-label)"
            )
    flat = [(row, x) for row, v in enumerate(values)
            for x in _split_label_value(v, separator if multi_label else None)]
    return _spec_from_values(flat, multi_label, separator, row_name)


def _spec_from_values(values: list[tuple[int, object]], multi_label: bool, separator: str, row_name) -> LabelSpec:
    """The label set of `(row, label)` pairs: integer ids `0..max` for numbers, sorted names for strings."""
    numbers, names = [], []
    for row, value in values:
        if _is_missing(value):
            raise InputError(f"{row_name(row)}: a missing label among the labels of the example")
        if isinstance(value, (bool, np.bool_)):
            raise InputError(f"{row_name(row)}: label {value!r} is a boolean, not a class name or id")
        if isinstance(value, (int, np.integer, float, np.floating)):
            if not float(value).is_integer():
                raise InputError(f"{row_name(row)}: label {value!r} is not a class name or a whole class id")
            if value < 0:
                raise InputError(f"{row_name(row)}: integer labels must be >= 0, found {int(value)}")
            numbers.append((row, int(value)))
        else:
            names.append((row, str(value).strip()))
    if numbers and names:
        raise InputError(
            f"the labels mix numbers ({row_name(numbers[0][0])}: {numbers[0][1]}) and names "
            f"({row_name(names[0][0])}: {names[0][1]!r}); give every label as a name, or every one as a class id"
        )
    if not numbers and not names:
        raise InputError(f"no row has a label (first row: {row_name(0)})")
    if numbers:
        return LabelSpec([str(i) for i in range(max(v for _, v in numbers) + 1)], multi_label=multi_label,
                         separator=separator)
    return LabelSpec(sorted({name for _, name in names}), multi_label=multi_label, separator=separator,
                     numeric_ids=False)


def label_column_is_list(split, label_column: str) -> bool | None:
    """Whether a split's label column holds lists of labels (True), one label per row (False), or is unknown (None:
    a streamed split without features)."""
    from datasets import List, Sequence as HFSequence

    features = getattr(split, "features", None)
    if not features or label_column not in features:
        return None
    return isinstance(features[label_column], (List, HFSequence, list))


def read_label_names(path: str) -> list[str]:
    """Class names in index order from a label file: AudioSet's `class_labels_indices.csv` (a header with `index`
    and `display_name`), or a plain list with one label per line (`.txt`; the final newline is optional, and blank
    lines at the end of the file, which editors add, are ignored).

    Raises:
        InputError: an unreadable or empty file, a blank line, a repeated label, or (AudioSet format) indices that
            are not 0..n-1, naming the file and line.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read the label names file ({error_line(error)})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # trailing blank lines are no labels; a blank line between names is refused
        lines.pop()
    if not lines:
        raise InputError(f"{path}: the label names file is empty")
    header = [part.strip() for part in next(csv.reader([lines[0]]))]
    if {"index", "display_name"} <= set(header):
        names = list(read_label_file(path).values())
        return check_label_names(names, f"{path} (the display_name column)")
    names = []
    for line, name in enumerate(lines, start=1):
        if not name.strip():
            raise InputError(f"{path}, line {line}: blank line in the label names file (one label per line)")
        if name.strip() in names:
            first = names.index(name.strip()) + 1
            raise InputError(f"{path}, line {line}: label {name.strip()!r} repeats line {first}")
        names.append(name.strip())
    return names


def check_labels(dataset, label_spec: LabelSpec, label_column: str, split: str, row_name=None):
    """Encode every label of a non-streaming split once, so that a bad label fails before training starts."""
    row_name = row_name or default_row_name(split)
    for row, value in enumerate(dataset.select_columns([label_column])[label_column]):
        label_spec.encode(value, where=row_name(row))


# --------------------------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------------------------


def load_audio_splits(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    eval_dir: str | None = None,
    train_split: str = "train",
    eval_split: str | None = "validation",
    streaming: bool = False,
    audio_column: str = "audio",
    label_column: str = "label",
    fold_column: str | None = None,
    eval_fold: int | None = None,
    audioset_train_index: str | None = None,
    audioset_eval_index: str | None = None,
) -> dict:
    """The train and eval splits from one source, with audio left encoded (decoded later by the collator).

    Exactly one source is used: `dataset_name` (Hub id, local dataset directory or a packaged builder such as
    `"audiofolder"`), `train_dir`/`eval_dir` (`audiofolder` directories with a `metadata.csv`), or
    `audioset_train_index`/`audioset_eval_index` (PANNs hdf5 indexes, see `audioset_hdf5_split`). With `fold_column` and
    `eval_fold`, the train split is divided by fold (ESC-50: fold `eval_fold` held out for evaluation).

    Returns:
        `{"train": ..., "eval": ...}`, either possibly missing when not asked for.

    Raises:
        InputError: for a missing folder, a dataset that cannot be loaded, a missing split or column, or an empty
            split, naming it and what is available.
    """
    import datasets

    sources = [dataset_name is not None, train_dir is not None or eval_dir is not None,
               audioset_train_index is not None or audioset_eval_index is not None]
    if sum(sources) != 1:
        raise InputError("give exactly one data source: dataset_name, train_dir/eval_dir or audioset_*_index")
    splits = {}
    if sources[2]:
        for role, index in (("train", audioset_train_index), ("eval", audioset_eval_index)):
            if index is not None and (role == "train" and train_split or role == "eval" and eval_split):
                splits[role] = audioset_hdf5_split(index, audio_column, label_column)
        return splits
    if dataset_name is not None:
        try:
            loaded = datasets.load_dataset(dataset_name, dataset_config_name, streaming=streaming)
        except Exception as error:  # datasets raises many types (not found, bad config name, no connection)
            raise InputError(f"cannot load dataset {dataset_name!r}: {error_line(error)}") from None
        for role, name in (("train", train_split), ("eval", eval_split)):
            if name is None or (role == "eval" and fold_column):
                continue
            if name not in loaded:
                if role == "eval" and name == "validation" and "test" in loaded:
                    name = "test"
                else:
                    raise InputError(f"{dataset_name} has no split {name!r}; it has {sorted(loaded)}")
            splits[role] = loaded[name]
    else:
        for role, directory in (("train", train_dir), ("eval", eval_dir)):
            if directory is None:
                continue
            if not Path(directory).is_dir():
                raise InputError(f"{directory}: no such folder (the {role} audiofolder)")
            try:
                splits[role] = datasets.load_dataset(
                    "audiofolder", data_dir=directory, split="train", streaming=streaming
                )
            except Exception as error:  # datasets raises many types for a folder it cannot read
                raise InputError(f"{directory}: cannot be read as an audiofolder ({error_line(error)})") from None

    if fold_column is not None:
        if eval_fold is None or "train" not in splits:
            raise InputError("fold_column needs eval_fold and a train split to divide")
        source = splits["train"]
        _require_columns(source, [fold_column], "train")
        splits["train"] = source.filter(lambda fold: fold != eval_fold, input_columns=[fold_column])
        splits["eval"] = source.filter(lambda fold: fold == eval_fold, input_columns=[fold_column])

    for role, split in splits.items():
        _require_columns(split, [audio_column, label_column], role)
        split = split.cast_column(audio_column, datasets.Audio(decode=False))
        if not streaming and len(split) == 0:
            raise InputError(f"the {role} split is empty" + (f" (fold {eval_fold})" if fold_column else ""))
        splits[role] = split
    return splits


def audioset_hdf5_split(index_path: str, audio_column: str = "audio", label_column: str = "labels"):
    """A PANNs-style AudioSet index (the layout the original trained on) as a `datasets.Dataset`.

    The index `.h5` holds `audio_name`, `target` `(clips, 527)` booleans, `hdf5_path` (the waveform pack of each
    clip) and `index_in_hdf5`; the packs hold `waveform` `(clips, samples)` int16 at 32 kHz. Rows reference the
    waveforms (`{"hdf5_path", "index_in_hdf5"}`), read when a batch is collated, and carry the class ids.

    Raises:
        InputError: for a missing file or a file without those datasets.
    """
    import datasets
    import h5py

    try:
        with h5py.File(index_path, "r") as index:
            missing = [k for k in ("audio_name", "target", "hdf5_path", "index_in_hdf5") if k not in index]
            if missing:
                raise InputError(f"{index_path}: not a PANNs AudioSet index, missing {missing}")
            targets = index["target"][:].astype(bool)
            paths = [p.decode() for p in index["hdf5_path"][:]]
            rows = index["index_in_hdf5"][:].astype(np.int64)
    except OSError as error:
        raise InputError(f"{index_path}: cannot open the AudioSet index ({error})") from error
    if not len(rows):
        raise InputError(f"{index_path}: the index lists no clips")
    return datasets.Dataset.from_dict(
        {
            audio_column: [{"hdf5_path": p, "index_in_hdf5": int(r)} for p, r in zip(paths, rows)],
            label_column: [np.flatnonzero(t).tolist() for t in targets],
        }
    )


def _read_hdf5_clip(reference: dict) -> np.ndarray:
    import h5py

    path, row = reference["hdf5_path"], reference["index_in_hdf5"]
    try:
        with h5py.File(path, "r") as pack:
            waveform = pack["waveform"][row]
    except (OSError, KeyError, IndexError) as error:
        raise InputError(f"{path}: cannot read waveform {row} ({error})") from None
    name = f"{path}, waveform {row}"
    return check_waveform(pcm_to_float(waveform, name), name)


def _require_columns(split, columns: list[str], role: str):
    available = list(split.features) if split.features is not None else []
    missing = [c for c in columns if c not in available]
    if missing:
        raise InputError(f"the {role} split has no column {missing}; its columns are {available}")


# --------------------------------------------------------------------------------------------------------------------
# Audio decoding and the collator
# --------------------------------------------------------------------------------------------------------------------


def decode_audio(value, sampling_rate: int) -> np.ndarray:
    """Mono float32 samples at `sampling_rate` from a dataset's audio value.

    Accepts a reference into an AudioSet hdf5 pack (`{"hdf5_path", "index_in_hdf5"}`, see `audioset_hdf5_split`),
    and every form `audio.load_waveform` takes: the encoded `{"path", "bytes"}` form (a remote path of a streamed
    dataset is opened through `datasets`), a decoded `{"array", "sampling_rate"}` dict (integer PCM scaled,
    resampled), a torchcodec `AudioDecoder`, a path or an array at `sampling_rate`.

    Returns:
        `(samples,)` float32, finite, non-empty.

    Raises:
        InputError: naming the file (or pack and row) when it cannot be read or decoded, is empty or not finite.
    """
    if isinstance(value, dict) and "hdf5_path" in value:
        if sampling_rate != 32000:
            raise InputError(
                f"{value['hdf5_path']}: AudioSet packs hold 32 kHz audio; the model expects {sampling_rate} Hz"
            )
        return _read_hdf5_clip(value)
    if isinstance(value, dict) and value.get("bytes") is None and "://" in str(value.get("path") or ""):
        from datasets import Audio

        # A file of a streamed Hub dataset: datasets opens it through fsspec and hands over a decoder.
        value = Audio().decode_example(value)
    return load_waveform(value, sampling_rate)


def check_audio_files(split, audio_column: str, skip_bad_audio: bool, role: str):
    """Open every file of a (small, non-streaming) split's audio column before training, reading only headers, so
    that a broken evaluation file fails at once rather than after the first epoch.

    Returns:
        The split (without the unreadable rows when `skip_bad_audio`) and the number of rows skipped.

    Raises:
        InputError: naming the first unreadable file, unless `skip_bad_audio`.
    """
    bad = []
    for row, value in enumerate(split.select_columns([audio_column])[audio_column]):
        if "hdf5_path" in value:
            continue  # AudioSet packs are read row by row; a missing pack fails at its first batch
        name = value.get("path") or f"{role} row {row}"
        source = value.get("bytes") if value.get("bytes") is not None else value.get("path")
        try:
            if source is None:
                raise InputError(f"{name}: the row has no audio (neither a path nor bytes)")
            audio_duration(source, name=name)
        except InputError as error:
            if not skip_bad_audio:
                raise
            bad.append(row)
            logger.warning("skipping undecodable audio in the %s split: %s", role, error)
    if bad:
        bad_rows = set(bad)
        split = split.select([i for i in range(len(split)) if i not in bad_rows])
    return split, len(bad)


def crop(waveform: np.ndarray, length: int, random: bool, generator: torch.Generator | None = None) -> np.ndarray:
    """At most `length` samples: a uniformly placed window when `random` (training), else the start."""
    if waveform.shape[0] <= length:
        return waveform
    start = int(torch.randint(0, waveform.shape[0] - length + 1, (1,), generator=generator)) if random else 0
    return waveform[start : start + length]


@dataclass
class AudioClassificationCollator:
    """Turns dataset rows into model inputs: decode, crop to the clip length, pad (zeros or repeat) and compute
    the log-mel features of the whole batch in one call of the feature extractor.

    Attributes:
        feature_extractor: the model's `HTSATFeatureExtractor` (its `max_length_seconds` and `pad_mode` apply).
        label_spec: how to encode the label column.
        audio_column, label_column: dataset column names.
        random_crop: crop longer clips at a random position (training) instead of keeping their start.
        skip_bad_audio: drop undecodable examples from the batch (counted in `skipped`) instead of failing.
        tta_offsets: for time-shift test-time augmentation, left rolls in samples of each copy of the padded clip
            (e.g. `training.tta.time_shift_offsets(10)`); `input_features` is then `(batch, copies, frames, mels)`.
    """

    feature_extractor: object
    label_spec: LabelSpec
    audio_column: str = "audio"
    label_column: str = "label"
    random_crop: bool = False
    skip_bad_audio: bool = False
    tta_offsets: list[int] | None = None
    skipped: int = 0

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        extractor = self.feature_extractor
        waves, labels = [], []
        for row in rows:
            try:
                wave = decode_audio(row[self.audio_column], extractor.sampling_rate)
            except InputError as error:
                if not self.skip_bad_audio:
                    raise
                self.skipped += 1
                logger.warning("skipping undecodable audio (%d so far): %s", self.skipped, error)
                continue
            waves.append(crop(wave, extractor.max_length_samples, self.random_crop))
            labels.append(self.label_spec.encode(row[self.label_column]))
        if not waves:
            raise InputError("every example of a batch failed to decode; see the warnings above")
        if self.tta_offsets:
            padded = [pad_waveform(w, extractor.max_length_samples, extractor.pad_mode) for w in waves]
            waves = [np.roll(w, -offset) for w in padded for offset in self.tta_offsets]
        features = extractor(waves, sampling_rate=extractor.sampling_rate, return_tensors="pt")["input_features"]
        if self.tta_offsets:
            features = features.view(len(padded), len(self.tta_offsets), *features.shape[1:])
        if self.label_spec.multi_label:
            targets = torch.from_numpy(np.stack(labels))
        else:
            targets = torch.tensor(labels, dtype=torch.long)
        return {"input_features": features, "labels": targets}


__all__ = [
    "AudioClassificationCollator",
    "audiofolder_row_name",
    "audioset_hdf5_split",
    "check_label_names",
    "default_row_name",
    "load_audio_splits",
    "read_label_names",
    "LabelSpec",
    "check_audio_files",
    "check_labels",
    "crop",
    "decode_audio",
    "infer_label_spec",
    "label_column_is_list",
]
