"""A picture of one file's detection: spectrogram (or waveform envelope for long audio), class activity over time,
and the detected events (with the reference events, when known) as a timeline.

Drawn with matplotlib's object API on an Agg canvas: no pyplot, no global backend switch, safe in threads and on
machines without a display. Needs matplotlib (`pip install 'htsat-hf[sed]'`), imported when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..feature_extraction_htsat import htsat_mel_filters, log_mel_spectrogram
from .postprocessing import Event
from .windows import FrameScores

SPECTROGRAM_MAX_SECONDS = 120.0  # longer audio is drawn as a waveform envelope
MAX_DISPLAY_COLUMNS = 4000


def select_classes(
    frame_scores: FrameScores,
    events: Sequence[Event | tuple | dict],
    reference: Sequence[tuple | dict] = (),
    top_k: int = 5,
    max_classes: int = 12,
) -> list[int]:
    """Columns to draw: classes with a detected or reference event, then the top-k classes by peak score, ordered by
    peak score (highest first), at most `max_classes`."""
    labels = list(frame_scores.labels)
    index = {label: k for k, label in enumerate(labels)}
    peaks = frame_scores.scores.max(axis=0) if frame_scores.scores.size else np.zeros(len(labels))
    named = [_as_tuple(event)[2] for event in list(events) + list(reference)]
    active = {index[label] for label in named if label in index}
    ranked = list(np.argsort(-peaks, kind="stable"))
    chosen = sorted(active, key=lambda k: -peaks[k])
    chosen += [k for k in ranked[: max(top_k, 0)] if k not in active]
    return [int(k) for k in chosen[:max_classes]]


def plot_detection(
    path: str | Path,
    waveform: np.ndarray,
    sampling_rate: int,
    frame_scores: FrameScores,
    events: Sequence[Event | tuple | dict],
    reference: Sequence[tuple | dict] = (),
    thresholds: float | np.ndarray | None = None,
    top_k: int = 5,
    max_classes: int = 12,
    title: str | None = None,
    dpi: int = 80,
) -> Path:
    """Save a PNG of one file's detection.

    Args:
        path: output PNG.
        waveform: `(samples,)` mono audio at `sampling_rate`.
        frame_scores: the scores the events came from (after class mapping and median filtering).
        events: detected events: `Event`s, `(onset, offset, label)` tuples or the sound-event-detection pipeline's
            dicts.
        reference: optional ground-truth events in the same forms, drawn under the detections.
        thresholds: the detection thresholds (scalar or per class), written next to the class names.
        top_k: classes drawn besides those with events: the `top_k` highest peak scores.
        max_classes: at most this many class rows.
        title: figure title (default: the file name).
        dpi: resolution; a 10 s file gives a PNG of about 50 KB at 80.

    Returns:
        The PNG path.

    Raises:
        ImportError: matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("plotting detections needs matplotlib: pip install 'htsat-hf[sed]'") from error

    path = Path(path)
    waveform = np.asarray(waveform, dtype=np.float32)
    events = [_as_tuple(event) for event in events]
    reference = [_as_tuple(event) for event in reference]
    duration = frame_scores.duration
    columns = select_classes(frame_scores, events, reference, top_k, max_classes)
    labels = [frame_scores.labels[k] for k in columns]
    rows = max(len(columns), 1)

    width = float(np.clip(6 + duration / 4, 8, 16))
    height = 2.2 + 2 * (0.25 * rows + 0.6)
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    top, middle, bottom = figure.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [2.2, 0.25 * rows + 0.6, 0.25 * rows + 0.6]}
    )
    figure.suptitle(title if title is not None else path.stem, fontsize=10)

    # Audio.
    if duration <= SPECTROGRAM_MAX_SECONDS and waveform.size:
        spectrogram, frame_seconds = _log_mel(waveform, sampling_rate)
        top.imshow(
            spectrogram.T,
            origin="lower",
            aspect="auto",
            extent=(0, spectrogram.shape[0] * frame_seconds, 0, spectrogram.shape[1]),
            cmap="magma",
            interpolation="nearest",
        )
        top.set_ylabel("mel bin")
    else:
        times, low, high = _envelope(waveform, sampling_rate)
        top.fill_between(times, low, high, color="tab:gray", linewidth=0)
        top.set_ylabel("amplitude")
    top.set_xlim(0, duration)

    # Class activity.
    if columns:
        mesh = middle.pcolormesh(
            frame_scores.boundaries,
            np.arange(rows + 1),
            frame_scores.scores[:, columns].T,
            vmin=0.0,
            vmax=1.0,
            cmap="viridis",
            shading="flat",
        )
        colorbar = figure.colorbar(mesh, ax=middle, pad=0.005, fraction=0.02)
        colorbar.set_label("probability", fontsize=8)
    middle.set_ylim(rows, 0)
    middle.set_yticks(np.arange(rows) + 0.5, _row_names(labels, columns, thresholds), fontsize=8)
    middle.set_ylabel("activity")

    # Timeline.
    colours = {label: f"C{k % 10}" for k, label in enumerate(labels)}
    for row, label in enumerate(labels):
        truth = [(on, off - on) for on, off, name in reference if name == label]
        if truth:
            bottom.broken_barh(truth, (row + 0.55, 0.35), facecolors="none", edgecolors="black", hatch="///",
                               linewidth=0.6)
        found = [(e[0], e[1] - e[0]) for e in events if e[2] == label]
        if found:
            bottom.broken_barh(found, (row + 0.1, 0.45 if len(reference) else 0.8), facecolors=colours[label])
    bottom.set_ylim(rows, 0)
    bottom.set_yticks(np.arange(rows) + 0.5, labels, fontsize=8)
    bottom.set_ylabel("events")
    bottom.set_xlabel("time (s)" + ("    (filled: detected, hatched: reference)" if len(reference) else ""))
    bottom.grid(axis="x", alpha=0.3)

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path


def _as_tuple(event) -> tuple:
    """(onset, offset, label) of an `Event`, a tuple, or a pipeline's `{"onset", "offset", "label"}` dict."""
    if isinstance(event, dict):
        return (float(event["onset"]), float(event["offset"]), str(event["label"]))
    return (float(event[0]), float(event[1]), str(event[2]))


def _row_names(labels: list[str], columns: list[int], thresholds) -> list[str]:
    if thresholds is None:
        return labels
    values = np.asarray(thresholds, dtype=np.float64)
    picked = [float(values) if values.ndim == 0 else float(values[k]) for k in columns]
    return [f"{label} (>{value:.2g})" for label, value in zip(labels, picked, strict=True)]


def _log_mel(waveform: np.ndarray, sampling_rate: int) -> tuple[np.ndarray, float]:
    """`(frames, 64)` log-mel in dB (HTS-AT's front end, 10 ms hop or coarser for long audio) and the frame hop."""
    n_fft = 1024
    hop = max(sampling_rate // 100, int(np.ceil(waveform.size / MAX_DISPLAY_COLUMNS)))
    if waveform.size <= n_fft // 2:
        waveform = np.pad(waveform, (0, n_fft // 2 + 1 - waveform.size))
    filters = torch.from_numpy(htsat_mel_filters(sampling_rate, n_fft, 64, 50.0, min(14000.0, sampling_rate / 2)))
    with torch.no_grad():
        spectrogram = log_mel_spectrogram(torch.from_numpy(np.ascontiguousarray(waveform))[None], filters, n_fft, hop)
    spectrogram = spectrogram[0].numpy()
    peak = spectrogram.max()
    return np.maximum(spectrogram, peak - 80.0), hop / sampling_rate


def _envelope(waveform: np.ndarray, sampling_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum and maximum of the waveform over `MAX_DISPLAY_COLUMNS` blocks."""
    block = max(1, int(np.ceil(waveform.size / MAX_DISPLAY_COLUMNS)))
    usable = (waveform.size // block) * block
    if usable == 0:
        return np.zeros(1), np.zeros(1), np.zeros(1)
    blocks = waveform[:usable].reshape(-1, block)
    times = (np.arange(blocks.shape[0]) + 0.5) * block / sampling_rate
    return times, blocks.min(axis=1), blocks.max(axis=1)


__all__ = ["plot_detection", "select_classes"]
