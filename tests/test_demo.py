"""The demo's data and scoring (`examples/demo.py`, `htsat_hf.synthetic`):

- a scene's true events match its audio: the sound's energy inside each event, background alone between events,
  no hard edges; with `every_class` every class occurs;
- partial training clips hold their sound over part of the clip and background elsewhere; the default clips are
  unchanged by the option;
- the demo's per-event listing applies the collar rule of the event F1;
- clips cut from longer sounds (`max_sound_seconds`) are filled by the sound; strong-label training scenes
  (`make_detection_folder`) can hold every class and the demo's event lengths, and keep their default draws;
- the whole demo (opt-in, about two minutes on 2 idle cores: `HTSAT_SLOW_TESTS=1`) finds every event of its scene
  with its label and invents none.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from htsat_hf.synthetic import (
    SOUND_CLASSES,
    add_event,
    background,
    make_classification_folder,
    make_detection_folder,
    make_scene,
    synth_sound,
)

REPO = Path(__file__).resolve().parents[1]
RATE = 8000  # a low rate keeps the checks fast; the classes' frequencies (at most a few kHz) stay below Nyquist
LEVEL = 0.005  # the scenes' background level


def _demo():
    spec = importlib.util.spec_from_file_location("demo", REPO / "examples" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize("seed", range(5))
def test_scene_events_match_the_audio(seed):
    wave, events = make_scene(30.0, RATE, np.random.default_rng(seed), SOUND_CLASSES, num_events=6, min_event=1.0,
                              max_event=4.0, every_class=True)
    assert wave.dtype == np.float32 and wave.shape == (30 * RATE,)
    assert sorted({label for *_, label in events}) == sorted(SOUND_CLASSES)
    assert [e[0] for e in events] == sorted(e[0] for e in events)
    active = np.zeros(wave.size, bool)
    for onset, offset, label in events:
        assert 0 <= onset < offset <= 30.0 and 1.0 - 1e-3 <= offset - onset <= 4.0 + 1e-3, (onset, offset)
        start, end = int(round(onset * RATE)), int(round(offset * RATE))
        assert not active[start:end].any(), "events overlap"
        active[start:end] = True
        # The sound is there, from its onset to its offset: every quarter of the event is well above the background
        # (the sparsest class, clicks at 8 Hz and the lowest level, has an RMS of about 6 times the background's).
        quarters = np.array_split(wave[start:end], 4)
        assert min(_rms(q) for q in quarters) > 4 * LEVEL, (label, [_rms(q) for q in quarters])
        # Faded in and out: no step at the edges (a hard cut would add a click to every event).
        assert abs(wave[start]) < 0.05 and abs(wave[end - 1]) < 0.05
    # Between events: the background alone.
    assert _rms(wave[~active]) == pytest.approx(LEVEL, rel=0.1)
    assert np.abs(wave[~active]).max() < 10 * LEVEL


def test_scene_without_every_class_keeps_its_draws():
    """`every_class` is an option: the default scenes (make_detection_folder's, the tests') draw the events they drew
    before it (and before the fades)."""
    _, events = make_scene(10.0, RATE, np.random.default_rng(3), SOUND_CLASSES[:3], 3)
    assert events == [(0.854, 1.783, "tone"), (6.342, 7.48, "tone"), (8.41, 9.727, "chirp")]


def test_add_event_cuts_at_the_end_and_reports_what_it_placed():
    wave = np.zeros(RATE, np.float32)
    onset, offset = add_event(wave, "tone", 0.75, 0.5, RATE, np.random.default_rng(0))
    assert (onset, offset) == (0.75, 1.0)
    assert not wave[: int(0.75 * RATE)].any() and _rms(wave[int(0.8 * RATE):]) > 0.1


def test_partial_clips_hold_sound_and_background(tmp_path):
    import soundfile

    root = make_classification_folder(tmp_path / "clips", ("tone", "hum"), 4, 2.0, RATE, seed=0, partial_clips=0.5)
    for kind in ("tone", "hum"):
        for index in range(4):
            clip, _ = soundfile.read(root / f"{kind}_{index}.wav", dtype="float32")
            # 50 ms frames: sound (far above the background) or background alone.
            frames = np.array([_rms(f) for f in np.array_split(clip, 40)])
            loud = frames > 8 * LEVEL
            if index < 2:  # the first half of each class: the sound fills the clip
                assert loud.all(), (kind, index)
            else:  # then: the sound over one stretch of at least 0.5 s, background elsewhere
                assert 10 <= loud.sum() < 40 and (~loud).sum() >= 1, (kind, index, frames.round(3))
                runs = np.flatnonzero(np.diff(loud.astype(int)))
                assert len(runs) <= 2, "one stretch of sound"
                quiet = frames < 1.5 * LEVEL  # background alone, except the (at most two) frames at the edges
                assert quiet.sum() >= 1 and (~loud & ~quiet).sum() <= 2, (kind, index, frames.round(3))


def test_partial_clips_default_leaves_the_clips_unchanged(tmp_path):
    """Without `partial_clips` each clip is a whole sound plus background, drawn in the order they were before it."""
    import soundfile

    root = make_classification_folder(tmp_path / "a", ("tone", "hum"), 2, 0.5, RATE, seed=4, background_clips=1)
    rng = np.random.default_rng(4)
    for kind in ("tone", "hum"):
        for index in range(2):
            expected = synth_sound(kind, 0.5, RATE, rng) + background(0.5, RATE, rng)
            clip, _ = soundfile.read(root / f"{kind}_{index}.wav", dtype="float32")
            np.testing.assert_allclose(clip, expected, atol=1e-4)  # 16-bit PCM files


def test_clips_cut_from_longer_sounds_are_filled(tmp_path):
    """With `max_sound_seconds` every clip is a stretch of a longer sound: loud throughout, the clip's length; some
    chirp clips hold the high end of a long sweep, above the highest frequency a 2 s chirp reaches (5.4 kHz)."""
    import soundfile

    root = make_classification_folder(tmp_path / "clips", ("chirp", "clicks"), 6, 2.0, 32000, seed=1,
                                      max_sound_seconds=4.0)
    peaks = []
    for kind in ("chirp", "clicks"):
        for index in range(6):
            clip, _ = soundfile.read(root / f"{kind}_{index}.wav", dtype="float32")
            assert clip.shape == (64000,)
            assert min(_rms(f) for f in np.array_split(clip, 5)) > 3 * LEVEL, (kind, index)  # no background-only part
            if kind == "chirp":
                end = clip[-2048:] * np.hanning(2048)
                peaks.append(np.argmax(np.abs(np.fft.rfft(end))) * 32000 / 2048)
    assert max(peaks) > 5400, peaks


def test_detection_folder_with_every_class(tmp_path):
    root = make_detection_folder(tmp_path / "strong", num_files=3, seconds=20.0, sampling_rate=RATE,
                                 classes=SOUND_CLASSES, events_per_file=5, seed=0, min_event=1.0, max_event=4.0,
                                 every_class=True)
    rows = [line.split("\t") for line in (root / "annotations.tsv").read_text().splitlines()[1:]]
    for name in {row[0] for row in rows}:
        events = [row for row in rows if row[0] == name]
        assert sorted(row[3] for row in events) == sorted(SOUND_CLASSES)
        assert all(1.0 - 1e-3 <= float(row[2]) - float(row[1]) <= 4.0 + 1e-3 for row in events)


def test_detection_folder_default_keeps_its_draws(tmp_path):
    """The new options default to make_scene's defaults: the default folders (the tests') are unchanged."""
    root = make_detection_folder(tmp_path / "d", num_files=2, seconds=10.0, sampling_rate=RATE, seed=3)
    rng = np.random.default_rng(3)
    expected = [make_scene(10.0, RATE, rng, SOUND_CLASSES[:3], 3)[1] for _ in range(2)]
    rows = (root / "annotations.tsv").read_text().splitlines()[1:]
    got = [[tuple(row.split("\t")[1:]) for row in rows if row.startswith(f"scene_{i:03d}")] for i in range(2)]
    assert got == [[(f"{a:.3f}", f"{b:.3f}", c) for a, b, c in events] for events in expected]


def test_demo_listing_applies_the_collar_rule():
    demo = _demo()
    truth = [(1.0, 3.0, "tone"), (5.0, 10.0, "hum"), (12.0, 13.0, "clicks")]
    detected = [
        (1.15, 2.85, "tone"),  # onset and offset within 200 ms: found
        (5.1, 9.1, "hum"),  # offset 0.9 s early, within 20 % of 5 s: found
        (12.0, 13.0, "bursts"),  # right times, wrong label: a false alarm, and the clicks are missed
        (20.0, 21.0, "chirp"),  # nothing there
    ]
    lines, hits, misses, false_alarms = demo.event_listing(truth, detected)
    assert (hits, misses, false_alarms) == (2, 1, 2)
    assert "missed (overlaps bursts 12.00-13.00)" in lines[2]
    assert not demo.matches((1.0, 3.0, "tone"), (1.25, 3.0, "tone"))  # onset 250 ms late
    assert demo.matches((1.0, 3.0, "tone"), (1.0, 3.35, "tone"))  # offset 350 ms late: within 20 % of 2 s
    assert not demo.matches((1.0, 3.0, "tone"), (1.0, 3.5, "tone"))  # offset 500 ms late: beyond 400 ms


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("HTSAT_SLOW_TESTS"), reason="the whole demo takes a minute: HTSAT_SLOW_TESTS=1")
def test_demo_detects_its_scene(tmp_path):
    result = subprocess.run([sys.executable, "examples/demo.py", "--output-dir", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "event F1" in result.stdout
    metrics = json.loads((tmp_path / "detection" / "metrics.json").read_text())["collar_event_f1"]
    assert metrics["micro_f1"] == 1.0, result.stdout[-3000:]
