"""`pipeline("sound-event-detection")` (`htsat_hf.sed.pipeline`): every form of audio input gives the scores of the
same samples (paths, bytes, float and integer PCM arrays, tensors, dicts, `datasets` values, torchcodec decoders),
and the thresholds and class maps of the post-processing."""

import numpy as np
import pytest
import soundfile
import torch
from conftest import tiny_config
from test_sed_windows import RATE, loudness_model, scene
from transformers import pipeline

from htsat_hf import HTSATFeatureExtractor, HTSATForSoundEventDetection
from htsat_hf.audio import resample
from htsat_hf.errors import InputError
from htsat_hf.sed.postprocessing import ClassMap

LABELS = ("low", "high")


@pytest.fixture(scope="module")
def random_detector():
    """A tiny random model: its scores depend on every sample, so equal scores mean equal inputs."""
    torch.manual_seed(0)
    model = HTSATForSoundEventDetection(tiny_config()).eval()
    extractor = HTSATFeatureExtractor.from_config(model.config)
    return pipeline("sound-event-detection", model=model, feature_extractor=extractor)


@pytest.fixture(scope="module")
def tone_detector():
    model, extractor = loudness_model(LABELS)
    return pipeline("sound-event-detection", model=model, feature_extractor=extractor)


def frame_scores(detector, audio):
    return detector(audio, return_frame_scores=True)["frame_scores"].scores


@pytest.fixture(scope="module")
def clip():
    """3 s of a tone over noise as int16 PCM, its float value, and a WAV file of it."""
    pcm = np.round(scene(3.0, [(0.5, 2.0)], seed=4) * 32767).astype(np.int16)
    return pcm, pcm.astype(np.float32) / 32768


def test_integer_pcm_gives_the_scores_of_its_float_value(random_detector, clip):
    pcm, wave = clip
    expected = frame_scores(random_detector, wave)
    np.testing.assert_array_equal(frame_scores(random_detector, {"raw": pcm, "sampling_rate": RATE}), expected)
    np.testing.assert_array_equal(frame_scores(random_detector, {"array": pcm, "sampling_rate": RATE}), expected)
    np.testing.assert_array_equal(frame_scores(random_detector, pcm), expected)
    np.testing.assert_array_equal(frame_scores(random_detector, torch.from_numpy(pcm)), expected)
    np.testing.assert_array_equal(frame_scores(random_detector, torch.from_numpy(wave)), expected)
    np.testing.assert_array_equal(frame_scores(random_detector, wave[None]), expected)  # one channel, (1, samples)


def test_files_bytes_and_datasets_values(random_detector, clip, tmp_path):
    pcm, wave = clip
    path = tmp_path / "clip.wav"
    soundfile.write(path, pcm, RATE, subtype="PCM_16")
    expected = frame_scores(random_detector, wave)
    np.testing.assert_array_equal(frame_scores(random_detector, str(path)), expected)
    np.testing.assert_array_equal(frame_scores(random_detector, path), expected)
    np.testing.assert_array_equal(frame_scores(random_detector, path.read_bytes()), expected)
    # Undecoded datasets values, and torchcodec's decoder (what datasets >= 4 gives for a decoded Audio column).
    np.testing.assert_array_equal(frame_scores(random_detector, {"path": str(path), "bytes": None}), expected)
    np.testing.assert_array_equal(frame_scores(random_detector, {"path": None, "bytes": path.read_bytes()}), expected)
    decoders = pytest.importorskip("torchcodec.decoders")
    np.testing.assert_allclose(frame_scores(random_detector, decoders.AudioDecoder(str(path))), expected, atol=1e-6)


def test_other_rates_are_resampled(random_detector, clip):
    _, wave = clip
    wave16 = resample(wave, RATE, 16000)
    expected = frame_scores(random_detector, resample(wave16, 16000, RATE))
    np.testing.assert_array_equal(frame_scores(random_detector, {"raw": wave16, "sampling_rate": 16000}), expected)


@pytest.mark.parametrize(
    "audio, message",
    [
        (np.zeros((2, RATE), np.float32), "mono audio"),
        (np.full(RATE, 1000.0, np.float32), "look like integer PCM"),
        ({"raw": np.zeros(RATE, np.float32)}, "sampling_rate"),
        (np.zeros(0, np.float32), "empty"),
        (3.5, "cannot read audio from a float"),
        ("no/such/file.wav", "no such file"),
    ],
)
def test_bad_inputs_are_input_errors(random_detector, audio, message):
    with pytest.raises(InputError, match=message):
        random_detector(audio)


def test_events_thresholds_and_class_maps(tone_detector, tmp_path):
    wave = scene(6.0, [(1.0, 2.5, 500.0), (3.0, 5.0, 7000.0)])
    events = tone_detector(wave)
    assert [event["label"] for event in events] == ["low", "high"]
    assert set(events[0]) == {"onset", "offset", "label", "score"}
    assert abs(events[0]["onset"] - 1.0) <= 6 / 32 and abs(events[1]["offset"] - 5.0) <= 6 / 32
    # Per-class thresholds as a dict or a file; one above every score silences its class.
    assert [e["label"] for e in tone_detector(wave, threshold={"low": 0.5, "high": 1.0})] == ["low"]
    (tmp_path / "t.json").write_text('{"low": 1.0, "high": 0.5}')
    assert [e["label"] for e in tone_detector(wave, threshold=str(tmp_path / "t.json"))] == ["high"]
    with pytest.raises(InputError, match=r"missing for \['high'\]"):
        tone_detector(wave, threshold={"low": 0.5})
    # A class map's own thresholds apply unless a threshold is given.
    both = ClassMap({"any": [0, 1]}, 2, {"any": 1.0})
    assert tone_detector(wave, class_map=both) == []
    merged = tone_detector(wave, class_map=both, threshold=0.5)
    assert [(e["onset"], e["offset"], e["label"]) for e in merged] == [(e["onset"], e["offset"], "any") for e in events]
    output = tone_detector(wave, class_map=both, return_frame_scores=True)
    assert output["frame_scores"].labels == ["any"] and output["events"] == []


def test_a_list_with_an_undecodable_file_names_that_file(random_detector, tmp_path):
    good = tmp_path / "good.wav"
    soundfile.write(good, scene(2.0, [(0.5, 1.0)]), RATE)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(InputError, match=r"bad.wav: cannot decode"):
        random_detector([str(good), str(bad)])
    with pytest.raises(InputError, match=r"bad.wav: cannot decode"):
        random_detector([str(good), str(bad)], batch_size=2)


def test_too_short_audio_is_named(random_detector, tmp_path):
    path = tmp_path / "blip.wav"
    soundfile.write(path, np.zeros(1600, dtype=np.float32), 32000)  # 50 ms
    with pytest.raises(InputError, match=r"blip.wav: 50.0 ms of audio, too short for detection \(at least 100 ms\)"):
        random_detector(str(path))
    with pytest.raises(InputError, match=r"^the audio: 50.0 ms of audio, too short"):
        random_detector(np.zeros(1600, dtype=np.float32))
