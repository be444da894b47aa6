"""Sliding-window detection over audio of any length (`htsat_hf.sed.windows`): the step grid, event times after
windowing and stitching, overlap averaging, the shortest audio, and memory that does not grow with the audio's length.

A randomly initialised HTS-AT cannot detect anything, so the time-placement tests use `LoudnessModel`: an
`HTSATForSoundEventDetection` whose frame logits come from the loudness of its input features, stretched to the
model's frames exactly as the real model stretches its spectrogram, so that the real feature extraction, windowing,
stitching and time mapping are exercised.
"""

import os
import resource
import threading
import time
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from htsat_hf import HTSATFeatureExtractor, HTSATForSoundEventDetection, sliding_window_scores
from htsat_hf.errors import InputError
from htsat_hf.modeling_htsat import HTSATSoundEventDetectionOutput
from htsat_hf.sed.postprocessing import frame_scores_events
from htsat_hf.sed.windows import grid_step_seconds, plan_windows

RATE = 32000
LOUDNESS_THRESHOLD_DB = 0.0  # a 0.3-amplitude tone peaks near +20 dB per frame, noise at 0.001 near -44 dB


class LoudnessModel(HTSATForSoundEventDetection):
    """Frame logit of class `c` = (mean over the step of the loudest mel bin of band `c` per frame - 0 dB) / 4, the
    mel bins split into `num_labels` equal bands (one class: all bins), computed on the features stretched to
    `config.max_frames` with the model's bicubic interpolation (align_corners=True) and averaged over each step's
    `max_frames / num_time_steps` frames."""

    def forward(self, input_features, labels=None, **kwargs):
        config = self.config
        batch, _, bins = input_features.shape
        stretched = F.interpolate(
            input_features[:, None], size=(config.max_frames, bins), mode="bicubic", align_corners=True
        )[:, 0]
        bands = stretched.view(batch, config.max_frames, config.num_labels, bins // config.num_labels).amax(-1)
        loudness = bands.view(batch, config.num_time_steps, -1, config.num_labels).mean(2)
        logits = (loudness - LOUDNESS_THRESHOLD_DB) / 4.0
        return HTSATSoundEventDetectionOutput(logits=logits, clip_logits=logits.mean(1))


def loudness_model(labels=("sound",)):
    config = tiny_config(num_labels=len(labels), id2label=dict(enumerate(labels)),
                         label2id={label: i for i, label in enumerate(labels)})
    return LoudnessModel(config).eval(), HTSATFeatureExtractor.from_config(config)


def scene(seconds, events, seed=0, level=0.001, frequency=660.0):
    """Quiet noise with 0.3-amplitude tones at the given (onset, offset) seconds (and frequency in Hz, if given as a
    third element)."""
    rng = np.random.default_rng(seed)
    wave = (rng.standard_normal(int(round(seconds * RATE))) * level).astype(np.float32)
    for event in events:
        onset, offset = event[:2]
        start, stop = int(round(onset * RATE)), int(round(offset * RATE))
        t = np.arange(stop - start) / RATE
        wave[start:stop] += 0.3 * np.sin(2 * np.pi * (event[2] if len(event) > 2 else frequency) * t).astype(np.float32)
    return wave


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = HTSATForSoundEventDetection(tiny_config()).eval()
    return model, HTSATFeatureExtractor.from_config(model.config)


# --------------------------------------------------------------------------------------------------------- the grid


@pytest.mark.parametrize(
    "samples, hop, steps, rate, seconds",
    [
        (320000, 320, 32, 32000, 0.3125),  # a 10 s window: the model's grid
        (128000, 320, 32, 32000, 0.125),  # a 4 s clip, stretched
        (319488, 320, 32, 32000, 998 * 320 / 32 / 32000),  # 9.984 s (a DESED clip): 998 whole hops
        (160000, 160, 32, 16000, 0.3125),  # another front end, the same 10 s
    ],
)
def test_grid_step_is_the_span_of_the_stft_hops_over_the_steps(samples, hop, steps, rate, seconds):
    assert grid_step_seconds(samples, hop, steps, rate) == pytest.approx(seconds, rel=1e-12)


def test_frame_scores_use_the_grid_step():
    model, extractor = loudness_model()
    for seconds in (4.0, 9.984, 25.0):
        scores = sliding_window_scores(model, extractor, scene(seconds, []), RATE)
        window = min(int(round(seconds * RATE)), 10 * RATE)
        assert scores.step_seconds == grid_step_seconds(window, extractor.hop_length, 32, RATE)


# --------------------------------------------------------------------------------------------------- time placement


@pytest.mark.parametrize(
    "seconds, true_events, hop",
    [
        (4.0, [(1.3, 2.6)], None),  # one window at its own length: 32 steps of 125 ms
        (10.0, [(3.1, 6.45)], None),  # exactly one window: steps of 312.5 ms
        (37.0, [(8.2, 12.9), (21.7, 29.3), (35.2, 36.6)], None),  # 7 overlapping windows (hop 5 s), last one padded
        (37.0, [(8.2, 12.9), (21.7, 29.3), (35.2, 36.6)], 10.0),  # 4 windows side by side
        (37.0, [(8.2, 12.9), (21.7, 29.3), (35.2, 36.6)], 1.3),  # hop rounded to 4 steps (1.25 s), 8-fold overlap
    ],
)
def test_events_land_at_their_time(seconds, true_events, hop):
    model, extractor = loudness_model()
    scores = sliding_window_scores(model, extractor, scene(seconds, true_events), RATE, hop_seconds=hop)
    step = min(seconds, 10.0) / 32
    assert scores.step_seconds == pytest.approx(step, rel=1e-3)
    assert scores.duration == pytest.approx(seconds)
    assert scores.scores.shape == (int(np.ceil(seconds / step - 1e-6)), 1)
    assert np.all(np.isfinite(scores.scores))
    assert scores.boundaries[-1] == pytest.approx(seconds)
    events = frame_scores_events(scores, 0.5)
    assert [event.label for event in events] == ["sound"] * len(true_events), events
    for event, (onset, offset) in zip(events, true_events, strict=True):
        assert abs(event.onset - onset) <= step + 1e-6, (event, onset)
        assert abs(event.offset - offset) <= step + 1e-6, (event, offset)


def test_overlapping_windows_are_averaged(tiny_model):
    """Every step is the mean of the probabilities that the windows covering it give, each window run alone."""
    model, extractor = tiny_model
    rng = np.random.default_rng(1)
    wave = (rng.standard_normal(int(17.5 * RATE)) * 0.1).astype(np.float32)
    scores = sliding_window_scores(model, extractor, wave, RATE, hop_seconds=2.5, batch_size=3)
    window, hop_steps, total = 10 * RATE, 8, 56  # 2.5 s = 8 steps of 312.5 ms; 17.5 s = 56 steps
    starts = plan_windows(wave.size, window, hop_steps * 10000)
    assert starts == [0, 80000, 160000, 240000]
    totals, counts = np.zeros((total, 5)), np.zeros((total, 1))
    with torch.no_grad():
        for k, start in enumerate(starts):
            piece = np.pad(wave[start : start + window], (0, max(0, start + window - wave.size)))
            features = extractor(piece, sampling_rate=RATE, return_tensors="pt")["input_features"]
            probabilities = model(features).logits.sigmoid()[0].numpy()
            usable = min(32, total - k * hop_steps)
            totals[k * hop_steps : k * hop_steps + usable] += probabilities[:usable]
            counts[k * hop_steps : k * hop_steps + usable] += 1
    assert counts.min() >= 1 and counts.max() == 4
    np.testing.assert_allclose(scores.scores, totals / counts, atol=1e-5)
    assert scores.scores.shape == (total, 5)
    assert scores.step_seconds == pytest.approx(0.3125)


@pytest.mark.parametrize("samples", [3200, 3250, 128160, 319488])
def test_short_and_odd_lengths_give_finite_scores_up_to_the_end(samples):
    """0.1 s is enough; lengths that are not a multiple of the STFT hop (DESED clips of 9.984 s) used to leave a
    last step that no window covered (NaN scores)."""
    model, extractor = loudness_model()
    scores = sliding_window_scores(model, extractor, scene(samples / RATE, []), RATE)
    assert scores.scores.shape == (32, 1)
    assert np.all(np.isfinite(scores.scores))
    assert scores.boundaries[-1] == pytest.approx(samples / RATE)
    assert np.all(np.diff(scores.boundaries) > 0)


def test_shorter_than_a_tenth_of_a_second_is_refused():
    model, extractor = loudness_model()
    with pytest.raises(InputError, match="too short"):
        sliding_window_scores(model, extractor, np.zeros(3199, np.float32), RATE)
    with pytest.raises(InputError, match="window_seconds must be between 0.1 and 10"):
        sliding_window_scores(model, extractor, np.zeros(RATE, np.float32), RATE, window_seconds=12.0)
    with pytest.raises(InputError, match="hop_seconds must be positive"):
        sliding_window_scores(model, extractor, np.zeros(RATE, np.float32), RATE, hop_seconds=0.0)
    with pytest.raises(ValueError, match="sampling"):
        sliding_window_scores(model, extractor, np.zeros(16000, np.float32), 16000)


# ------------------------------------------------------------------------------------------------------------ memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peaks(function):
    """(tracemalloc peak of numpy/Python allocations, peak RSS growth sampled every 5 ms) while `function` runs."""
    baseline = _rss_bytes()
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    tracemalloc.start()
    sampler.start()
    try:
        result = function()
    finally:
        done.set()
        sampler.join()
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return traced, peak[0] - baseline, result


def test_memory_does_not_grow_with_the_length(tiny_model):
    """2 min and 6 min of audio through the tiny model: the memory used beyond the waveform is that of one batch of
    windows, not of the audio. Holding all windows or features at once, or a float64 copy of the waveform, would
    triple the 6 min peak."""
    model, extractor = tiny_model
    rng = np.random.default_rng(2)
    peaks = {}
    for minutes in (2, 6):
        wave = np.empty(minutes * 60 * RATE, dtype=np.float32)
        for start in range(0, wave.size, 60 * RATE):  # generated in chunks: no float64 copy of the whole
            wave[start : start + 60 * RATE] = rng.standard_normal(60 * RATE, dtype=np.float32) * 0.1
        traced, rss, scores = _peaks(
            lambda: sliding_window_scores(model, extractor, wave, RATE, hop_seconds=10.0, batch_size=4)
        )
        assert scores.scores.shape == (minutes * 60 * 32 // 10, 5)
        peaks[minutes] = (traced, rss, wave.nbytes)
        del wave
    (traced_2, rss_2, bytes_2), (traced_6, rss_6, bytes_6) = peaks[2], peaks[6]
    assert traced_6 < 1.25 * traced_2 + (1 << 20), peaks
    assert traced_6 < 0.2 * bytes_6, peaks  # a batch of 4 windows is 5 MB; the waveform 46 MB
    assert rss_6 < rss_2 + 0.5 * (bytes_6 - bytes_2), peaks


@pytest.mark.skipif(not os.environ.get("HTSAT_SLOW_TESTS"), reason="1 h of audio takes about 2 min: HTSAT_SLOW_TESTS=1")
def test_one_hour_of_audio(tiny_model, capsys):
    """1 h at 32 kHz (115.2M samples, 461 MB as float32) through the tiny model: prints time and peak memory."""
    model, extractor = tiny_model
    seconds = 3600
    wave = np.empty(seconds * RATE, dtype=np.float32)
    rng = np.random.default_rng(3)
    for start in range(0, wave.size, 60 * RATE):
        wave[start : start + 60 * RATE] = rng.standard_normal(60 * RATE, dtype=np.float32) * 0.01
    started = time.perf_counter()
    traced, rss, scores = _peaks(lambda: sliding_window_scores(model, extractor, wave, RATE, batch_size=8))
    elapsed = time.perf_counter() - started
    assert scores.scores.shape == (seconds * 32 // 10, 5)
    assert np.all(np.isfinite(scores.scores))
    with capsys.disabled():
        print(
            f"\n1 h of audio: {elapsed:.0f} s, {len(plan_windows(wave.size, 10 * RATE, 5 * RATE))} windows; waveform "
            f"{wave.nbytes / 2**20:.0f} MiB; peak RSS growth beyond it {rss / 2**20:.0f} MiB; traced numpy peak "
            f"{traced / 2**20:.0f} MiB; process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
        )
    assert rss < 512 * 2**20
