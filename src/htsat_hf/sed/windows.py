"""Frame-level class scores with their true times, for audio of any length.

The model reads at most one clip (10 s by default) and stretches whatever it gets to its 32-step grid, so a step
lasts `clip_seconds / 32`: 312.5 ms for a 10 s clip, 125 ms for a 4 s one (`grid_step_seconds`).
`sliding_window_scores` runs audio of any length as windows of the clip length, batched, and stitches the steps onto
one time axis:

- audio no longer than a window is one window at its own length (stretched, as the original model does);
- longer audio is cut into full windows every `hop_seconds` (rounded to whole steps so that all windows share one
  grid), the last window zero-padded; overlapping steps are averaged and steps past the end of the audio dropped.

Memory is the waveform plus one batch of windows, whatever the duration. Class mapping, filtering and thresholding
of the resulting [`FrameScores`] are in `htsat_hf.sed.postprocessing`.
"""

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError

MIN_AUDIO_SECONDS = 0.1


@dataclass
class FrameScores:
    """Class scores on one time axis.

    Attributes:
        scores: `(steps, classes)` frame probabilities (sigmoid of the frame logits).
        step_seconds: duration of one step; step `i` covers `[i * step_seconds, (i + 1) * step_seconds)`, the last
            one ending at `duration`.
        duration: length of the audio in seconds.
        labels: class names, `labels[c]` for column `c`.
        clip_scores: `{"mean": (classes,), "max": (classes,)}` clip probabilities aggregated over the windows.
    """

    scores: np.ndarray
    step_seconds: float
    duration: float
    labels: list[str]
    clip_scores: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def onsets(self) -> np.ndarray:
        """`(steps,)` start time of each step in seconds."""
        return np.arange(self.scores.shape[0]) * self.step_seconds

    @property
    def offsets(self) -> np.ndarray:
        """`(steps,)` end time of each step in seconds, the last one clipped to the audio's end."""
        return np.minimum(self.onsets + self.step_seconds, self.duration)

    @property
    def boundaries(self) -> np.ndarray:
        """`(steps + 1,)` step boundaries in seconds (`postprocessing.activity_to_events`' `frame_times`)."""
        return np.append(self.onsets, self.duration)


def check_detection_duration(seconds: float, name: str = "the audio") -> None:
    """Refuse audio shorter than `MIN_AUDIO_SECONDS` (0.1 s), too short to place an event on the model's grid.

    Raises:
        InputError: naming `name` (a file) and its duration in ms.
    """
    if seconds < MIN_AUDIO_SECONDS:
        raise InputError(
            f"{name}: {1000 * seconds:.1f} ms of audio, too short for detection (at least "
            f"{1000 * MIN_AUDIO_SECONDS:.0f} ms)"
        )


def grid_step_seconds(window_samples: int, hop_length: int, num_steps: int, sampling_rate: int) -> float:
    """Seconds per model step for a window (or clip, after padding) of `window_samples` samples.

    The feature extractor makes `window_samples // hop_length + 1` STFT frames (centred), whose hops span
    `(window_samples // hop_length) * hop_length` samples; the model stretches them to `config.max_frames` and pools
    them evenly into `num_steps` (`config.num_time_steps`, 32) steps. So a step is that span over `num_steps`:
    0.3125 s for 10 s at 32 kHz with hop 320, the grid of HTS-AT's token-semantic head (Chen et al., ICASSP 2022).
    """
    return (window_samples // hop_length) * hop_length / num_steps / sampling_rate


def plan_windows(num_samples: int, window: int, hop: int) -> list[int]:
    """Start samples of windows of `window` samples every `hop` samples until one reaches the end."""
    if num_samples <= window:
        return [0]
    return [k * hop for k in range(1 + math.ceil((num_samples - window) / hop))]


@torch.no_grad()
def sliding_window_scores(
    model,
    feature_extractor,
    waveform: np.ndarray,
    sampling_rate: int,
    window_seconds: float | None = None,
    hop_seconds: float | None = None,
    batch_size: int = 8,
) -> FrameScores:
    """Frame and clip scores of an `HTSATForSoundEventDetection` over mono audio of any length.

    Args:
        model: an `HTSATForSoundEventDetection` (any device; the windows follow it).
        feature_extractor: its `HTSATFeatureExtractor`.
        waveform: `(samples,)` mono audio at `sampling_rate`, at least 0.1 s long.
        sampling_rate: must equal the feature extractor's.
        window_seconds: window length, at most (and by default) the extractor's `max_length_seconds`.
        hop_seconds: distance between window starts, by default half a window; rounded to whole model steps.
        batch_size: windows per forward pass.

    Returns:
        [`FrameScores`] over the whole audio.

    Raises:
        InputError: a feature extractor that does not fit the model's config (`check_matches_config`: another front
            end, or clips longer than the model reads), audio that is not mono or shorter than 0.1 s, a window or
            hop out of range.
        ValueError: a sampling rate that is not the feature extractor's.
    """
    feature_extractor.check_matches_config(model.config)
    waveform = np.asarray(waveform)
    if waveform.ndim != 1:
        raise InputError(f"waveform must be mono (samples,), got shape {waveform.shape}; downmix it first")
    feature_extractor.check_sampling_rate(sampling_rate)
    duration = waveform.shape[0] / sampling_rate
    check_detection_duration(duration)
    max_seconds = feature_extractor.max_length_seconds
    window_seconds = max_seconds if window_seconds is None else window_seconds
    if not MIN_AUDIO_SECONDS <= window_seconds <= max_seconds:
        raise InputError(
            f"window_seconds must be between {MIN_AUDIO_SECONDS} and {max_seconds:g}, got {window_seconds}"
        )
    steps_per_window = model.config.num_time_steps
    window = int(round(window_seconds * sampling_rate))
    if waveform.shape[0] <= window:
        window = waveform.shape[0]
    step_seconds = grid_step_seconds(window, feature_extractor.hop_length, steps_per_window, sampling_rate)
    step_samples = step_seconds * sampling_rate
    hop_seconds = window_seconds / 2 if hop_seconds is None else hop_seconds
    if hop_seconds <= 0:
        raise InputError(f"hop_seconds must be positive, got {hop_seconds}")
    hop_steps = min(steps_per_window, max(1, round(hop_seconds / step_seconds)))
    starts = plan_windows(waveform.shape[0], window, int(round(hop_steps * step_samples)))

    total_steps = min(math.ceil(waveform.shape[0] / step_samples - 1e-9), (len(starts) - 1) * hop_steps + steps_per_window)
    totals = np.zeros((total_steps, model.config.num_labels), dtype=np.float64)
    counts = np.zeros((total_steps, 1), dtype=np.float64)
    clip_probabilities = []
    device = model.device
    for first in range(0, len(starts), batch_size):
        batch_starts = starts[first : first + batch_size]
        windows = [_window(waveform, start, window) for start in batch_starts]
        features = feature_extractor(
            windows, sampling_rate=sampling_rate, padding="longest", return_tensors="pt", device=device
        )["input_features"]  # float32: the model casts them (see HTSATModel.forward)
        output = model(features)
        frame_probabilities = output.logits.float().sigmoid().cpu().numpy()
        clip_probabilities.append(output.clip_logits.float().sigmoid().cpu().numpy())
        for index, probabilities in enumerate(frame_probabilities):
            offset = (first + index) * hop_steps
            usable = min(steps_per_window, total_steps - offset)
            totals[offset : offset + usable] += probabilities[:usable]
            counts[offset : offset + usable] += 1
    clip_probabilities = np.concatenate(clip_probabilities)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return FrameScores(
        scores=(totals / counts).astype(np.float32),
        step_seconds=step_seconds,
        duration=duration,
        labels=labels,
        clip_scores={"mean": clip_probabilities.mean(0), "max": clip_probabilities.max(0)},
    )


def _window(waveform: np.ndarray, start: int, length: int) -> np.ndarray:
    piece = waveform[start : start + length]
    if piece.shape[0] < length:
        piece = np.pad(piece, (0, length - piece.shape[0]))
    return piece


__all__ = [
    "FrameScores",
    "MIN_AUDIO_SECONDS",
    "check_detection_duration",
    "grid_step_seconds",
    "plan_windows",
    "sliding_window_scores",
]
