"""Small labelled sound data sets generated locally (no network): clearly different synthetic sound classes, as
clips for classification and as scenes with timed events for detection. Used by the demo and the tests.

Classes: `tone` (steady sine), `chirp` (rising sweep), `bursts` (gated noise), `clicks` (impulse train), `hum`
(low harmonic buzz). Each draw varies pitch, rate and level so that a model must learn the class, not one file.
"""

import csv
from pathlib import Path

import numpy as np

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


def make_classification_folder(
    root: str | Path,
    classes: tuple[str, ...] = SOUND_CLASSES[:3],
    clips_per_class: int = 8,
    seconds: float = 2.0,
    sampling_rate: int = 32000,
    seed: int = 0,
    background_clips: int = 0,
) -> Path:
    """An `audiofolder` directory: `<root>/<kind>_<i>.wav` mono clips and `metadata.csv` (file_name, label), plus
    `background_clips` clips of background noise alone with an empty label (no class: all-zero multi-label
    targets), which teach a detector to stay silent between events."""
    import soundfile

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "label"])
        for kind in classes:
            for index in range(clips_per_class):
                name = f"{kind}_{index}.wav"
                clip = synth_sound(kind, seconds, sampling_rate, rng) + background(seconds, sampling_rate, rng)
                soundfile.write(root / name, clip, sampling_rate)
                writer.writerow([name, kind])
        for index in range(background_clips):
            name = f"background_{index}.wav"
            soundfile.write(root / name, background(seconds, sampling_rate, rng, rng.uniform(0.002, 0.02)), sampling_rate)
            writer.writerow([name, ""])
    return root


def make_scene(
    seconds: float,
    sampling_rate: int,
    rng: np.random.Generator,
    classes: tuple[str, ...] = SOUND_CLASSES,
    num_events: int = 3,
    min_event: float = 0.5,
    max_event: float = 2.5,
) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """A scene of `seconds` with `num_events` non-overlapping events of random classes at random times.

    Returns:
        The waveform `(samples,)` float32 and the events `(onset, offset, label)` in seconds, sorted by onset.
    """
    wave = background(seconds, sampling_rate, rng)
    events = []
    slots = np.sort(rng.choice(np.arange(int(seconds // max_event)), size=num_events, replace=False))
    for slot in slots:
        length = rng.uniform(min_event, max_event)
        onset = slot * max_event + rng.uniform(0, max_event - length)
        kind = str(rng.choice(classes))
        start = int(round(onset * sampling_rate))
        sound = synth_sound(kind, length, sampling_rate, rng)
        wave[start : start + sound.size] += sound[: wave.size - start]
        events.append((round(onset, 3), round(onset + length, 3), kind))
    return wave, events


def make_detection_folder(
    root: str | Path,
    num_files: int = 8,
    seconds: float = 10.0,
    sampling_rate: int = 32000,
    classes: tuple[str, ...] = SOUND_CLASSES[:3],
    events_per_file: int = 3,
    seed: int = 0,
) -> Path:
    """Scenes with strong labels in the DESED layout: `<root>/audio/*.wav`, `<root>/annotations.tsv` (filename,
    onset, offset, event_label) and `<root>/durations.tsv` (filename, duration)."""
    import soundfile

    root = Path(root)
    (root / "audio").mkdir(parents=True, exist_ok=True)
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
            wave, events = make_scene(seconds, sampling_rate, rng, classes, events_per_file)
            soundfile.write(root / "audio" / name, wave, sampling_rate)
            for onset, offset, label in events:
                label_writer.writerow([name, f"{onset:.3f}", f"{offset:.3f}", label])
            duration_writer.writerow([name, f"{seconds:.3f}"])
    return root


__all__ = [
    "SOUND_CLASSES",
    "make_classification_folder",
    "make_detection_folder",
    "make_scene",
    "synth_sound",
]
