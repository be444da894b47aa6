"""HTSATFeatureExtractor: the log-mel front end against librosa, batching and padding, input checks, serialisation."""

import inspect
import json
import warnings

import librosa
import numpy as np
import pytest
import torch

import htsat_hf  # noqa: F401  (registers the Auto classes)
from htsat_hf import HTSATConfig, HTSATFeatureExtractor, HTSATForAudioClassification, cpu_fast_path
from htsat_hf.errors import InputError
from htsat_hf.feature_extraction_htsat import htsat_mel_filters, model_max_length_seconds

from conftest import SHORT_CLIP_CONFIGS, tiny_config

N_FFT = 1024
N_MELS = 64
F_MIN = 50.0
F_MAX = 14000.0
FRONT_ENDS = [(32000, 320), (16000, 160)]
DURATIONS = [0.1, 1.0, 4.0, 10.0]


def librosa_log_mel(waveform: np.ndarray, sampling_rate: int, hop_length: int) -> np.ndarray:
    """The original front end as librosa computes it (float64), as (frames, mel_bins)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa warns about the empty filters above Nyquist at 16 kHz
        power = librosa.feature.melspectrogram(
            y=np.asarray(waveform, dtype=np.float64),
            sr=sampling_rate,
            n_fft=N_FFT,
            hop_length=hop_length,
            window="hann",
            center=True,
            pad_mode="reflect",
            power=2.0,
            n_mels=N_MELS,
            fmin=F_MIN,
            fmax=F_MAX,
        )
    return librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None).T


def librosa_filters(sampling_rate: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return librosa.filters.mel(sr=sampling_rate, n_fft=N_FFT, n_mels=N_MELS, fmin=F_MIN, fmax=F_MAX).T


def make_signal(kind: str, sampling_rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(sampling_rate * seconds))
    t = np.arange(n) / sampling_rate
    if kind == "sine+floor":
        # A realistic tone: real recordings always have a noise floor (about 60 dB below the tone here).
        wave = 0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.01 * rng.standard_normal(n)
    elif kind == "chirp+floor":
        wave = 0.5 * np.sin(2 * np.pi * (100.0 + 0.2 * sampling_rate * t / max(seconds, 1.0)) * t)
        wave = wave + 0.01 * rng.standard_normal(n)
    elif kind == "noise":
        wave = 0.1 * rng.standard_normal(n)
    elif kind == "impulse":
        wave = np.zeros(n)
        wave[n // 3] = 1.0
    elif kind == "near-silence":
        wave = 1e-6 * rng.standard_normal(n)
    elif kind == "silence":
        wave = np.zeros(n)
    elif kind == "sine":
        wave = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    elif kind == "chirp":
        wave = 0.5 * np.sin(2 * np.pi * (100.0 + 0.2 * sampling_rate * t / max(seconds, 1.0)) * t)
    else:
        raise AssertionError(kind)
    return wave.astype(np.float32)


def extract(extractor, waveform, sampling_rate, **kwargs):
    kwargs.setdefault("padding", "longest")
    kwargs.setdefault("return_tensors", "np")
    return extractor(waveform, sampling_rate=sampling_rate, **kwargs)["input_features"]


@pytest.fixture(scope="module")
def extractors():
    return {sr: HTSATFeatureExtractor(sampling_rate=sr, hop_length=hop) for sr, hop in FRONT_ENDS}


# ----------------------------------------------------------------------------------------------------------------
# Numerics against librosa
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling_rate,hop_length", FRONT_ENDS)
def test_mel_filters_match_librosa(sampling_rate, hop_length):
    ours = htsat_mel_filters(sampling_rate, N_FFT, N_MELS, F_MIN, F_MAX)
    reference = librosa_filters(sampling_rate)
    assert ours.shape == (N_FFT // 2 + 1, N_MELS) == reference.shape
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-8)
    # Every filter that librosa leaves empty is empty here too, and no other.
    np.testing.assert_array_equal(ours.max(axis=0) == 0, reference.max(axis=0) == 0)
    if sampling_rate == 16000:
        assert (reference.max(axis=0) == 0).sum() > 0, "fmax 14 kHz above the 8 kHz Nyquist must leave empty filters"
    else:
        assert (reference.max(axis=0) > 0).all()


@pytest.mark.parametrize("sampling_rate,hop_length", FRONT_ENDS)
@pytest.mark.parametrize("seconds", DURATIONS)
@pytest.mark.parametrize("kind", ["sine+floor", "chirp+floor", "noise", "impulse", "near-silence", "silence"])
def test_log_mel_matches_librosa(extractors, sampling_rate, hop_length, seconds, kind):
    wave = make_signal(kind, sampling_rate, seconds)
    ours = extract(extractors[sampling_rate], wave, sampling_rate)[0]
    reference = librosa_log_mel(wave, sampling_rate, hop_length)
    assert ours.shape == reference.shape == (1 + len(wave) // hop_length, N_MELS)
    assert np.abs(ours - reference).max() <= 1e-3
    empty = librosa_filters(sampling_rate).max(axis=0) == 0
    if empty.any():  # filters above Nyquist: exactly 10*log10(1e-10)
        assert (ours[:, empty] == -100.0).all()


@pytest.mark.parametrize("sampling_rate,hop_length", FRONT_ENDS)
@pytest.mark.parametrize("kind", ["sine", "chirp"])
def test_log_mel_pure_tones_match_librosa_within_float32_range(extractors, sampling_rate, hop_length, kind):
    """Noise-free tones: the Hann sidelobes fall more than 100 dB below the peak, under float32 round-off (the
    original front end is float32 too). Within 70 dB of each frame's peak the front end must still match to 1e-3 dB;
    below that the float32 noise floor is allowed to differ from librosa's float64 values by a little more."""
    wave = make_signal(kind, sampling_rate, 4.0)
    ours = extract(extractors[sampling_rate], wave, sampling_rate)[0]
    reference = librosa_log_mel(wave, sampling_rate, hop_length)
    resolvable = reference > reference.max(axis=1, keepdims=True) - 70.0
    assert resolvable.mean() > 0.05
    assert np.abs(ours - reference)[resolvable].max() <= 1e-3
    assert np.abs(ours - reference).max() <= 0.5


@pytest.mark.parametrize("sampling_rate,hop_length", FRONT_ENDS)
def test_log_mel_int16_pcm_matches_librosa(extractors, sampling_rate, hop_length):
    rng = np.random.default_rng(1)
    pcm = (rng.standard_normal(sampling_rate * 2) * 4000).clip(-32768, 32767).astype(np.int16)
    pcm[:100] = -32768
    ours = extract(extractors[sampling_rate], pcm, sampling_rate)[0]
    reference = librosa_log_mel(pcm.astype(np.float64) / 32768.0, sampling_rate, hop_length)
    assert np.abs(ours - reference).max() <= 1e-3


def test_ten_second_clip_gives_1001_frames_and_float32(extractors):
    wave = make_signal("noise", 32000, 10.0)
    features = extractors[32000](wave, sampling_rate=32000, return_tensors="pt")["input_features"]
    assert features.shape == (1, 1001, 64)
    assert features.dtype == torch.float32


# ----------------------------------------------------------------------------------------------------------------
# Batching, input forms, padding and truncation
# ----------------------------------------------------------------------------------------------------------------


def test_batch_equals_per_clip_results(extractors):
    fe = extractors[32000]
    clips = [make_signal("noise", 32000, s, seed=i) for i, s in enumerate([1.0, 2.5, 4.0])]
    batch = extract(fe, clips, 32000, padding="max_length")
    assert batch.shape == (3, 1001, 64)
    for i, clip in enumerate(clips):
        single = extract(fe, clip, 32000, padding="max_length")
        np.testing.assert_allclose(batch[i], single[0], atol=1e-4, rtol=0)
        padded = np.pad(clip, (0, 320000 - len(clip)))
        np.testing.assert_allclose(batch[i], librosa_log_mel(padded, 32000, 320), atol=1e-3, rtol=0)


def test_torch_input_equals_numpy_input(extractors):
    fe = extractors[32000]
    clip = make_signal("chirp+floor", 32000, 2.0)
    from_numpy = extract(fe, clip, 32000)
    from_torch = extract(fe, torch.from_numpy(clip), 32000)
    np.testing.assert_array_equal(from_numpy, from_torch)
    clips = [make_signal("noise", 32000, 1.0, seed=s) for s in range(2)]
    np.testing.assert_array_equal(extract(fe, clips, 32000), extract(fe, [torch.from_numpy(c) for c in clips], 32000))


def test_2d_batch_input_equals_list_of_clips(extractors):
    fe = extractors[32000]
    clips = np.stack([make_signal("noise", 32000, 1.0, seed=s) for s in range(3)])
    as_array = extract(fe, clips, 32000)
    as_tensor = extract(fe, torch.from_numpy(clips), 32000)
    as_list = extract(fe, list(clips), 32000)
    assert as_array.shape == (3, 101, 64)
    np.testing.assert_array_equal(as_array, as_list)
    np.testing.assert_array_equal(as_array, as_tensor)
    for i in range(3):
        np.testing.assert_allclose(as_array[i], librosa_log_mel(clips[i], 32000, 320), atol=1e-3, rtol=0)


def test_list_of_numbers_is_one_clip(extractors):
    fe = extractors[32000]
    clip = make_signal("noise", 32000, 0.5)
    features = extract(fe, clip.tolist(), 32000)
    assert features.shape == (1, 51, 64)
    np.testing.assert_allclose(features, extract(fe, clip, 32000), atol=1e-6, rtol=0)


def test_int16_is_scaled_by_1_over_32768(extractors):
    fe = extractors[32000]
    rng = np.random.default_rng(2)
    pcm = (rng.standard_normal(32000) * 3000).astype(np.int16)
    scaled = (pcm.astype(np.float64) / 32768.0).astype(np.float32)
    expected = extract(fe, scaled, 32000)
    np.testing.assert_allclose(extract(fe, pcm, 32000), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(extract(fe, torch.from_numpy(pcm), 32000), expected, atol=1e-5, rtol=0)
    # The integers cast to float without scaling would read about 90 dB louder: refused, not used.
    with pytest.raises(InputError, match="clip 0: float samples peak at 12759, so they look like integer PCM"):
        extract(fe, pcm.astype(np.float32), 32000)


def test_padding_max_length_pads_with_zeros_to_ten_seconds(extractors):
    fe = extractors[32000]
    clip = make_signal("noise", 32000, 3.0)
    features = extract(fe, clip, 32000, padding="max_length")
    assert features.shape == (1, 1001, 64)
    explicit = extract(fe, np.pad(clip, (0, 320000 - len(clip))), 32000, padding=False)
    np.testing.assert_allclose(features, explicit, atol=1e-5, rtol=0)
    # The default padding is max_length.
    np.testing.assert_array_equal(fe(clip, sampling_rate=32000, return_tensors="np")["input_features"], features)


def test_padding_max_length_at_16k(extractors):
    features = extract(extractors[16000], make_signal("noise", 16000, 1.0), 16000, padding="max_length")
    assert features.shape == (1, 1001, 64)


def test_padding_longest_pads_to_the_longest_clip_only(extractors):
    fe = extractors[32000]
    short, long = make_signal("noise", 32000, 1.0, seed=1), make_signal("noise", 32000, 2.0, seed=2)
    features = extract(fe, [short, long], 32000, padding="longest")
    assert features.shape == (2, 201, 64)
    np.testing.assert_allclose(features[0], librosa_log_mel(np.pad(short, (0, 32000)), 32000, 320), atol=1e-3, rtol=0)
    np.testing.assert_allclose(features[1], librosa_log_mel(long, 32000, 320), atol=1e-3, rtol=0)
    # padding=True means "longest" too.
    np.testing.assert_array_equal(extract(fe, [short, long], 32000, padding=True), features)


def test_pad_mode_repeat_tiles_the_clip(extractors):
    """ESC-50 recipe: a 5 s clip concatenated with itself to 10 s."""
    fe = extractors[32000]
    clip = make_signal("chirp+floor", 32000, 5.0)
    tiled = extract(fe, clip, 32000, padding="max_length", pad_mode="repeat")
    explicit = extract(fe, np.concatenate([clip, clip]), 32000, padding=False)
    assert tiled.shape == (1, 1001, 64)
    np.testing.assert_allclose(tiled, explicit, atol=1e-5, rtol=0)
    # The same as the extractor's own pad_mode.
    repeat_fe = HTSATFeatureExtractor(pad_mode="repeat")
    np.testing.assert_allclose(extract(repeat_fe, clip, 32000, padding="max_length"), explicit, atol=1e-5, rtol=0)
    # Differs from zero padding.
    zeros = extract(fe, clip, 32000, padding="max_length", pad_mode="zeros")
    assert np.abs(zeros[0, 600:] - tiled[0, 600:]).min() > 1.0


def test_pad_mode_repeat_tiles_a_speech_commands_clip():
    """Speech Commands recipe: a 1 s clip at 16 kHz tiled to 10 s; the last tile is cut to length."""
    fe = HTSATFeatureExtractor(sampling_rate=16000, hop_length=160, pad_mode="repeat")
    clip = make_signal("noise", 16000, 0.7)
    features = extract(fe, clip, 16000, padding="max_length")
    explicit = np.tile(clip, 15)[:160000]
    np.testing.assert_allclose(features, extract(fe, explicit, 16000, padding=False), atol=1e-5, rtol=0)


def test_truncation_keeps_the_start(extractors):
    fe = extractors[32000]
    clip = make_signal("chirp+floor", 32000, 12.0)
    features = extract(fe, clip, 32000, padding="max_length", truncation=True)
    assert features.shape == (1, 1001, 64)
    np.testing.assert_allclose(features, extract(fe, clip[:320000], 32000, padding=False), atol=1e-5, rtol=0)
    # A clip within the limit is not changed by truncation=True.
    short = clip[:96000]
    np.testing.assert_array_equal(
        extract(fe, short, 32000, truncation=True, padding="longest"), extract(fe, short, 32000, padding="longest")
    )


def test_return_tensors(extractors):
    fe = extractors[32000]
    clips = [make_signal("noise", 32000, 1.0, seed=s) for s in range(2)]
    as_pt = fe(clips, sampling_rate=32000, padding="longest", return_tensors="pt")["input_features"]
    as_np = fe(clips, sampling_rate=32000, padding="longest", return_tensors="np")["input_features"]
    as_none = fe(clips, sampling_rate=32000, padding="longest")["input_features"]
    assert isinstance(as_pt, torch.Tensor) and as_pt.shape == (2, 101, 64)
    assert isinstance(as_np, np.ndarray) and as_np.shape == (2, 101, 64) and as_np.dtype == np.float32
    assert isinstance(as_none, list) and len(as_none) == 2
    for i in range(2):
        assert np.asarray(as_none[i]).shape == (101, 64)
        np.testing.assert_array_equal(np.asarray(as_none[i]), as_np[i])
    np.testing.assert_array_equal(as_pt.numpy(), as_np)
    with pytest.raises(ValueError, match="return_tensors"):
        fe(clips, sampling_rate=32000, return_tensors="tf")


# ----------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fe():
    return HTSATFeatureExtractor()


def test_missing_sampling_rate(fe):
    with pytest.raises(ValueError, match="sampling_rate") as error:
        fe(np.zeros(32000, dtype=np.float32))
    assert "32000" in str(error.value)


def test_different_sampling_rate_names_both_rates(fe):
    with pytest.raises(ValueError) as error:
        fe(np.zeros(16000, dtype=np.float32), sampling_rate=16000)
    assert "16000" in str(error.value) and "32000" in str(error.value)
    assert "resample" in str(error.value).lower()


def test_empty_clip(fe):
    with pytest.raises(ValueError, match="empty"):
        fe(np.zeros(0, dtype=np.float32), sampling_rate=32000)
    with pytest.raises(ValueError, match="empty"):
        fe([np.ones(32000, dtype=np.float32), np.zeros(0, dtype=np.float32)], sampling_rate=32000)
    with pytest.raises(ValueError, match="empty"):
        fe([], sampling_rate=32000)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(fe, bad):
    clip = np.zeros(32000, dtype=np.float32)
    clip[1234] = bad
    with pytest.raises(ValueError) as error:
        fe(clip, sampling_rate=32000)
    message = str(error.value)
    assert "NaN" in message and "infinite" in message
    assert "1234" in message  # where the first bad sample is
    with pytest.raises(ValueError, match="clip 1: .*NaN"):
        fe([np.zeros(32000, dtype=np.float32), clip], sampling_rate=32000)


def test_multi_channel_list_element(fe):
    with pytest.raises(ValueError, match="mono") as error:
        fe([np.zeros(32000, dtype=np.float32), np.zeros((2, 32000), dtype=np.float32)], sampling_rate=32000)
    assert "clip 1" in str(error.value)


def test_multi_channel_samples_by_channels_array(fe):
    with pytest.raises(ValueError, match="mono") as error:
        fe(np.zeros((32000, 2), dtype=np.float32), sampling_rate=32000)
    assert "channels" in str(error.value)
    with pytest.raises(ValueError, match="mono"):
        fe(torch.zeros(32000, 2), sampling_rate=32000)


def test_three_dimensional_array(fe):
    with pytest.raises(ValueError) as error:
        fe(np.zeros((2, 2, 32000), dtype=np.float32), sampling_rate=32000)
    assert "(2, 2, 32000)" in str(error.value)
    assert "mono" in str(error.value)


def test_too_long_without_truncation(fe):
    with pytest.raises(ValueError, match="truncation=True") as error:
        fe(np.zeros(320001, dtype=np.float32), sampling_rate=32000)
    assert "10" in str(error.value)
    with pytest.raises(ValueError, match="truncation=True"):
        fe(np.zeros(330000, dtype=np.float32), sampling_rate=32000, padding="longest")


def test_too_short_with_padding_longest(fe):
    with pytest.raises(ValueError, match="too short") as error:
        fe(np.ones(300, dtype=np.float32), sampling_rate=32000, padding="longest")
    assert "513" in str(error.value)  # the minimum: n_fft // 2 + 1 samples
    # With max_length padding the same clip is fine.
    assert fe(np.ones(300, dtype=np.float32), sampling_rate=32000, return_tensors="np")["input_features"].shape == (
        1,
        1001,
        64,
    )


def test_padding_false_needs_equal_lengths(fe):
    with pytest.raises(ValueError, match="equal length") as error:
        fe([np.zeros(32000, np.float32), np.zeros(16000, np.float32)], sampling_rate=32000, padding=False)
    assert "16000" in str(error.value) and "32000" in str(error.value)
    out = fe([np.zeros(32000, np.float32)] * 2, sampling_rate=32000, padding=False, return_tensors="np")
    assert out["input_features"].shape == (2, 101, 64)


def test_bad_padding_value(fe):
    with pytest.raises(ValueError, match="padding"):
        fe(np.zeros(32000, np.float32), sampling_rate=32000, padding="shortest")


def test_bad_pad_mode(fe):
    with pytest.raises(ValueError, match="pad_mode") as error:
        fe(np.zeros(32000, np.float32), sampling_rate=32000, pad_mode="reflect")
    assert "'reflect'" in str(error.value)
    with pytest.raises(ValueError, match="pad_mode"):
        HTSATFeatureExtractor(pad_mode="wrap")


def test_unexpected_keyword(fe):
    with pytest.raises(TypeError, match="max_lenght"):
        fe(np.zeros(32000, np.float32), sampling_rate=32000, max_lenght=10)


def test_non_numeric_input(fe):
    with pytest.raises(TypeError, match="raw_speech"):
        fe("audio.wav", sampling_rate=32000)
    with pytest.raises(ValueError, match="dtype"):
        fe(np.array(["a"] * 1000), sampling_rate=32000)


# ----------------------------------------------------------------------------------------------------------------
# Serialisation
# ----------------------------------------------------------------------------------------------------------------


def test_save_and_load_with_auto_feature_extractor(tmp_path):
    from transformers import AutoFeatureExtractor

    fe = HTSATFeatureExtractor(
        sampling_rate=16000, hop_length=160, f_min=20.0, f_max=7600.0, pad_mode="repeat", max_length_seconds=4.0
    )
    fe.save_pretrained(tmp_path)
    loaded = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert type(loaded) is HTSATFeatureExtractor
    for name in ("feature_size", "sampling_rate", "hop_length", "n_fft", "f_min", "f_max", "max_length_seconds",
                 "pad_mode"):
        assert getattr(loaded, name) == getattr(fe, name), name
    assert (loaded.sampling_rate, loaded.hop_length, loaded.pad_mode, loaded.max_length_seconds) == (
        16000, 160, "repeat", 4.0
    )
    clips = [make_signal("chirp+floor", 16000, 1.0), make_signal("noise", 16000, 2.5)]
    np.testing.assert_array_equal(
        extract(loaded, clips, 16000, padding="max_length"), extract(fe, clips, 16000, padding="max_length")
    )
    assert extract(loaded, clips, 16000, padding="max_length").shape == (2, 401, 64)
    # The saved JSON is plain: the cached filter matrix is not serialised.
    assert "_mel_filters" not in (tmp_path / "preprocessor_config.json").read_text()


def test_from_config_copies_the_front_end():
    config = HTSATConfig(sampling_rate=16000, hop_length=160, n_fft=512, num_mel_bins=64, f_min=25.0, f_max=7000.0)
    fe = HTSATFeatureExtractor.from_config(config, pad_mode="repeat", max_length_seconds=1.0)
    assert (fe.sampling_rate, fe.hop_length, fe.n_fft, fe.feature_size, fe.f_min, fe.f_max) == (
        16000, 160, 512, 64, 25.0, 7000.0
    )
    assert fe.pad_mode == "repeat" and fe.max_length_seconds == 1.0
    np.testing.assert_allclose(
        fe._mel_filters.numpy(),
        librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=25.0, fmax=7000.0).T,
        rtol=1e-5,
        atol=1e-8,
    )
    default = HTSATFeatureExtractor.from_config(HTSATConfig())
    assert (default.sampling_rate, default.hop_length, default.n_fft, default.feature_size) == (32000, 320, 1024, 64)
    assert default.pad_mode == "zeros" and default.max_length_seconds == 10.0


def test_return_attention_mask_is_gone_but_old_saved_extractors_still_load(tmp_path):
    # HTS-AT has no attention mask: the option was accepted and ignored, so it is no longer an argument nor saved.
    assert "return_attention_mask" not in inspect.signature(HTSATFeatureExtractor.__init__).parameters
    fe = HTSATFeatureExtractor()
    fe.save_pretrained(tmp_path / "new")
    assert "return_attention_mask" not in json.loads((tmp_path / "new" / "preprocessor_config.json").read_text())
    assert "attention_mask" not in fe(np.zeros(32000, np.float32), sampling_rate=32000)
    # A preprocessor_config.json saved by an earlier version carries the key; transformers passes it back.
    old = json.loads((tmp_path / "new" / "preprocessor_config.json").read_text())
    old.update(return_attention_mask=False, pad_mode="repeat")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "preprocessor_config.json").write_text(json.dumps(old))
    loaded = HTSATFeatureExtractor.from_pretrained(tmp_path / "old")
    assert loaded.pad_mode == "repeat" and loaded.return_attention_mask is False
    assert "return_attention_mask" not in loaded.to_dict()


def test_check_matches_config_lists_every_difference():
    config = HTSATConfig()
    HTSATFeatureExtractor.from_config(config).check_matches_config(config)  # the same front end: no error
    # Clip handling is the extractor's own; it may differ from nothing in the config.
    HTSATFeatureExtractor.from_config(config, pad_mode="repeat", max_length_seconds=4.0).check_matches_config(config)
    other = HTSATFeatureExtractor(hop_length=160, f_max=8000.0, feature_size=128)
    with pytest.raises(InputError) as error:
        other.check_matches_config(config)
    message = str(error.value)
    assert "hop_length: config 320, feature extractor 160" in message
    assert "f_max: config 14000.0, feature extractor 8000.0" in message
    assert "num_mel_bins: config 64, feature extractor 128" in message
    assert "sampling_rate" not in message and "n_fft" not in message and "\n" not in message


@pytest.mark.parametrize("overrides", SHORT_CLIP_CONFIGS.values(), ids=SHORT_CLIP_CONFIGS.keys())
def test_from_config_gives_clips_the_model_reads(overrides):
    """A config whose model reads fewer frames than a 10 s clip gives: from_config's clip is the longest the model
    reads (a 10 s one failed deep in the model), and a 10 s clip cut to it runs through the model."""
    config = tiny_config(**overrides)
    extractor = HTSATFeatureExtractor.from_config(config)
    assert extractor.max_length_seconds == model_max_length_seconds(config) < 10.0
    assert 1 + extractor.max_length_samples // config.hop_length == config.max_frames
    extractor.check_matches_config(config)
    rate = config.sampling_rate
    wave = np.random.default_rng(0).standard_normal(10 * rate).astype(np.float32) * 0.1
    features = extractor(wave, sampling_rate=rate, truncation=True, return_tensors="pt")["input_features"]
    assert features.shape == (1, config.max_frames, config.num_mel_bins)
    model = HTSATForAudioClassification(config).eval()
    with torch.no_grad():
        logits = model(features).logits
    assert logits.shape == (1, config.num_labels) and torch.isfinite(logits).all()


@pytest.mark.parametrize("overrides", SHORT_CLIP_CONFIGS.values(), ids=SHORT_CLIP_CONFIGS.keys())
def test_an_extractor_whose_clips_the_model_cannot_read_is_refused(overrides):
    config = tiny_config(**overrides)
    ten_seconds = HTSATFeatureExtractor(feature_size=config.num_mel_bins, hop_length=config.hop_length)
    frames = 1 + 10 * config.sampling_rate // config.hop_length
    with pytest.raises(InputError) as error:
        ten_seconds.check_matches_config(config)
    message = str(error.value)
    assert "\n" not in message
    assert f"10 s clips give {frames} log-mel frames, but the model reads at most {config.max_frames}" in message
    assert f"max_length_seconds to at most {model_max_length_seconds(config):g}" in message
    assert "HTSATFeatureExtractor.from_config(model.config)" in message
    # An explicit clip length is the caller's, and refused the same way.
    with pytest.raises(InputError, match=f"10 s clips give {frames} log-mel frames"):
        HTSATFeatureExtractor.from_config(config, max_length_seconds=10.0)


@pytest.mark.parametrize("config", [None, HTSATConfig().to_dict(), "htsat-audioset"], ids=["none", "dict", "str"])
def test_check_matches_config_refuses_what_is_not_a_config(config):
    with pytest.raises(InputError, match="needs the model's HTSATConfig") as error:
        HTSATFeatureExtractor().check_matches_config(config)
    assert type(config).__name__ in str(error.value)


def test_a_huge_clip_length_is_refused_in_a_short_line():
    """A finite but absurd clip length (1e300 s) is refused like any too-long clip, its frame count written in
    short (it was a 300-digit number)."""
    extractor = HTSATFeatureExtractor(max_length_seconds=1e300)
    with pytest.raises(InputError, match=r"1e\+300 s clips give 1e\+302 log-mel frames") as error:
        extractor.check_matches_config(HTSATConfig())
    assert len(str(error.value)) < 400


@pytest.mark.parametrize(
    "dtype,full_scale,offset", [(np.int8, 128.0, 0.0), (np.uint8, 128.0, 128.0), (np.int32, 2147483648.0, 0.0)]
)
def test_integer_pcm_is_scaled_by_the_audio_rules(extractors, dtype, full_scale, offset):
    fe = extractors[32000]
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    pcm = np.clip(rng.standard_normal(16000) * (info.max - info.min) / 16 + offset, info.min, info.max).astype(dtype)
    scaled = ((pcm.astype(np.float64) - offset) / full_scale).astype(np.float32)
    np.testing.assert_allclose(extract(fe, pcm, 32000), extract(fe, scaled, 32000), atol=1e-5, rtol=0)


def test_feature_extractor_errors_are_input_errors(fe):
    with pytest.raises(InputError, match="pad_mode"):
        HTSATFeatureExtractor(pad_mode="zero")
    with pytest.raises(InputError, match="max_length_seconds"):
        HTSATFeatureExtractor(max_length_seconds=0)
    # A tester's cases: they failed with OverflowError or TypeError, or passed and failed on every clip later.
    for value in (float("inf"), 1e305, float("nan"), "5", [5], True):
        with pytest.raises(InputError, match="must be a positive, finite number of seconds"):
            HTSATFeatureExtractor(max_length_seconds=value)
    with pytest.raises(InputError, match="gives clips of 32 samples; the front end needs at least 513"):
        HTSATFeatureExtractor(max_length_seconds=0.001)
    assert HTSATFeatureExtractor(max_length_seconds=np.float32(2.5)).max_length_samples == 80000
    with pytest.raises(InputError, match="clip 0: samples of dtype int64 are not audio"):
        fe(np.zeros(32000, dtype=np.int64), sampling_rate=32000)
    with pytest.raises(InputError, match="16000 Hz"):
        fe(np.zeros(16000, dtype=np.float32), sampling_rate=16000)


def test_cpu_chunks_and_caller_autocast_leave_features_unchanged():
    """The CPU fast path computes the spectrum a few clips at a time (its `chunk_bytes` budget); results are those of
    one pass, and a caller's autocast never reaches the front end (a bfloat16 mel matmul is ~0.1 dB off)."""
    extractor = HTSATFeatureExtractor()
    waves = (torch.randn(5, 32000 * 3) * 0.1).numpy()
    with cpu_fast_path(False):
        whole = extractor(waves, sampling_rate=32000, return_tensors="pt")["input_features"]
    with cpu_fast_path(True, chunk_bytes=1):  # one clip at a time
        chunked = extractor(waves, sampling_rate=32000, return_tensors="pt")["input_features"]
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-4)  # dB; equal with MKL, but BLAS may block rows
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = extractor(waves, sampling_rate=32000, return_tensors="pt")["input_features"]
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, whole, rtol=0, atol=1e-4)
