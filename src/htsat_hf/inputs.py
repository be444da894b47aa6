"""What a batch run reads: audio files given as files, folders or list files, the rows of a `datasets` split (streamed
or not), or in-memory audio, each as an [`AudioItem`] with a name (the key of `run_sed.py`'s tables and of DCASE
ground truth).

- a file with an audio extension (`audio.AUDIO_EXTENSIONS`, any case) is one input, named by its file name;
- a folder gives its audio files, searched recursively, sorted by their path inside it, each named by that path
  (`sub/a.wav`; a file at the top of the folder by its file name, so flat DCASE folders keep their keys). Hidden
  files and folders below it (names starting with `.`, macOS `._*` AppleDouble files among them) are skipped; a
  dot-file given by itself is read. A broken link is kept, and the run reports it (`no such file`);
- any other file is a list file: one audio file's path per line, relative to the list file, blank lines and `#`
  comments skipped (a listed folder, or a listed file without an audio extension, such as another list, is refused).

Two different files with one name are refused (`keyed_by_name`, as for `run_sed.py`, whose outputs are keyed by
name), or allowed where outputs name files by path (`htsat-hf predict`). Audio is decoded only when a run reads it
(`audio.stream_audio`, block by block), so a run over thousands of files holds little at a time. Every problem is an
[`InputError`] naming the file (and line, for list files).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from .audio import AUDIO_EXTENSIONS, load_waveform
from .errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["AudioItem", "StreamingItems", "as_items", "collect_inputs", "dataset_items"]


@dataclass
class AudioItem:
    """One input: `name` is its file name in the output tables (and in the ground truth); the audio comes from
    `path`, from row `index` of a `datasets` split's `column` (an `Audio` column is read undecoded, `{"path",
    "bytes"}`; other columns as they are: paths, `{"array", "sampling_rate"}` dicts), or from `audio`, any form
    `audio.load_waveform` takes (a decoded `datasets` value, an undecoded one, a torchcodec `AudioDecoder`, samples
    in a `{"array", "sampling_rate"}` dict, float or integer PCM)."""

    name: str
    path: str | None = None
    dataset: object = None
    index: int | None = None
    column: str = "audio"
    audio: object = None

    @property
    def audio_id(self) -> str:
        """The name without its extension: the stem of its per-file outputs (`scores/<audio id>.tsv`), as
        sed_scores_eval keys files."""
        return self.name.rsplit(".", maxsplit=1)[0]

    @property
    def source(self) -> str:
        """Where the audio comes from, as messages name it: the path, or the name and dataset row."""
        if self.path is not None:
            return self.path
        return self.name if self.index is None else f"{self.name} (row {self.index})"

    def value(self):
        """The audio as given: the path, the in-memory `audio`, or the dataset row's value."""
        if self.path is not None:
            return self.path
        if self.audio is not None:
            return self.audio
        if self.dataset is None:
            raise InputError(f"{self.name}: no audio (an AudioItem needs a path, audio, or a dataset row)")
        return self.dataset[self.index][self.column]

    def load(self, sampling_rate: int) -> np.ndarray:
        """`(samples,)` mono float32 audio at `sampling_rate` Hz.

        Raises:
            InputError: naming `source`, for a missing, undecodable or empty file, or NaN/Inf samples.
        """
        if self.path is not None:
            return load_waveform(self.path, sampling_rate)
        return load_waveform(self.value(), sampling_rate, name=self.source)


def collect_inputs(
    paths: Sequence[str | Path], skip_missing: bool = False, keyed_by_name: bool = True
) -> list[AudioItem]:
    """The audio files of files, folders and list files (see the module docstring), in the order given; a file given
    twice is kept once.

    Args:
        paths: files, folders (searched recursively) and list files.
        skip_missing: log and leave out listed files that do not exist instead of failing.
        keyed_by_name: refuse two different files with the same name (outputs keyed by name would mix them).

    Raises:
        InputError: a path that does not exist (the list file and line for listed ones, unless `skip_missing`), a
            folder without audio, two files with the same name (with `keyed_by_name`), no input at all.
    """
    items: list[AudioItem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted((p for p in path.rglob("*") if _is_folder_audio(p, path)),
                           key=lambda p: p.relative_to(path).parts)
            if not found:
                raise InputError(f"{path}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder or below")
            items += [AudioItem(p.relative_to(path).as_posix(), str(p)) for p in found]
        elif path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS:
            items.append(AudioItem(path.name, str(path)))
        elif path.is_file():
            items += _listed_items(path, skip_missing)
        else:
            raise InputError(f"{path}: no such file or folder")
    if not items:
        raise InputError(f"no audio to process in {[str(p) for p in paths]}")
    if not keyed_by_name:
        return list({item.path: item for item in items}.values())
    seen: dict[str, str] = {}
    for item in items:
        if item.name in seen and seen[item.name] != item.path:
            raise InputError(
                f"two inputs have the name {item.name!r} ({seen[item.name]} and {item.path}); output tables are "
                "keyed by name (a file's name, or its path inside a folder given): rename one, or give their common "
                "parent folder"
            )
        seen[item.name] = item.path
    return list({item.name: item for item in items}.values())


def _is_folder_audio(path: Path, folder: Path) -> bool:
    """Whether a path found in `folder` is one of its audio inputs: an audio extension, not hidden (a dot-file, a
    macOS `._*` AppleDouble file or anything in a dot-folder below `folder`: metadata, not audio), and a file or a
    broken link (kept so that the run reports it as missing instead of dropping it silently)."""
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        return False
    if any(part.startswith(".") for part in path.relative_to(folder).parts):
        return False
    return path.is_file() or (path.is_symlink() and not path.exists())


def _listed_items(listing: Path, skip_missing: bool) -> list[AudioItem]:
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(
            f"{listing}: not a text list of audio files, nor an audio file ({', '.join(AUDIO_EXTENSIONS)})"
        ) from None
    items = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        listed = Path(line) if Path(line).is_absolute() else listing.parent / line
        where = f"{listing}, line {number}"
        if listed.is_dir():
            raise InputError(f"{where}: {listed} is a folder; list files name audio files")
        if listed.is_file() and listed.resolve() == listing.resolve():
            raise InputError(f"{where}: a list file cannot list itself")
        if listed.is_file() and listed.suffix.lower() not in AUDIO_EXTENSIONS:
            # Lists of lists are refused: a listed name is read as audio, and one level keeps lists plain.
            raise InputError(f"{where}: {listed} is not an audio file ({', '.join(AUDIO_EXTENSIONS)}); list files "
                             "name audio files, not other lists")
        if not listed.is_file():
            message = f"{listing}, line {number}: {listed} does not exist"
            if not skip_missing:
                raise InputError(message)
            logger.warning("skipping: %s", message)
            continue
        items.append(AudioItem(listed.name, str(listed)))
    return items


def dataset_items(
    name: str, config_name: str | None, split: str, audio_column: str, streaming: bool = False
) -> list[AudioItem] | StreamingItems:
    """The rows of a `datasets` split as inputs, named by their audio file name (or `<split>_<row>.wav`; a name
    seen before gets its row number as a prefix). An `Audio` column is read undecoded, so rows decode one at a time;
    another column (file paths, `{"array", "sampling_rate"}` dicts) is read as it is. With `streaming`, the split is
    read as it is iterated (`load_dataset(..., streaming=True)`), never downloaded whole.

    Raises:
        ImportError: `datasets` is not installed.
        InputError: the split cannot be loaded, has no such column, or is empty (not checked when streaming).
    """
    try:
        import datasets
    except ImportError as error:
        raise ImportError(
            "reading a dataset split needs the datasets library: pip install 'htsat-hf[audio]'"
        ) from error
    try:
        dataset = datasets.load_dataset(name, config_name, split=split, streaming=streaming)
    except Exception as error:  # datasets raises many types (not found, unknown split, no connection)
        raise InputError(f"cannot load split {split!r} of dataset {name!r}: {error}") from None
    columns = dataset.column_names
    if columns is not None and audio_column not in columns:
        raise InputError(f"dataset {name!r}, split {split!r} has no column {audio_column!r}: {columns}")
    items = dataset_rows(dataset, audio_column, split)
    if not streaming and not items:
        raise InputError(f"dataset {name!r}, split {split!r} is empty")
    return items


def dataset_rows(dataset, audio_column: str = "audio", split: str = "row") -> list[AudioItem] | StreamingItems:
    """The rows of a loaded `datasets.Dataset` (a list of items) or `IterableDataset` (a [`StreamingItems`]) as
    inputs, named as [`dataset_items`] names them. An `Audio` column is cast to undecoded values."""
    import datasets

    features = dataset.features or {}
    if isinstance(features.get(audio_column), datasets.Audio):
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    if isinstance(dataset, datasets.IterableDataset):
        return StreamingItems(dataset, audio_column, split)
    values = dataset.select_columns([audio_column])[audio_column]
    names = _row_names((_path_of(value) for value in values), split)
    return [AudioItem(item_name, dataset=dataset, index=index, column=audio_column)
            for index, item_name in enumerate(names)]


class StreamingItems:
    """The rows of a streaming `datasets.IterableDataset` as [`AudioItem`]s holding each row's audio value, named as
    [`dataset_items`] names rows. Iterable any number of times (each DataLoader worker reads the stream and takes its
    share of the rows, so with N workers the stream is read N times; decoding, the costly part, is shared out); it
    has no length."""

    def __init__(self, dataset, audio_column: str = "audio", split: str = "row"):
        self.dataset, self.audio_column, self.split = dataset, audio_column, split

    def __iter__(self) -> Iterator[AudioItem]:
        # `iter(batch_size=...)` reads every row in every DataLoader worker (iterating the dataset itself inside a
        # worker would give each worker only some of its shards); the engine takes each worker's share by row.
        batches = self.dataset.select_columns([self.audio_column]).iter(batch_size=64)
        values = (value for batch in batches for value in batch[self.audio_column])
        pending = []

        def paths():
            for value in values:
                pending.append(value)
                yield _path_of(value)

        for item_name in _row_names(paths(), self.split):
            yield AudioItem(item_name, audio=pending.pop(0))


def _path_of(value) -> str | None:
    if isinstance(value, dict):
        return value.get("path")
    return value if isinstance(value, str) else None


def _row_names(paths, split: str) -> Iterator[str]:
    used = set()
    for index, path in enumerate(paths):
        item_name = Path(path).name if path else f"{split}_{index:06d}.wav"
        if item_name in used:
            item_name = f"{index:06d}_{item_name}"
        used.add(item_name)
        yield item_name


def as_items(inputs) -> list[AudioItem] | StreamingItems:
    """Inputs of the Python API as [`AudioItem`]s: one input or a list of them, each a path (a file, a folder,
    searched recursively, or a list file: [`collect_inputs`], files named by path), an [`AudioItem`], in-memory audio
    in any form `audio.load_waveform` takes (named `audio_<position>`), or a `datasets` `Dataset` / `IterableDataset`
    (its `"audio"` column; an `IterableDataset` must be the only input).

    Raises:
        InputError: a path that does not exist, or no input.
    """
    if _is_dataset(inputs):
        return dataset_rows(inputs)
    if isinstance(inputs, StreamingItems):
        return inputs
    if not isinstance(inputs, (list, tuple)) or (inputs and all(isinstance(x, (int, float, np.number))
                                                              for x in inputs[:16])):
        inputs = [inputs]  # one input (a bare list of numbers is samples)
    if not inputs:
        raise InputError("no audio to process: give files, folders, list files, audio or a dataset")
    items: list[AudioItem] = []
    for position, value in enumerate(inputs):
        if isinstance(value, AudioItem):
            items.append(value)
        elif isinstance(value, (str, PathLike)):
            items += collect_inputs([value], keyed_by_name=False)
        elif _is_dataset(value):
            rows = dataset_rows(value)
            if isinstance(rows, StreamingItems):
                raise InputError("a streaming dataset must be the only input; run the other inputs separately")
            items += rows
        else:
            items.append(AudioItem(f"audio_{position}", audio=value))
    return list({(item.path or id(item)): item for item in items}.values())


def _is_dataset(value) -> bool:
    """A `datasets.Dataset` or `IterableDataset`, told without importing `datasets` (an optional dependency)."""
    return type(value).__module__.startswith("datasets.") and hasattr(value, "column_names")
