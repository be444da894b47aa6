"""pipeline("audio-classification") on a tiny random HTS-AT saved with its feature extractor: files (decoded by
`htsat_hf.audio`, resampled when needed), arrays, and {"raw", "sampling_rate"} dicts (resampled with torchaudio)."""

import librosa
import numpy as np
import pytest
import soundfile
import torch
from torchaudio.functional import resample as torchaudio_resample
from transformers import pipeline

import htsat_hf  # noqa: F401  (registers the Auto classes with transformers)
from htsat_hf import HTSATFeatureExtractor, HTSATForAudioClassification
from htsat_hf.errors import InputError

from conftest import require_shared, tiny_config

LABELS = ["dog", "rain", "siren", "speech", "music"]
SR = 32000


def build_model_dir(directory, problem_type):
    torch.manual_seed(0)
    config = tiny_config(
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
        problem_type=problem_type,
    )
    model = HTSATForAudioClassification(config).eval()
    with torch.no_grad():  # larger head weights: scores that visibly depend on the input
        model.head.conv.weight.mul_(30.0)
        model.head.conv.bias.copy_(torch.linspace(-1.0, 1.0, len(LABELS)))
    model.save_pretrained(directory)
    HTSATFeatureExtractor.from_config(config).save_pretrained(directory)
    return model


class Classifier:
    def __init__(self, directory, problem_type):
        self.model = build_model_dir(directory, problem_type)
        self.extractor = HTSATFeatureExtractor()
        self.pipe = pipeline("audio-classification", model=str(directory))
        self.captured = []
        self.pipe.model.register_forward_pre_hook(self._capture, with_kwargs=True)

    def _capture(self, module, args, kwargs):
        self.captured.append((args[0] if args else kwargs["input_features"]).detach().clone())

    def logits(self, waveform_32k):
        features = self.extractor(waveform_32k, sampling_rate=SR, return_tensors="pt")
        with torch.no_grad():
            return self.model(**features).logits[0]

    def run(self, inputs):
        self.captured.clear()
        result = self.pipe(inputs, top_k=len(LABELS))
        assert len(self.captured) == 1
        return result, self.captured[0]


@pytest.fixture(scope="module")
def multi_label(tmp_path_factory):
    return Classifier(tmp_path_factory.mktemp("multi"), "multi_label_classification")


@pytest.fixture(scope="module")
def single_label(tmp_path_factory):
    return Classifier(tmp_path_factory.mktemp("single"), "single_label_classification")


def chirp(sampling_rate, seconds, seed=0):
    t = np.arange(int(sampling_rate * seconds)) / sampling_rate
    noise = np.random.default_rng(seed).standard_normal(t.shape)
    return (0.4 * np.sin(2 * np.pi * (200 + 600 * t) * t) + 0.05 * noise).astype(np.float32)


def as_scores(result):
    return {entry["label"]: entry["score"] for entry in result}


def check_sigmoid_result(result, logits):
    assert [set(entry) for entry in result] == [{"label", "score"}] * len(LABELS)
    assert {entry["label"] for entry in result} == set(LABELS)  # names from id2label
    scores = [entry["score"] for entry in result]
    assert scores == sorted(scores, reverse=True)
    expected = logits.sigmoid()
    got = as_scores(result)
    for i, name in enumerate(LABELS):
        assert abs(got[name] - expected[i].item()) <= 1e-5, name


def passband_difference(features_a, features_b, frames):
    """Mean and max |dB| difference over the frames of the clip and the mel bins below 7 kHz."""
    centres = librosa.mel_frequencies(66, fmin=50.0, fmax=14000.0)[1:-1]
    keep = centres < 7000.0
    diff = (np.asarray(features_a)[5 : frames - 5][:, keep] - np.asarray(features_b)[5 : frames - 5][:, keep])
    return np.abs(diff).mean(), np.abs(diff).max()


def test_real_recording_file(multi_label):
    path = require_shared("audioset/R9_ZSCveAHg_7s.wav")
    waveform, rate = soundfile.read(path, dtype="float32")
    assert rate == SR and waveform.ndim == 1
    result, features = multi_label.run(str(path))
    check_sigmoid_result(result, multi_label.logits(waveform))
    assert features.shape == (1, 1001, 64)
    expected = multi_label.extractor(waveform, sampling_rate=SR, return_tensors="pt")["input_features"]
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_generated_32k_wav_file(multi_label, tmp_path, subtype):
    clip = chirp(SR, 3.0)
    path = tmp_path / "clip.wav"
    soundfile.write(path, clip, SR, subtype=subtype)
    decoded, _ = soundfile.read(path, dtype="float32")
    result, _ = multi_label.run(str(path))
    check_sigmoid_result(result, multi_label.logits(decoded))


def test_16k_wav_file_is_resampled(multi_label, tmp_path):
    """A file at another rate is read as `htsat_hf.audio` reads it everywhere: decoded, then resampled with
    torchaudio (transformers' own pipeline would resample with the ffmpeg program instead)."""
    clip16 = chirp(16000, 3.0, seed=1)
    path = tmp_path / "clip16k.wav"
    soundfile.write(path, clip16, 16000, subtype="FLOAT")
    result, features = multi_label.run(str(path))
    resampled = torchaudio_resample(torch.from_numpy(clip16), 16000, SR).numpy()
    assert len(resampled) == 2 * len(clip16)
    check_sigmoid_result(result, multi_label.logits(resampled))
    # Independently of torchaudio: the features are those of the clip resampled to 32 kHz (librosa), not of the 16 kHz
    # samples read as if they were 32 kHz.
    reference = multi_label.extractor(librosa.resample(clip16, orig_sr=16000, target_sr=SR), sampling_rate=SR)
    mean, worst = passband_difference(features[0], reference["input_features"][0], 300)
    assert mean < 0.1 and worst < 3.0
    misread = multi_label.extractor(clip16, sampling_rate=SR)["input_features"][0]
    assert passband_difference(misread, reference["input_features"][0], 150)[0] > 5.0


def test_numpy_array_at_the_model_rate(multi_label):
    clip = chirp(SR, 4.0, seed=2)
    result, _ = multi_label.run(clip)
    check_sigmoid_result(result, multi_label.logits(clip))


def test_dict_at_16k_is_resampled(multi_label):
    import torchaudio

    clip16 = chirp(16000, 3.0, seed=3)
    result, features = multi_label.run({"raw": clip16, "sampling_rate": 16000})
    resampled = torchaudio.functional.resample(torch.from_numpy(clip16), 16000, SR).numpy()
    check_sigmoid_result(result, multi_label.logits(resampled))
    reference = multi_label.extractor(librosa.resample(clip16, orig_sr=16000, target_sr=SR), sampling_rate=SR)
    mean, worst = passband_difference(features[0], reference["input_features"][0], 300)
    assert mean < 0.1 and worst < 3.0


def test_dict_at_the_model_rate_is_used_as_is(multi_label):
    clip = chirp(SR, 2.0, seed=4)
    result, _ = multi_label.run({"raw": clip, "sampling_rate": SR})
    check_sigmoid_result(result, multi_label.logits(clip))


def test_multi_label_scores_are_sigmoid_and_need_not_sum_to_one(multi_label):
    clip = chirp(SR, 4.0, seed=5)
    result, _ = multi_label.run(clip)
    logits = multi_label.logits(clip)
    check_sigmoid_result(result, logits)
    assert abs(sum(entry["score"] for entry in result) - 1.0) > 1e-3
    assert abs(sum(entry["score"] for entry in result) - logits.sigmoid().sum().item()) <= 1e-5
    assert multi_label.pipe.model.config.problem_type == "multi_label_classification"
    # top_k smaller than the number of labels returns the best ones.
    top2 = multi_label.pipe(clip, top_k=2)
    best = [LABELS[i] for i in logits.argsort(descending=True)[:2].tolist()]
    assert [entry["label"] for entry in top2] == best


def test_single_label_scores_are_softmax(single_label):
    clip = chirp(SR, 4.0, seed=6)
    result, _ = single_label.run(clip)
    assert {entry["label"] for entry in result} == set(LABELS)
    assert abs(sum(entry["score"] for entry in result) - 1.0) <= 1e-5
    expected = single_label.logits(clip).softmax(-1)
    got = as_scores(result)
    for i, name in enumerate(LABELS):
        assert abs(got[name] - expected[i].item()) <= 1e-5, name
    scores = [entry["score"] for entry in result]
    assert scores == sorted(scores, reverse=True)


def test_integer_pcm_array_is_scaled_as_the_audio_layer_says(multi_label):
    clip = chirp(SR, 3.0, seed=7)
    pcm = np.round(clip * 32767).astype(np.int16)
    result, _ = multi_label.run(pcm)
    check_sigmoid_result(result, multi_label.logits(pcm / np.float32(32768)))


def test_unscaled_pcm_given_as_float_is_refused(multi_label):
    unscaled = np.round(chirp(SR, 3.0, seed=8) * 32767).astype(np.float32)
    with pytest.raises(InputError, match="the audio: float samples peak at .* look like integer PCM"):
        multi_label.pipe(unscaled)
