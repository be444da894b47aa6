"""Small labelled sound data sets generated locally (no network): clearly different synthetic sound classes, as
clips for classification and as scenes with timed events for detection. Used by the demo and the tests.

Classes: `tone` (steady sine), `chirp` (rising sweep), `bursts` (gated noise), `clicks` (impulse train), `hum`
(low harmonic buzz). Each draw varies pitch, rate and level so that a model must learn the class, not one file.

Clips and scenes are mixed the same way (`add_event`): background noise, and each sound added over it with 5 ms
fades, so that a clip whose sound covers only part of it (`make_classification_folder(partial_clips=...)`) looks
like a stretch of a scene around an event's onset or offset.

The folder generators ([`make_classification_folder`], [`make_detection_folder`]) write a new or empty folder: a
folder that holds files (an earlier set, maybe with more clips than this one, which would stay beside the rewritten
metadata or annotations) is refused, unless `overwrite=True`, which replaces it as a whole once the new set is
written (`loading.staged_output_dir`).
"""

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import InputError
from .loading import staged_output_dir

SOUND_CLASSES = ("tone", "chirp", "bursts", "clicks", "hum")


def synth_sound(kind: str, seconds: float, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One sound of class `kind`, `(round(seconds * sampling_rate),)` float32, peak about 0.3."""
    t = np.arange(int(round(seconds * sampling_rate))) / sampling_rate
    if kind == "tone":
        wave = np.sin(2 * np.pi * rng.uniform(400, 900) * t)
    elif kind == "chirp":
        start, rate = rng.uniform(200, 400), rng.uniform(1500, 2500)
        wave = np.sin(2 * np.pi * (start + rate * t / 2) * t)
    elif kind == "bursts":
        gate = np.sin(2 * np.pi * rng.uniform(3, 6) * t) > 0
        wave = rng.standard_normal(t.size) * gate
    elif kind == "clicks":
        period = int(sampling_rate / rng.uniform(8, 15))
        wave = np.zeros(t.size)
        wave[::period] = 1.0
        wave = np.convolve(wave, np.hanning(64), mode="same")
    elif kind == "hum":
        base = rng.uniform(90, 130)
        wave = sum(np.sin(2 * np.pi * base * k * t) / k for k in range(1, 6))
    else:
        raise ValueError(f"unknown sound class {kind!r}; choose from {SOUND_CLASSES}")
    wave = wave / (np.abs(wave).max() + 1e-9)
    return (wave * rng.uniform(0.2, 0.4)).astype(np.float32)


def background(seconds: float, sampling_rate: int, rng: np.random.Generator, level: float = 0.005) -> np.ndarray:
    return (rng.standard_normal(int(round(seconds * sampling_rate))) * level).astype(np.float32)


def add_event(
    wave: np.ndarray,
    kind: str,
    onset: float,
    seconds: float,
    sampling_rate: int,
    rng: np.random.Generator,
    fade_seconds: float = 0.005,
) -> tuple[float, float]:
    """Add one sound of class `kind` to `wave` in place from `onset` for `seconds` (cut at the end of `wave`), with
    raised-cosine fades of `fade_seconds` at both ends (no click at the edges, which a hard cut would add).

    Returns:
        The event's `(onset, offset)` in seconds as placed (the offset cut at the end of `wave`).
    """
    start = int(round(onset * sampling_rate))
    sound = synth_sound(kind, seconds, sampling_rate, rng)[: max(0, wave.size - start)]
    fade = min(int(round(fade_seconds * sampling_rate)), sound.size // 2)
    if fade > 0:
        ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade)).astype(np.float32)
        sound[:fade] *= ramp
        sound[sound.size - fade :] *= ramp[::-1]
    wave[start : start + sound.size] += sound
    return start / sampling_rate, (start + sound.size) / sampling_rate


@contextmanager
def _new_folder(root: str | Path, overwrite: bool) -> Iterator[Path]:
    """A folder to write a generated set into, which becomes `root` when the block ends without an exception.

    Raises:
        InputError: `root` is a file, or a folder that is not empty and `overwrite` is False.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InputError(f"{root}: is a file, not a folder to generate a data set in")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise InputError(f"{root}: the folder is not empty (an earlier data set?); generate into a new or empty "
                         "folder, or replace it as a whole with overwrite=True")
    with staged_output_dir(root) as staging:
        yield staging


def make_classification_folder(
    root: str | Path,
    classes: tuple[str, ...] = SOUND_CLASSES[:3],
    clips_per_class: int = 8,
    seconds: float = 2.0,
    sampling_rate: int = 32000,
    seed: int = 0,
    background_clips: int = 0,
    partial_clips: float = 0.0,
    min_partial_seconds: float = 0.5,
    max_sound_seconds: float | None = None,
    overwrite: bool = False,
) -> Path:
    """An `audiofolder` directory: `<root>/<kind>_<i>.wav` mono clips and `metadata.csv` (file_name, label), plus
    `background_clips` clips of background noise alone with an empty label (no class: all-zero multi-label
    targets), which teach a detector to stay silent between events.

    A fraction `partial_clips` of each class's clips hold their sound for only part of the clip (at least
    `min_partial_seconds`, at a random place, the rest background), as a detector's windows see an event that
    starts or ends inside them; the others are filled by the sound. With `max_sound_seconds` (above `seconds`), a
    filled clip is a random stretch of a sound of `seconds` to `max_sound_seconds`, as a detector's window sees the
    middle or the end of a long event (where a chirp's sweep has risen far above its start). The levels of the
    background-only clips vary (0.002 to 0.02) around the level of the background under the sounds (0.005).

    `root` must be new or empty; `overwrite=True` replaces a used one as a whole (see the module's docstring).

    Raises:
        InputError: `root` is a file, or a folder with files and not `overwrite`.
    """
    with _new_folder(root, overwrite) as staging:
        _write_classification_folder(staging, classes, clips_per_class, seconds, sampling_rate, seed, background_clips,
                                     partial_clips, min_partial_seconds, max_sound_seconds)
    return Path(root)


def _write_classification_folder(root: Path, classes, clips_per_class, seconds, sampling_rate, seed, background_clips,
                                 partial_clips, min_partial_seconds, max_sound_seconds) -> None:
    import soundfile

    rng = np.random.default_rng(seed)
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "label"])
        partial = int(round(partial_clips * clips_per_class))
        for kind in classes:
            for index in range(clips_per_class):
                name = f"{kind}_{index}.wav"
                if index < clips_per_class - partial and max_sound_seconds:
                    # Extra draws only with the option: the default clips keep their draws.
                    size = int(round(seconds * sampling_rate))
                    sound = synth_sound(kind, rng.uniform(seconds, max(seconds, max_sound_seconds)), sampling_rate, rng)
                    start = int(rng.integers(0, sound.size - size + 1))
                    clip = sound[start : start + size] + background(seconds, sampling_rate, rng)
                elif index < clips_per_class - partial:
                    clip = synth_sound(kind, seconds, sampling_rate, rng) + background(seconds, sampling_rate, rng)
                else:
                    clip = background(seconds, sampling_rate, rng)
                    length = rng.uniform(min(min_partial_seconds, seconds), seconds)
                    add_event(clip, kind, rng.uniform(0, seconds - length), length, sampling_rate, rng)
                soundfile.write(root / name, clip, sampling_rate)
                writer.writerow([name, kind])
        for index in range(background_clips):
            name = f"background_{index}.wav"
            soundfile.write(root / name, background(seconds, sampling_rate, rng, rng.uniform(0.002, 0.02)), sampling_rate)
            writer.writerow([name, ""])


def make_scene(
    seconds: float,
    sampling_rate: int,
    rng: np.random.Generator,
    classes: tuple[str, ...] = SOUND_CLASSES,
    num_events: int = 3,
    min_event: float = 0.5,
    max_event: float = 2.5,
    every_class: bool = False,
) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """A scene of `seconds` with `num_events` non-overlapping events of random classes at random times.

    With `every_class`, the classes are drawn as shuffled rounds of all `classes` (each class once per round), so
    that every class occurs when `num_events >= len(classes)`; otherwise each event's class is drawn on its own.

    Returns:
        The waveform `(samples,)` float32 and the events `(onset, offset, label)` in seconds, sorted by onset.
    """
    wave = background(seconds, sampling_rate, rng)
    events = []
    slots = np.sort(rng.choice(np.arange(int(seconds // max_event)), size=num_events, replace=False))
    kinds = None
    if every_class:
        rounds = -(-num_events // len(classes))
        kinds = np.concatenate([rng.permutation(np.asarray(classes)) for _ in range(rounds)])[:num_events]
        kinds = rng.permutation(kinds)
    for index, slot in enumerate(slots):
        length = rng.uniform(min_event, max_event)
        onset = slot * max_event + rng.uniform(0, max_event - length)
        kind = str(rng.choice(classes)) if kinds is None else str(kinds[index])
        start, end = add_event(wave, kind, onset, length, sampling_rate, rng)
        events.append((round(start, 3), round(end, 3), kind))
    return wave, events


def make_detection_folder(
    root: str | Path,
    num_files: int = 8,
    seconds: float = 10.0,
    sampling_rate: int = 32000,
    classes: tuple[str, ...] = SOUND_CLASSES[:3],
    events_per_file: int = 3,
    seed: int = 0,
    min_event: float = 0.5,
    max_event: float = 2.5,
    every_class: bool = False,
    overwrite: bool = False,
) -> Path:
    """Scenes with strong labels in the DESED layout: `<root>/audio/*.wav`, `<root>/annotations.tsv` (filename,
    onset, offset, event_label) and `<root>/durations.tsv` (filename, duration). `min_event`, `max_event` and
    `every_class` are `make_scene`'s (with `every_class`, the classes are drawn in rounds within each scene).

    `root` must be new or empty; `overwrite=True` replaces a used one as a whole (see the module's docstring).

    Raises:
        InputError: `root` is a file, or a folder with files and not `overwrite`.
    """
    with _new_folder(root, overwrite) as staging:
        _write_detection_folder(staging, num_files, seconds, sampling_rate, classes, events_per_file, seed, min_event,
                                max_event, every_class)
    return Path(root)


def _write_detection_folder(root: Path, num_files, seconds, sampling_rate, classes, events_per_file, seed, min_event,
                            max_event, every_class) -> None:
    import soundfile

    (root / "audio").mkdir()
    rng = np.random.default_rng(seed)
    with (root / "annotations.tsv").open("w", newline="") as labels, (root / "durations.tsv").open(
        "w", newline=""
    ) as durations:
        label_writer = csv.writer(labels, delimiter="\t")
        duration_writer = csv.writer(durations, delimiter="\t")
        label_writer.writerow(["filename", "onset", "offset", "event_label"])
        duration_writer.writerow(["filename", "duration"])
        for index in range(num_files):
            name = f"scene_{index:03d}.wav"
            wave, events = make_scene(
                seconds, sampling_rate, rng, classes, events_per_file, min_event, max_event, every_class
            )
            soundfile.write(root / "audio" / name, wave, sampling_rate)
            for onset, offset, label in events:
                label_writer.writerow([name, f"{onset:.3f}", f"{offset:.3f}", label])
            duration_writer.writerow([name, f"{seconds:.3f}"])


__all__ = [
    "SOUND_CLASSES",
    "add_event",
    "background",
    "make_classification_folder",
    "make_detection_folder",
    "make_scene",
    "synth_sound",
]
