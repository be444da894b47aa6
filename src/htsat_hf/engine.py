"""The inference engine behind `htsat-hf predict`, `run_sed.py` and [`predict_files`]: tags and events of any
number of inputs of any length, batched across files, with memory flat in the duration of each file.

How a run flows:

- **Decoding** happens in `torch.utils.data.DataLoader` workers (`num_workers`; 0 decodes in the main process) over
  [`WindowDataset`], an `IterableDataset`. Each worker reads its share of the inputs (input `i` goes to worker
  `i % num_workers`) block by block with `audio.stream_audio`, cuts the blocks into the windows
  `sed.windows.sliding_window_scores` would run (same length, hop and zero-padded last window), computes their
  log-mel features (on one torch thread, as a worker runs, also in the main process: [`_feature_threads`]), and packs
  windows of consecutive files into batches of `batch_size`. Only a window of audio and one block are held per
  worker, whatever the file's length.
- **The model** runs in the main process on each batch (`device`, in the model's dtype), always on a full batch (a
  short one padded with zero windows, their outputs dropped): the float rounding depends on the batch's shape, so
  this makes a window's scores the same bytes whichever windows share its batch, with any number of workers (0
  included) or processes and after a resume (for one batch size and thread count). The whole run is inside
  `cpu_fast_path_htsat.frozen_weights`, so that on a CPU each linear weight is reordered for oneDNN once.
- **Assembly** ([`_FileAssembler`], one per file in flight) stitches the windows' step probabilities onto one time
  axis as `sliding_window_scores` does (overlaps averaged in float64), but incrementally: a step leaves as soon as no
  later window covers it. Finalised steps are class-mapped, median filtered as a stream (`_MedianStream`, exactly
  `scipy.ndimage.median_filter`'s "reflect" result on the whole file), thresholded and joined into events as a
  stream (`_EventStream`, exactly `frame_scores_events`' events), and written to a score file when asked; clip tags
  come from running sums. So a 24-hour file never holds its waveform nor its `(steps, classes)` score matrix.

Results equal those of `predict.predict_file` (tags, scores and events; scores within float rounding of batching)
and of `sed.detection`'s per-file `file_scores` + `postprocess`.

Outputs ([`write_predictions`]): each finished file is appended as one JSON line to a journal
`<output>.parts/shard-<rank>.jsonl` (flushed, so a killed run loses only the files in flight; a torn last line is
cut off when the journal is read again). When every file is done, the journal is rendered in input order into the
output (JSONL: one `FilePrediction.to_dict()` per line; TSV: `predict.TSV_COLUMNS`), written to a temporary file
and renamed into place, and the journal removed. `resume=True` continues from the journal, skipping the files it
holds; without it, an existing output or journal is refused. The journal's `fingerprint.json` records what decides
the results (`InferenceEngine.fingerprint`: model config and weights digest, dtype, options, top-k, and the inputs in
order); a resume where it differs is refused in one line. A finished JSONL output keeps it beside it
(`.<output>.run.json`) so that resuming a finished run can be checked the same way. Under `accelerate launch` each
process takes the inputs `i % num_processes == rank`, journals into its own shard, and the main process merges the
shards: the output is the same bytes as a one-process run's. A refusal of the output (made by the main process) or an
error in any process ends every process with the same one line (`distributed.together`), none is left waiting.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from . import audio
from .cpu_fast_path_htsat import frozen_weights
from .distributed import distributed_state as _distributed_state
from .distributed import together
from .errors import InputError, error_line
from .feature_extraction_htsat import HTSATFeatureExtractor
from .inputs import AudioItem, as_items
from .modeling_htsat import HTSATForSoundEventDetection, stretch_spectrogram
from .predict import TSV_COLUMNS, FilePrediction, check_eval_mode, check_options, load_predictor, tsv_rows
from .sed.io import audio_id, scores_dataframe
from .sed.postprocessing import DetectionSettings, Event, binarize, map_scores, median_filter_kernel_frames
from .sed.windows import MIN_AUDIO_SECONDS, FrameScores, check_detection_duration, grid_step_seconds

logger = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_FORMATS",
    "FileResult",
    "InferenceEngine",
    "WindowDataset",
    "WindowPlan",
    "default_device",
    "in_input_order",
    "output_format",
    "predict_files",
    "write_predictions",
]

OUTPUT_FORMATS = {".jsonl": "jsonl", ".tsv": "tsv"}
PARTS_SUFFIX = ".parts"


# ------------------------------------------------------------------------------------------------------ windowing


@dataclass(frozen=True)
class WindowPlan:
    """How audio is cut into model windows: the rules of `sed.windows.sliding_window_scores`, fixed for a run.

    Attributes:
        sampling_rate: the model's rate (Hz).
        window: window length in samples.
        hop: samples between window starts (a whole number of steps, rounded as `sliding_window_scores` does).
        hop_steps: the hop in model steps.
        steps_per_window: model steps per window (`config.num_time_steps`, 32).
        step_seconds: seconds per step of a full window.
        hop_length: the extractor's STFT hop (for the step of a short, stretched window).
        model_frames: the frames every window's log-mel is stretched to before batching, the length the model
            stretches its input to (`config.spec_size * freq_ratio`), so that a file shorter than a window shares a
            batch with full windows instead of running alone. Only time is stretched: the mel bins stay the
            features' own, which the model's `feature_norm` reads (the model stretches them after it where
            `spec_size // freq_ratio` exceeds `num_mel_bins`; the bicubic stretch is separable, so the two steps
            give the model's image up to float rounding).
        max_length_samples: the model's clip length in samples (clips up to it are tagged as one padded clip).
        short_audio: `"stretch"` (a file shorter than a window is one window at its own length) or `"pad"` (zero
            padded to a full window, steps past its end dropped), as `sed.detection.file_scores`.
        tag_clips: run the extra tagging pass on files of at most `max_length_samples` (only needed for tags).
    """

    sampling_rate: int
    window: int
    hop: int
    hop_steps: int
    steps_per_window: int
    step_seconds: float
    hop_length: int
    max_length_samples: int
    model_frames: int
    short_audio: str = "stretch"
    tag_clips: bool = True

    @classmethod
    def for_model(
        cls,
        config,
        feature_extractor: HTSATFeatureExtractor,
        window_seconds: float | None = None,
        hop_seconds: float | None = None,
        short_audio: str = "stretch",
        tag_clips: bool = True,
    ) -> WindowPlan:
        """The plan of `sliding_window_scores(window_seconds=..., hop_seconds=...)` for a model's config.

        Raises:
            InputError: a window outside [0.1 s, the model's clip] or a hop that is not positive.
        """
        rate = feature_extractor.sampling_rate
        max_seconds = feature_extractor.max_length_seconds
        window_seconds = max_seconds if window_seconds is None else window_seconds
        if not MIN_AUDIO_SECONDS <= window_seconds <= max_seconds:
            raise InputError(
                f"window_seconds must be between {MIN_AUDIO_SECONDS} and {max_seconds:g}, got {window_seconds}"
            )
        hop_seconds = window_seconds / 2 if hop_seconds is None else hop_seconds
        if hop_seconds <= 0:
            raise InputError(f"hop_seconds must be positive, got {hop_seconds}")
        steps = config.num_time_steps
        window = int(round(window_seconds * rate))
        step_seconds = grid_step_seconds(window, feature_extractor.hop_length, steps, rate)
        hop_steps = min(steps, max(1, round(hop_seconds / step_seconds)))
        return cls(
            sampling_rate=rate,
            window=window,
            hop=int(round(hop_steps * step_seconds * rate)),
            hop_steps=hop_steps,
            steps_per_window=steps,
            step_seconds=step_seconds,
            hop_length=feature_extractor.hop_length,
            max_length_samples=feature_extractor.max_length_samples,
            model_frames=config.spec_size * config.freq_ratio,
            short_audio=short_audio,
            tag_clips=tag_clips,
        )

    def step_of(self, window_length: int) -> float:
        """Seconds per step of a window of `window_length` samples (a short file's own window is stretched)."""
        if window_length == self.window:
            return self.step_seconds
        return grid_step_seconds(window_length, self.hop_length, self.steps_per_window, self.sampling_rate)

    def total_steps(self, num_samples: int, num_windows: int, step_seconds: float) -> int:
        """Steps of a file of `num_samples` samples, as `sliding_window_scores` and `file_scores` count them."""
        if self.short_audio == "pad" and num_samples < self.window:
            # file_scores pads the audio to a window, then keeps the steps that start inside the audio.
            return min(self.steps_per_window,
                       math.ceil(num_samples / self.sampling_rate / step_seconds - 1e-9))
        return min(math.ceil(num_samples / (step_seconds * self.sampling_rate) - 1e-9),
                   (num_windows - 1) * self.hop_steps + self.steps_per_window)


# Records a worker sends with each batch, in input order within the worker. Rows index the batch's features.
# ("start", index, name): input `index` begins;
# ("window", index, row, number, length): window `number` of input `index`, `length` samples before padding;
# ("tag", index, row): the clip-tagging pass of a file of at most the model's clip length;
# ("end", index, num_samples, name, file, native rate): the input is fully read;
# ("error", index, name, file, message): the input cannot be read (it is skipped; its other records are dropped).


class WindowDataset(IterableDataset):
    """Batches of model inputs over many audio inputs: `{"features": (batch, frames, mel_bins) float32 tensor or
    None, "records": [...]}` (see the record kinds above), the windows of consecutive inputs packed together.

    Inputs are shared out as `index % (num_shards * num_workers) == shard + num_shards * worker`: `shard` of
    `num_shards` is this process's (several processes under `accelerate launch`), `worker` the DataLoader worker's.

    Args:
        items: the inputs, a sequence of [`AudioItem`] or an iterable of them (a streaming dataset's rows) that
            each worker iterates again and takes its share from.
        plan: the windowing.
        feature_extractor: the model's extractor (run in the workers).
        batch_size: windows per batch. Every window's log-mel is stretched to the model's input size first (see
            `WindowPlan`), so a file shorter than a window (a window of its own length) shares a batch with full
            windows; a batch is still cut where the size changes (only a log-mel larger than the model reads).
        skip: files (as outputs name them: the path, or the name of in-memory audio) already done (resume).
    """

    def __init__(self, items: Iterable[AudioItem], plan: WindowPlan, feature_extractor: HTSATFeatureExtractor,
                 batch_size: int, shard: int = 0, num_shards: int = 1, skip: frozenset[str] = frozenset()):
        self.items = items
        self.plan = plan
        self.feature_extractor = feature_extractor
        self.batch_size = batch_size
        self.shard, self.num_shards = shard, num_shards
        self.skip = skip

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stride, mine = self.num_shards * workers, self.shard + self.num_shards * worker
        features: list[np.ndarray] = []
        records: list[tuple] = []
        for index, item in enumerate(self.items):
            if index % stride != mine or _file_name(item) in self.skip:
                continue
            records.append(("start", index, item.name))
            try:
                for kind, row_features, *rest in self._windows(item):
                    if features and row_features.shape != features[0].shape:
                        yield _batch(features, records)
                        features, records = [], []
                    records.append((kind, index, len(features), *rest))
                    features.append(row_features)
                    if len(features) == self.batch_size:
                        yield _batch(features, records)
                        features, records = [], []
                num_samples, rate = self._last
                records.append(("end", index, num_samples, item.name, _file_name(item), rate))
            except InputError as error:
                records.append(("error", index, item.name, _file_name(item), error_line(error)))
        if features or records:
            yield _batch(features, records)

    def _windows(self, item: AudioItem) -> Iterator[tuple]:
        """`(kind, features, ...)` of one input's windows, read block by block; sets `self._last` to `(samples,
        native rate)` at the end."""
        plan = self.plan
        source = item.path if item.path is not None else item.value()
        blocks = audio.stream_audio(source, plan.sampling_rate, plan.window, name=item.source)
        buffer = np.zeros(0, np.float32)
        head = []  # the first clip's worth of samples, for the tagging pass of a file that short
        buffer_start = next_start = total = number = 0
        for block in blocks:
            if plan.tag_clips and total <= plan.max_length_samples:
                head.append(block[: plan.max_length_samples + 1 - total])
            total += block.shape[0]
            buffer = np.concatenate([buffer, block])
            while next_start + plan.window <= total:
                offset = next_start - buffer_start
                yield "window", self._features(buffer[offset : offset + plan.window]), number, plan.window
                number += 1
                next_start += plan.hop
                drop = min(next_start - buffer_start, buffer.shape[0])
                buffer, buffer_start = buffer[drop:], buffer_start + drop
        check_detection_duration(total / plan.sampling_rate, item.source)
        if number == 0:
            # The whole file is shorter than a window, and all in the buffer.
            if plan.short_audio == "pad":
                yield "window", self._features(np.pad(buffer, (0, plan.window - total))), 0, plan.window
            else:
                yield "window", self._features(buffer), 0, total
        elif total > next_start - plan.hop + plan.window:
            # The last window runs past the end: zero padded, as sliding_window_scores pads it.
            piece = buffer[next_start - buffer_start :]
            yield "window", self._features(np.pad(piece, (0, plan.window - piece.shape[0]))), number, plan.window
        if plan.tag_clips and total <= plan.max_length_samples and not (number == 1 and total == plan.window
                                                                         == plan.max_length_samples):
            # A clip the model reads whole is tagged as it was trained: padded to the clip length by pad_mode
            # (predict.predict_waveform). A file of exactly the clip length has that as its detection window.
            yield "tag", self._features(np.concatenate(head), padding="max_length")
        self._last = (total, _native_rate(item))

    def _features(self, samples: np.ndarray, padding: str = "longest") -> np.ndarray:
        """`(frames, mel_bins)` float32 log-mel (dB) of one window, stretched in time to `plan.model_frames`,
        computed on one torch thread (see [`_feature_threads`])."""
        with _feature_threads():
            features = self.feature_extractor(
                samples, sampling_rate=self.plan.sampling_rate, padding=padding, return_tensors="pt"
            )["input_features"]
            if features.shape[1] > self.plan.model_frames:
                # More than the model reads (InferenceEngine refuses such an extractor): never shrunk.
                return features[0].numpy()
            return stretch_spectrogram(features, self.plan.model_frames, features.shape[2])[0].numpy()


@contextmanager
def _feature_threads() -> Iterator[None]:
    """Run the block on one torch thread, the count a DataLoader worker runs on (torch sets it in every worker),
    and restore the caller's count after it.

    The log-mel's mel projection (a matmul) rounds differently with another thread count (up to 3e-6 dB between 1
    and 2 threads), enough to change the 6th decimal of a score; computing it on one thread in the main process too
    makes the output the same bytes with 0 workers as with any number, so that a `--resume` with another worker
    setting cannot mix two roundings. The model's forward runs outside it, on the caller's threads.

    Cost, measured on an idle 2-core Xeon (torch 2.11): the log-mel of a 10 s window takes 5.5 ms on one thread
    against 4.8 ms on two (medians of 40), the switch itself about 1 us: under 1 ms per window, about 1 % of the
    window's fp32 forward pass at batch 8 (about 70 ms there).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _batch(features: list[np.ndarray], records: list[tuple]) -> dict:
    return {"features": torch.from_numpy(np.stack(features)) if features else None, "records": records}


def _file_name(item: AudioItem) -> str:
    """How outputs name an input: its path as given, else its name (dataset rows, in-memory audio)."""
    return item.path if item.path is not None else item.name


def _native_rate(item: AudioItem) -> int | None:
    """The file's own sampling rate from its header (`FilePrediction.sampling_rate`), None when unknown."""
    if item.path is None:
        return None
    try:
        import soundfile

        return int(soundfile.info(item.path).samplerate)
    except Exception:  # libsndfile's many error types: a format only FFmpeg reads
        pass
    try:
        from torchcodec.decoders import AudioDecoder

        return int(AudioDecoder(item.path).metadata.sample_rate)
    except Exception:  # no torchcodec, or it cannot read the header either: the rate is not reported
        return None


def _identity(batch):
    return batch


# --------------------------------------------------------------------------------------------------- streaming


class _MedianStream:
    """A median filter of `size` (odd) steps along time over rows given chunk by chunk, returning each filtered row
    as soon as its neighbourhood is known: the rows of `scipy.ndimage.median_filter(all_rows, size=(size, 1))`
    (mode "reflect", as `postprocessing.median_filter_scores`), holding only `size` rows."""

    def __init__(self, size: int):
        self.half = size // 2
        self.size = size
        self.buffer: np.ndarray | None = None  # rows from `start` on
        self.start = 0
        self.seen = 0
        self.emitted = 0

    def push(self, rows: np.ndarray) -> np.ndarray:
        if self.half == 0:
            return rows
        self.buffer = rows if self.buffer is None else np.concatenate([self.buffer, rows])
        self.seen += rows.shape[0]
        ready = self.seen - self.half  # rows below this have their whole neighbourhood
        if ready <= self.emitted:
            return rows[:0]
        if self.start == 0:
            # The file's first rows: mirror them in front, as mode "reflect" does.
            extended, shift = np.concatenate([self.buffer[: self.half][::-1], self.buffer]), self.half
        else:
            extended, shift = self.buffer, 0
        filtered = ndimage.median_filter(extended, size=(self.size, 1))
        out = filtered[self.emitted - self.start + shift : ready - self.start + shift]
        self.emitted = ready
        keep_from = max(0, self.emitted - self.half)
        self.buffer, self.start = self.buffer[keep_from - self.start :], keep_from
        return out

    def finish(self) -> np.ndarray:
        if self.half == 0 or self.buffer is None:
            return np.zeros((0, 0), np.float32) if self.buffer is None else self.buffer[:0]
        if self.start == 0:
            # The buffer is the whole file: filter it as a whole (reflections of a file shorter than the filter).
            return ndimage.median_filter(self.buffer, size=(self.size, 1))[self.emitted :]
        extended = np.concatenate([self.buffer, self.buffer[::-1][: self.half]])
        return ndimage.median_filter(extended, size=(self.size, 1))[self.emitted - self.start : self.seen - self.start]


EVENT_BLOCK = 1 << 16


class _EventStream:
    """Events from filtered step scores given chunk by chunk: exactly `postprocessing.activity_to_events(binarize(
    scores, thresholds), boundaries, labels, scores, min_duration, min_gap)` on the whole file, keeping only the runs
    still open (and, with `min_gap`, each class's last event)."""

    def __init__(self, labels: Sequence[str], thresholds, step_seconds: float, min_duration: float = 0.0,
                 min_gap: float = 0.0):
        self.labels = list(labels)
        self.thresholds = thresholds
        self.step = step_seconds
        self.min_duration, self.min_gap = min_duration, min_gap
        classes = len(self.labels)
        self.open_start = np.full(classes, -1, np.int64)  # start step of each class's open run, -1 when none
        self.open_peak = np.full(classes, -np.inf)
        self.position = 0
        self.last: dict[int, list] = {}  # class -> [onset, offset, peak] of its last event, while it may merge
        # Closed events as flat float64 (onset, offset, class, peak) quadruples, 32 bytes each instead of a Python
        # tuple's ~190: a busy day-long file has millions of events, all held until it ends.
        self.events = array("d")

    def push(self, rows: np.ndarray) -> None:
        steps, classes = rows.shape
        if steps == 0:
            return
        active = binarize(rows, self.thresholds)
        carried = self.open_start >= 0
        padded = np.zeros((classes, steps + 2), np.int8)
        padded[:, 0] = carried
        padded[:, 1:-1] = active.T
        edges = np.diff(padded, axis=1)
        rise_class, rise_step = np.nonzero(edges == 1)
        fall_class, fall_step = np.nonzero(edges == -1)  # exclusive end; `steps` means still open
        # A run carried over from the last chunk starts at "-1" here; pair the k-th start with the k-th end per class.
        start_class = np.concatenate([rise_class, np.flatnonzero(carried)])
        start_step = np.concatenate([rise_step, np.full(int(carried.sum()), -1)])
        order = np.lexsort((start_step, start_class))
        start_class, start_step = start_class[order], start_step[order]
        # Peak of each run inside this chunk (as activity_to_events: reduceat over class-major rows).
        flat = np.append(rows.T.astype(np.float64).ravel(), -np.inf)
        first = np.maximum(start_step, 0)
        bounds = np.stack([fall_class * steps + first, fall_class * steps + fall_step], axis=1).ravel()
        peaks = np.maximum.reduceat(flat, bounds)[::2] if bounds.size else np.zeros(0)
        peaks = np.where(fall_step > first, peaks, -np.inf)
        carried_run = start_step < 0
        starts = np.where(carried_run, self.open_start[fall_class], self.position + start_step)
        peaks = np.where(carried_run, np.maximum(peaks, self.open_peak[fall_class]), peaks)
        still_open = fall_step == steps
        self.open_start[:] = -1
        self.open_peak[:] = -np.inf
        self.open_start[fall_class[still_open]] = starts[still_open]
        self.open_peak[fall_class[still_open]] = peaks[still_open]
        closed = np.flatnonzero(~still_open)
        onsets, offsets = starts[closed] * self.step, (self.position + fall_step[closed]) * self.step
        if self.min_gap > 0:
            for k, onset, offset in zip(closed, onsets, offsets, strict=True):
                self._close(int(fall_class[k]), onset, offset, float(peaks[k]))
        else:
            # No merging: runs of a class never touch, so every closed run is an event as it is (no Python loop
            # over a random model's thousands of runs per window).
            rows = np.stack([onsets, offsets, fall_class[closed], peaks[closed]], axis=1)
            self.events.frombytes(rows[offsets - onsets >= self.min_duration].tobytes())
        self.position += steps

    def _close(self, label: int, onset: float, offset: float, peak: float) -> None:
        last = self.last.get(label)
        if last is not None and onset - last[1] < self.min_gap:
            last[1], last[2] = offset, max(last[2], peak)
            return
        if last is not None:
            self._keep(label, *last)
        self.last[label] = [onset, offset, peak]

    def _keep(self, label: int, onset: float, offset: float, peak: float) -> None:
        if offset - onset >= self.min_duration:
            self.events.extend((onset, offset, label, peak))

    def finish(self, duration: float) -> list[Event]:
        """The events, sorted by onset then class; runs open at the end close at `duration`."""
        for label in np.flatnonzero(self.open_start >= 0):
            self._close(int(label), self.open_start[label] * self.step, duration, float(self.open_peak[label]))
        for label, last in self.last.items():
            self._keep(label, *last)
        rows = np.frombuffer(self.events, np.float64).reshape(-1, 4)
        order = np.lexsort((rows[:, 2], rows[:, 0]))
        events: list[Event] = []
        # Built a block at a time: whole-file columns as Python lists would briefly double a busy day's events.
        for start in range(0, order.size, EVENT_BLOCK):
            block = rows[order[start : start + EVENT_BLOCK]]
            labels = [self.labels[label] for label in block[:, 2].astype(np.int64).tolist()]
            events += map(Event, block[:, 0].tolist(), block[:, 1].tolist(), labels, block[:, 3].tolist())
        del rows
        self.events = array("d")
        return events


# ---------------------------------------------------------------------------------------------------- assembly


@dataclass
class FileResult:
    """One input's results.

    Attributes:
        index: the input's position in the run.
        prediction: tags and events (`file` is the path as given, or the name of in-memory and dataset audio).
        name: the input's name (the key of `run_sed.py`'s tables).
        file: how outputs name it: the path as given, or the name of in-memory and dataset audio.
        scores: the filtered step scores, when the engine keeps them (`keep_scores`).
        error: why the input was skipped (then `prediction` is None).
    """

    index: int
    name: str
    file: str
    prediction: FilePrediction | None = None
    scores: FrameScores | None = None
    error: str | None = None


class _FileAssembler:
    """One file's results from its windows' model outputs, as they come (see the module docstring)."""

    def __init__(self, engine: InferenceEngine, index: int, name: str, scores_dir: Path | None, keep_scores: bool):
        self.engine, self.index, self.name = engine, index, name
        self.scores_dir, self.keep_scores = scores_dir, keep_scores
        self.step: float | None = None
        self.base = 0  # the first step not yet finalised
        self.totals = np.zeros((0, engine.num_model_classes))
        self.counts = np.zeros((0, 1))
        self.windows = 0
        self.clip_sum = np.zeros(engine.num_model_classes)
        self.tag_scores: np.ndarray | None = None
        self.median: _MedianStream | None = None
        self.events: _EventStream | None = None
        self.kept: list[np.ndarray] = []
        self.score_file = None
        self.written = 0

    def add_window(self, number: int, length: int, probabilities: np.ndarray, clip: np.ndarray) -> None:
        plan, settings = self.engine.plan, self.engine.settings
        if self.step is None:
            self.step = plan.step_of(length)
            size = median_filter_kernel_frames(self.step, settings.median_filter_seconds)
            self.median = _MedianStream(size)
            self.events = _EventStream(settings.labels, settings.thresholds, self.step, settings.min_duration,
                                       settings.min_gap)
        offset = number * plan.hop_steps
        needed = offset + plan.steps_per_window - self.base
        if needed > self.totals.shape[0]:
            grow = needed - self.totals.shape[0]
            self.totals = np.concatenate([self.totals, np.zeros((grow, self.totals.shape[1]))])
            self.counts = np.concatenate([self.counts, np.zeros((grow, 1))])
        self.totals[offset - self.base : needed] += probabilities
        self.counts[offset - self.base : needed] += 1
        self.clip_sum += clip
        self.windows += 1
        # Steps before this window's start are covered by no later window (only earlier ones, which all lie inside
        # the audio): they are final.
        self._finalise(offset)

    def add_tag(self, clip: np.ndarray) -> None:
        self.tag_scores = clip

    def _finalise(self, until: int, last: bool = False, duration: float = 0.0) -> None:
        count = until - self.base
        if count <= 0 and not last:
            return
        scores = (self.totals[:count] / self.counts[:count]).astype(np.float32)
        self.totals, self.counts = self.totals[count:], self.counts[count:]
        self.base = until
        settings = self.engine.settings
        if settings.class_map is not None:
            scores = map_scores(scores, settings.class_map)
        filtered = self.median.push(scores)
        if last:
            rest = self.median.finish()
            filtered = np.concatenate([filtered, rest]) if rest.size else filtered
        self.events.push(filtered)
        self._write(filtered, last, duration)

    def _write(self, filtered: np.ndarray, last: bool, duration: float) -> None:
        engine = self.engine
        if self.keep_scores:
            self.kept.append(filtered)
        if self.scores_dir is None or (filtered.shape[0] == 0 and not last):
            return
        boundaries = np.arange(self.written, self.written + filtered.shape[0] + 1) * self.step
        if last:
            boundaries[-1] = duration
        if self.score_file is None:
            # sed_scores_eval's key: the name without its extension (`sed.io.audio_id`).
            path = self.scores_dir / f"{audio_id(self.name)}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.score_file = open(path, "w", newline="")  # noqa: SIM115 - written chunk by chunk, closed in finish
        scores_dataframe(filtered, boundaries, engine.settings.labels).to_csv(
            self.score_file, sep="\t", index=False, header=self.written == 0
        )
        self.written += filtered.shape[0]
        if last:
            self.score_file.close()

    def finish(self, num_samples: int, name: str, file: str, native_rate: int | None) -> FileResult:
        engine, plan = self.engine, self.engine.plan
        duration = num_samples / plan.sampling_rate
        total = plan.total_steps(num_samples, self.windows, self.step)
        self._finalise(total, last=True, duration=duration)
        events = self.events.finish(duration)
        tags = []
        if engine.top_k:
            clip = self.tag_scores if self.tag_scores is not None else self.clip_sum / self.windows
            if engine.settings.class_map is not None:
                clip = map_scores(clip, engine.settings.class_map)
            order = np.argsort(-clip, kind="stable")[: engine.top_k]
            tags = [(engine.settings.labels[i], float(clip[i])) for i in order]
        scores = None
        if self.keep_scores:
            scores = FrameScores(np.concatenate(self.kept), self.step, duration, list(engine.settings.labels))
        prediction = FilePrediction(path=file, duration=duration, sampling_rate=native_rate, tags=tags,
                                    events=events)
        return FileResult(self.index, name, file, prediction, scores)

    def close(self, remove: bool = False) -> None:
        """Close a score file left open (the run stopped); with `remove`, delete it (the input failed)."""
        if self.score_file is not None and not self.score_file.closed:
            self.score_file.close()
        if remove and self.score_file is not None:
            Path(self.score_file.name).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------------ engine


class InferenceEngine:
    """Runs an `HTSATForSoundEventDetection` over many inputs of any length (see the module docstring).

    Args:
        model: the detection model in eval mode, on its device and in its dtype.
        feature_extractor: its extractor.
        settings: post-processing and windowing (`sed.postprocessing.DetectionSettings`: labels, thresholds, class map,
            median filter, min duration/gap, window, hop, batch size, short audio).
        top_k: tags per file (0: none, and no extra tagging pass for short files).
        num_workers: DataLoader workers decoding the audio (0: in the main process).

    Raises:
        InputError: a model in training mode; a `num_workers` that is not a whole number >= 0; a feature extractor
            that does not fit the model's config (`check_matches_config`: another front end, or clips longer than the
            model reads, which would otherwise fail in the model on the first batch); a window or hop out of range.
    """

    def __init__(self, model: HTSATForSoundEventDetection, feature_extractor: HTSATFeatureExtractor,
                 settings: DetectionSettings, top_k: int = 5, num_workers: int = 0):
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise InputError(f"num_workers must be a whole number >= 0, got {num_workers!r}")
        check_eval_mode(model)
        feature_extractor.check_matches_config(model.config)
        self.model, self.feature_extractor, self.settings = model, feature_extractor, settings
        self.top_k, self.num_workers = top_k, num_workers
        self.num_model_classes = model.config.num_labels
        self.single_label = model.config.problem_type == "single_label_classification"
        self.plan = WindowPlan.for_model(model.config, feature_extractor, settings.window_seconds,
                                         settings.hop_seconds, settings.short_audio, tag_clips=top_k > 0)

    def fingerprint(self) -> dict:
        """What decides this engine's results, as JSON values: the model (its config and a digest of its weights,
        so two checkpoints of one architecture differ), its dtype, the post-processing and windowing settings (the
        batch size too: it changes the float rounding of scores) and `top_k`. A resumed run must match it, or its
        output would mix the results of two set-ups."""
        config = {key: value for key, value in self.model.config.to_dict().items()
                  # Not where it was loaded from nor by which version; the dtype is its own entry.
                  if not key.startswith("_") and key not in ("transformers_version", "torch_dtype", "dtype")}
        weights = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            weights.update(name.encode())
            weights.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        settings = self.settings.describe()
        class_map = self.settings.class_map
        settings["class_map"] = None if class_map is None else class_map.classes
        return {
            "model": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest(),
            "weights": weights.hexdigest(),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "settings": json.loads(json.dumps(settings, sort_keys=True, default=str)),
            "top_k": self.top_k,
        }

    def run(self, items: Iterable[AudioItem], shard: int = 0, num_shards: int = 1,
            skip: Iterable[str] = (), scores_dir: str | Path | None = None,
            keep_scores: bool = False) -> Iterator[FileResult]:
        """Results of the inputs (this process's share: `index % num_shards == shard`), as each file completes
        (input order with one worker; interleaved across workers). Unreadable inputs give a result with `error`.

        Args:
            items: [`AudioItem`]s, a sequence or an iterable (each worker iterates it).
            skip: files to leave out (done in an earlier run), as outputs name them (`FilePrediction.path`).
            scores_dir: write each file's filtered step scores to `<scores_dir>/<audio id>.tsv` (sed_scores_eval's
                format, byte for byte `sed.io.write_score_tsv`'s) as they are computed; an input that fails part
                way has its file removed.
            keep_scores: keep each file's filtered `FrameScores` in its result (memory grows with the duration).
        """
        dataset = WindowDataset(items, self.plan, self.feature_extractor, self.settings.batch_size, shard,
                                num_shards, frozenset(skip))
        scores_dir = None if scores_dir is None else Path(scores_dir)
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_identity,
                            persistent_workers=False)
        files: dict[int, _FileAssembler] = {}
        # The weights do not change during a run: the CPU fast path reorders them for oneDNN once (frozen_weights).
        with frozen_weights(self.model):
            try:
                for batch in loader:
                    probabilities = clip = None
                    if batch["features"] is not None:
                        probabilities, clip = self._forward(batch["features"])
                    for record in batch["records"]:
                        kind, index = record[0], record[1]
                        if kind == "error":
                            dropped = files.pop(index, None)
                            if dropped is not None:
                                dropped.close(remove=True)
                            yield FileResult(index, record[2], record[3], error=record[4])
                            continue
                        if kind == "start":
                            files[index] = _FileAssembler(self, index, record[2], scores_dir, keep_scores)
                            continue
                        assembler = files[index]
                        if kind == "window":
                            _, _, row, number, length = record
                            assembler.add_window(number, length, probabilities[row], clip[row])
                        elif kind == "tag":
                            assembler.add_tag(clip[record[2]])
                        else:
                            _, _, num_samples, name, file, rate = record
                            yield files.pop(index).finish(num_samples, name, file, rate)
            finally:
                for assembler in files.values():
                    assembler.close()

    def detections(self, items: Sequence[AudioItem], scores_dir: Path, keep_scores: bool) -> Iterator[tuple]:
        """A `sed.detection.Detector`: `(index, duration, events, filtered scores or None, error or None)` per
        input as it completes, its score file written into `scores_dir` (what `run_sed.py` runs)."""
        for result in self.run(items, scores_dir=scores_dir, keep_scores=keep_scores):
            if result.error is not None:
                yield result.index, 0.0, [], None, result.error
            else:
                prediction = result.prediction
                yield result.index, prediction.duration, prediction.events, result.scores, None

    @torch.no_grad()
    def _forward(self, features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """`((batch, steps, classes) frame probabilities, (batch, classes) clip scores)` as float64: sigmoid of the
        clip logits, or softmax for a single-label model (`predict.predict_waveform`'s tag scores)."""
        model = self.model
        rows = features.shape[0]
        if rows < self.settings.batch_size:
            # Every forward runs on a full batch (zero windows appended, their outputs dropped): the kernels'
            # blocking, and so the float rounding, depends on the batch's shape, and a short batch (the end of a
            # worker's share, a resume's first files, a change of window length) would round its windows'
            # scores differently from the same windows in a full batch.
            padding = features.new_zeros((self.settings.batch_size - rows, *features.shape[1:]))
            features = torch.cat([features, padding])
        # float32 features whatever the model's dtype: it casts them to its feature normalisation's, which stays
        # float32 in a bf16 model; a bf16 log-mel would be rounded first (frames 5.2e-3 from fp32 instead of 4.3e-3).
        output = model(features.to(model.device))
        frames = output.logits[:rows].float().sigmoid().cpu().numpy()
        logits = output.clip_logits[:rows].float()
        clip = logits.softmax(dim=-1) if self.single_label else logits.sigmoid()
        return frames.astype(np.float64), clip.cpu().numpy().astype(np.float64)


# ------------------------------------------------------------------------------------------------------ outputs


def in_input_order(results: Iterable[FileResult]) -> Iterator[FileResult]:
    """The results of one process's full run (indices 0, 1, 2, ...) in input order, each as soon as all before it
    are out: with several workers, files complete out of order."""
    waiting: dict[int, FileResult] = {}
    following = 0
    for result in results:
        waiting[result.index] = result
        while following in waiting:
            yield waiting.pop(following)
            following += 1
    yield from (waiting[index] for index in sorted(waiting))


def default_device() -> str:
    """This process's device under `accelerate launch` (its GPU, or the CPU), else `"cpu"`."""
    state = _distributed_state()
    return "cpu" if state is None else str(state.device)


class _Journal:
    """The per-process journal of finished files (see the module docstring)."""

    def __init__(self, output: Path, rank: int):
        self.directory = output.with_name(output.name + PARTS_SUFFIX)
        self.path = self.directory / f"shard-{rank:05d}.jsonl"

    @staticmethod
    def repair(directory: Path) -> None:
        """Cut a torn last line (a process killed while writing) off every shard."""
        for path in sorted(directory.glob("shard-*.jsonl")):
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(path, "r+b") as handle:
                    handle.truncate(data.rfind(b"\n") + 1)

    @staticmethod
    def read(directory: Path) -> dict[str, dict]:
        """`{file: entry}` of the journal's complete lines; a file's success wins over an earlier failure."""
        entries: dict[str, dict] = {}
        for path in sorted(directory.glob("shard-*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a torn line of a process that is still being repaired
                    continue
                key = entry["file"]
                if key not in entries or "error" in entries[key]:
                    entries[key] = entry
        return entries

    def append(self, entry: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, allow_nan=False) + "\n")
            handle.flush()


def output_format(output: str | Path) -> str:
    """`"jsonl"` or `"tsv"` from the output's extension.

    Raises:
        InputError: another extension.
    """
    suffix = Path(output).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise InputError(f"{output}: the output must be a .jsonl or .tsv file")
    return OUTPUT_FORMATS[suffix]


def write_predictions(
    engine: InferenceEngine,
    items: Sequence[AudioItem] | Iterable[AudioItem],
    output: str | Path,
    resume: bool = False,
    progress: bool | None = None,
    on_error: Callable[[FileResult], None] | None = None,
) -> tuple[int, int]:
    """Run `engine` over `items` into `output` (`.jsonl` or `.tsv`), journalled and resumable (see the module
    docstring). Under `accelerate launch`, call it in every process: each runs its share and the main process
    writes `output`.

    Args:
        progress: a tqdm bar on stderr (files/s and hours of audio per second); None: when stderr is a terminal.
        on_error: called with each unreadable input's result (the CLI prints its line); otherwise logged.

    Returns:
        `(files done, files that could not be read)` by this run in this process.

    Raises:
        InputError: an output of another format, an existing output or journal without `resume`, an output folder
            that cannot be written. Under `accelerate launch`, an error in one process is raised in every process
            (the same line), none is left waiting for another.
    """
    output = Path(output)
    fmt = output_format(output)
    state = _distributed_state()
    rank, processes = (state.process_index, state.num_processes) if state is not None else (0, 1)
    journal = _Journal(output, rank)
    fingerprint = engine.fingerprint()
    names = None
    if isinstance(items, Sequence):
        # The inputs in order: a resume with other inputs would merge two sets under clashing indices.
        names = [_file_name(item) for item in items]
        fingerprint["inputs"] = hashlib.sha256("\n".join(names).encode()).hexdigest()
    # Rank 0 decides whether the output may be used; every process gets its refusal (see `distributed.together`).
    with together():
        if rank == 0:
            _prepare_output(output, journal.directory, resume, fingerprint, names)
    skip = frozenset(key for key, entry in _Journal.read(journal.directory).items() if "error" not in entry)
    total = None
    if isinstance(items, Sequence):
        total = sum(1 for index, item in enumerate(items)
                    if index % processes == rank and _file_name(item) not in skip)
    completed = failed = 0
    bar = tqdm(total=total, unit="file", desc="predicting", file=sys.stderr, dynamic_ncols=True,
               disable=not (sys.stderr.isatty() if progress is None else progress) or rank != 0)
    started, seconds = time.monotonic(), 0.0
    # An error in one process (an `on_error` that raises, as `predict_files` without `skip_errors` does, a journal
    # that cannot be written) stops every process, with its line, once the others have done their share.
    with together():
        try:
            for result in engine.run(items, rank, processes, skip):
                if result.error is not None:
                    failed += 1
                    journal.append({"index": result.index, "file": result.file, "error": result.error})
                    (on_error or _log_error)(result)
                else:
                    journal.append({"index": result.index, **result.prediction.to_dict()})
                    seconds += result.prediction.duration
                    completed += 1
                bar.update(1)
                elapsed = max(time.monotonic() - started, 1e-9)
                bar.set_postfix_str(f"{seconds / 3600 / elapsed:.3g} h audio/s", refresh=False)
        finally:
            bar.close()
    # Every process returns once the output is written (a caller may read it next), or fails with rank 0's error.
    with together():
        if rank == 0:
            _finish(output, journal.directory, fmt, fingerprint)
    return completed, failed


def _log_error(result: FileResult) -> None:
    logger.warning("skipped %s: %s", result.name, result.error)


FINGERPRINT = "fingerprint.json"
FINGERPRINT_FIELDS = {"model": "model config", "weights": "model weights", "dtype": "dtype",
                      "settings": "options", "top_k": "top-k", "inputs": "inputs"}


def _record_path(output: Path) -> Path:
    """Where a finished JSONL output keeps its run's fingerprint (hidden, next to it), so that `--resume` on it can
    tell whether it is the same run."""
    return output.with_name(f".{output.name}.run.json")


def _check_fingerprint(recorded: dict, fingerprint: dict, where: Path) -> None:
    """Refuse a resume whose model, options or inputs differ from those of the run it continues."""
    differ = [label for key, label in FINGERPRINT_FIELDS.items() if recorded.get(key) != fingerprint.get(key)]
    if "dtype" in differ and "model weights" in differ:
        differ.remove("model weights")  # weights cast to another dtype have other bytes: the dtype says it
    if "options" in differ:
        old, new = recorded.get("settings") or {}, fingerprint.get("settings") or {}
        changed = ", ".join(sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)))
        differ[differ.index("options")] = f"options ({changed})"
    if differ:
        raise InputError(
            f"{where}: --resume with a different {', '.join(differ)} than the run it continues (results of two "
            "runs are never mixed); use the same ones, or remove it to start again"
        )


def _prepare_output(output: Path, parts: Path, resume: bool, fingerprint: dict | None = None,
                    names: list[str] | None = None) -> None:
    if not resume and (output.exists() or parts.exists()):
        existing = parts if parts.exists() else output
        raise InputError(
            f"{existing} exists: pass --resume to continue that run, or remove it to start again (results of two "
            "runs are never mixed)"
        )
    if output.is_dir():
        raise InputError(f"{output}: is a folder; the output must be a .jsonl or .tsv file")
    if resume and output.exists() and not parts.exists():
        # A finished run: its output holds every result; continue from it (as a journal) if it is JSONL.
        if output_format(output) != "jsonl":
            raise InputError(f"{output} is a finished run's output; remove it to run again")
        record = _record_path(output)
        if fingerprint is not None:
            if not record.exists():
                raise InputError(f"{output}: no record of the model and options of the run that wrote it, so it "
                                 "cannot be resumed; remove it to run again")
            _check_fingerprint(json.loads(record.read_text(encoding="utf-8")), fingerprint, output)
        lines = output.read_text(encoding="utf-8").splitlines()
        # Journal lines keep their input's index (the inputs are the same, checked above), so files that failed
        # before and are read now fall into their place.
        position = {name: index for index, name in enumerate(names)} if names is not None else {}
        parts.mkdir(parents=True)
        if fingerprint is not None:
            (parts / FINGERPRINT).write_text(json.dumps(fingerprint), encoding="utf-8")
        with open(parts / "shard-finished.jsonl", "w", encoding="utf-8") as handle:
            for line_number, line in enumerate(lines):
                entry = json.loads(line)
                handle.write(json.dumps({"index": position.get(entry["file"], line_number), **entry}) + "\n")
        return
    try:
        parts.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot write next to {output}: {error.strerror or error}") from None
    if fingerprint is not None:
        recorded = parts / FINGERPRINT
        if recorded.exists():
            _check_fingerprint(json.loads(recorded.read_text(encoding="utf-8")), fingerprint, parts)
        else:
            if any(parts.glob("shard-*.jsonl")):
                raise InputError(f"{parts}: no record of the model and options of the run that wrote it, so it "
                                 "cannot be resumed; remove it to start again")
            recorded.write_text(json.dumps(fingerprint), encoding="utf-8")
    _Journal.repair(parts)


def _finish(output: Path, parts: Path, fmt: str, fingerprint: dict | None = None) -> None:
    """Render the journal in input order into `output` (atomically) and remove it; a JSONL output keeps the run's
    fingerprint beside it for a later `--resume`."""
    entries = sorted((e for e in _Journal.read(parts).values() if "error" not in e),
                     key=lambda e: (e["index"], e["file"]))
    temporary = output.with_name(f".{output.name}.tmp")
    with open(temporary, "w", encoding="utf-8", newline="") as handle:
        if fmt == "jsonl":
            for entry in entries:
                entry = {key: value for key, value in entry.items() if key != "index"}
                handle.write(json.dumps(entry, allow_nan=False) + "\n")
        else:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(TSV_COLUMNS)
            for entry in entries:
                writer.writerows(tsv_rows(_prediction_from_dict(entry)))
    if fmt == "jsonl" and fingerprint is not None:
        _record_path(output).write_text(json.dumps(fingerprint), encoding="utf-8")
    os.replace(temporary, output)
    shutil.rmtree(parts, ignore_errors=True)


def _prediction_from_dict(entry: dict) -> FilePrediction:
    return FilePrediction(
        path=entry["file"],
        duration=entry["duration"],
        sampling_rate=entry.get("sampling_rate"),
        tags=[(tag["label"], tag["score"]) for tag in entry["tags"]],
        events=[Event(e["onset"], e["offset"], e["label"], e["score"]) for e in entry["events"]],
    )


# ---------------------------------------------------------------------------------------------------- Python API


def predict_files(
    inputs,
    model: str | os.PathLike | HTSATForSoundEventDetection,
    feature_extractor: HTSATFeatureExtractor | None = None,
    *,
    top_k: int = 5,
    threshold=None,
    class_map=None,
    median_filter_seconds: float | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    output: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = False,
    skip_errors: bool = False,
) -> list[FilePrediction]:
    """Tags and events of many inputs, batched across files, with memory flat in each file's duration.

    Args:
        inputs: one input or a list of them: paths of files, folders (searched recursively) and list files; any
            in-memory form `audio.load_waveform` takes (arrays at the model's rate, `{"array", "sampling_rate"}`
            dicts, bytes, ...); [`AudioItem`]s; or a `datasets` `Dataset`/`IterableDataset` (its `"audio"` column).
        model: a loaded `HTSATForSoundEventDetection`, or a saved model folder / Hub id (loaded on `device` in
            `dtype`).
        feature_extractor: its extractor (default: loaded with the model, or built from the model's config).
        top_k, threshold, class_map, median_filter_seconds, batch_size: as `predict.predict_waveform`.
        num_workers: DataLoader workers decoding audio (0: the main process).
        device, dtype: where and in which precision a model given by name runs (`"float32"`, `"bfloat16"`,
            `"float16"` or a torch dtype).
        output: also write the results there (`.jsonl` or `.tsv`, see [`write_predictions`]); with `resume`,
            continue an interrupted run into it.
        progress: a progress bar on stderr (None: when stderr is a terminal).
        skip_errors: leave out inputs that cannot be read (logged) instead of raising.

    Returns:
        [`FilePrediction`]s in input order (read back from `output` when one is given, so resumed files are
        included).

    Raises:
        InputError: bad options (before any audio is read), or an input that cannot be read (naming it) unless
            `skip_errors`.
    """
    if not isinstance(model, torch.nn.Module):
        model, loaded_extractor = load_predictor(model, device=device or "cpu", dtype=dtype)
        feature_extractor = feature_extractor or loaded_extractor
    elif feature_extractor is None:
        feature_extractor = HTSATFeatureExtractor.from_config(model.config)
    class_map, thresholds = check_options(model, top_k, threshold, class_map, median_filter_seconds, batch_size)
    labels = class_map.labels if class_map is not None else [model.config.id2label[i]
                                                             for i in range(model.config.num_labels)]
    settings = DetectionSettings(labels=labels, thresholds=thresholds, class_map=class_map,
                                 median_filter_seconds=median_filter_seconds, batch_size=batch_size)
    engine = InferenceEngine(model, feature_extractor, settings, top_k=top_k, num_workers=num_workers)
    items = as_items(inputs)
    errors: list[FileResult] = []

    def failed(result: FileResult) -> None:
        if not skip_errors:
            raise InputError(result.error)
        logger.warning("skipped %s: %s", result.name, result.error)

    if output is not None:
        write_predictions(engine, items, output, resume=resume, progress=progress, on_error=failed)
        if output_format(output) == "jsonl" and Path(output).exists():
            return [_prediction_from_dict(json.loads(line))
                    for line in Path(output).read_text(encoding="utf-8").splitlines()]
        return []
    results: dict[int, FilePrediction] = {}
    for result in engine.run(items):
        if result.error is not None:
            failed(result)
            errors.append(result)
        else:
            results[result.index] = result.prediction
    return [results[index] for index in sorted(results)]
