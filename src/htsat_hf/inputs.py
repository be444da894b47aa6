"""What a batch run reads: audio files given as files, folders or list files, or the rows of a `datasets` split, each
as an [`AudioItem`] named by its file name (the key of every output table and of DCASE ground truth).

- a file with an audio extension (`audio.AUDIO_EXTENSIONS`) is one input;
- a folder gives its audio files, sorted, not recursive;
- any other file is a list file: one path per line, relative to the list file, blank lines and `#` comments skipped.

Audio is decoded only when an item is loaded, by `audio.load_waveform`, so a run over thousands of files holds one
waveform at a time. Every problem is an [`InputError`] naming the file (and line, for list files).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import AUDIO_EXTENSIONS, load_waveform
from .errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["AudioItem", "collect_inputs", "dataset_items"]


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


def collect_inputs(paths: Sequence[str | Path], skip_missing: bool = False) -> list[AudioItem]:
    """The audio files of files, folders and list files (see the module docstring), in the order given.

    Args:
        paths: files, folders and list files.
        skip_missing: log and leave out listed files that do not exist instead of failing.

    Raises:
        InputError: a path that does not exist (the list file and line for listed ones, unless `skip_missing`), a
            folder without audio, two inputs with the same file name, no input at all.
    """
    items: list[AudioItem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                raise InputError(f"{path}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder")
            items += [AudioItem(p.name, str(p)) for p in found]
        elif path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS:
            items.append(AudioItem(path.name, str(path)))
        elif path.is_file():
            items += _listed_items(path, skip_missing)
        else:
            raise InputError(f"{path}: no such file or folder")
    if not items:
        raise InputError(f"no audio to process in {[str(p) for p in paths]}")
    seen: dict[str, str] = {}
    for item in items:
        if item.name in seen and seen[item.name] != item.path:
            raise InputError(
                f"two inputs have the file name {item.name!r} ({seen[item.name]} and {item.path}); output tables are "
                "keyed by file name"
            )
        seen[item.name] = item.path
    return list({item.name: item for item in items}.values())


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
        if not listed.is_file():
            message = f"{listing}, line {number}: {listed} does not exist"
            if not skip_missing:
                raise InputError(message)
            logger.warning("skipping: %s", message)
            continue
        items.append(AudioItem(listed.name, str(listed)))
    return items


def dataset_items(name: str, config_name: str | None, split: str, audio_column: str) -> list[AudioItem]:
    """The rows of a `datasets` split as inputs, named by their audio file name (or `<split>_<row>.wav`; a name
    seen before gets its row number as a prefix). An `Audio` column is read undecoded, so rows decode one at a time;
    another column (file paths, `{"array", "sampling_rate"}` dicts) is read as it is.

    Raises:
        ImportError: `datasets` is not installed.
        InputError: the split cannot be loaded, has no such column, or is empty.
    """
    try:
        import datasets
    except ImportError as error:
        raise ImportError(
            "reading a dataset split needs the datasets library: pip install 'htsat-hf[audio]'"
        ) from error
    try:
        dataset = datasets.load_dataset(name, config_name, split=split)
    except Exception as error:  # datasets raises many types (not found, unknown split, no connection)
        raise InputError(f"cannot load split {split!r} of dataset {name!r}: {error}") from None
    if audio_column not in dataset.column_names:
        raise InputError(f"dataset {name!r}, split {split!r} has no column {audio_column!r}: {dataset.column_names}")
    if isinstance(dataset.features.get(audio_column), datasets.Audio):
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    items, used = [], set()
    for index, value in enumerate(dataset.select_columns([audio_column])[audio_column]):
        path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
        item_name = Path(path).name if path else f"{split}_{index:06d}.wav"
        if item_name in used:
            item_name = f"{index:06d}_{item_name}"
        used.add(item_name)
        items.append(AudioItem(item_name, dataset=dataset, index=index, column=audio_column))
    if not items:
        raise InputError(f"dataset {name!r}, split {split!r} is empty")
    return items
