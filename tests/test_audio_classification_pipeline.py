"""`pipeline("audio-classification")` on an HTS-AT model reads every form of audio as the rest of the package does
(`htsat_hf.audio.load_waveform`), and gives the scores `htsat-hf predict` gives; other models keep transformers' path.
"""

import numpy as np
import pytest
import soundfile
import torch
from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification, pipeline

import htsat_hf
from htsat_hf import HTSATAudioClassificationPipeline, HTSATFeatureExtractor, HTSATForSoundEventDetection
from htsat_hf.errors import InputError
from htsat_hf.predict import load_predictor, predict_file

from conftest import tiny_config

RATE = 32000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = tiny_config(
        num_labels=5, id2label={i: f"c{i}" for i in range(5)}, label2id={f"c{i}": i for i in range(5)},
        problem_type="multi_label_classification",
    )
    directory = tmp_path_factory.mktemp("tiny")
    HTSATForSoundEventDetection(config).eval().save_pretrained(directory)
    HTSATFeatureExtractor.from_config(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def classifier(model_dir):
    return pipeline("audio-classification", model=str(model_dir))


@pytest.fixture(scope="module")
def wave():
    rng = np.random.default_rng(0)
    t = np.arange(4 * RATE) / RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def scores(result):
    return np.array([entry["score"] for entry in sorted(result, key=lambda entry: entry["label"])])


def test_the_task_runs_the_htsat_subclass(classifier):
    assert type(classifier) is HTSATAudioClassificationPipeline


def test_every_form_gives_the_scores_of_the_float_array(classifier, wave, tmp_path):
    expected = scores(classifier(wave, top_k=None))
    int16 = np.round(wave * 32767).astype(np.int16)
    mono, stereo = tmp_path / "mono.wav", tmp_path / "stereo.wav"
    soundfile.write(mono, int16, RATE, subtype="PCM_16")
    soundfile.write(stereo, np.stack([int16, int16], axis=1), RATE, subtype="PCM_16")
    pcm = int16.astype(np.float32) / 32768
    forms = {
        "path": str(mono),
        # transformers' own pipeline downmixes with ffmpeg's -ac 1, 3 dB louder than the mono file.
        "stereo path": str(stereo),
        "bytes": mono.read_bytes(),
        "int16 array": int16,
        "int16 dict": {"raw": int16, "sampling_rate": RATE},
        "(1, samples) array": pcm[None],
        "torch tensor": torch.from_numpy(pcm),
    }
    reference = scores(classifier(pcm, top_k=None))
    for name, form in forms.items():
        np.testing.assert_allclose(scores(classifier(form, top_k=None)), reference, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(reference, expected, atol=1e-3)  # int16 quantisation of the same samples


def test_int16_dict_at_another_rate_is_resampled_as_the_float_one(classifier, wave):
    from torchaudio.functional import resample

    low = resample(torch.from_numpy(wave), RATE, 16000).numpy()
    int16 = np.round(np.clip(low, -1, 1) * 32767).astype(np.int16)
    from_int = scores(classifier({"raw": int16, "sampling_rate": 16000}, top_k=None))
    from_float = scores(classifier({"raw": int16.astype(np.float32) / 32768, "sampling_rate": 16000}, top_k=None))
    np.testing.assert_allclose(from_int, from_float, atol=1e-6)


def test_datasets_decoder_value(classifier, wave, tmp_path):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "clip.wav"
    soundfile.write(path, wave, RATE, subtype="FLOAT")
    dataset = datasets.Dataset.from_dict({"audio": [str(path)]}).cast_column("audio", datasets.Audio())
    np.testing.assert_allclose(
        scores(classifier(dataset[0]["audio"], top_k=None)), scores(classifier(str(path), top_k=None)), atol=1e-6
    )


def test_bad_audio_is_one_line_naming_it(classifier, tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    with pytest.raises(InputError, match="notes.wav: cannot decode audio"):
        classifier(str(text))
    with pytest.raises(InputError, match="look like integer PCM"):
        classifier(np.full(RATE, 20000.0, dtype=np.float32))
    with pytest.raises(InputError, match="sampling_rate"):
        classifier({"raw": np.zeros(RATE, dtype=np.float32), "sampling_rate": 0})


def test_predict_tags_a_short_clip_as_the_pipeline_does(classifier, model_dir, wave, tmp_path):
    """A clip of at most 10 s is tagged as the model was trained (padded by the extractor's pad_mode) on every
    route; the detection windows, which stretch a short clip, do not decide its tags."""
    path = tmp_path / "short.wav"
    soundfile.write(path, wave, RATE, subtype="FLOAT")
    model, extractor = load_predictor(model_dir)
    prediction = predict_file(model, extractor, path, top_k=5)
    from_predict = np.array([score for _, score in sorted(prediction.tags)])
    np.testing.assert_allclose(from_predict, scores(classifier(str(path), top_k=None)), atol=1e-6)


def test_other_models_keep_transformers_preprocessing(tmp_path):
    config = ASTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, num_mel_bins=16,
        max_length=64, num_labels=3,
    )
    directory = tmp_path / "ast"
    ASTForAudioClassification(config).save_pretrained(directory)
    ASTFeatureExtractor(num_mel_bins=16, max_length=64).save_pretrained(directory)
    ast = pipeline("audio-classification", model=str(directory))
    assert isinstance(ast, HTSATAudioClassificationPipeline)
    assert len(ast(np.zeros(16000, dtype=np.float32), top_k=None)) == 3
    with pytest.raises(ValueError, match="single channel"):  # transformers' own check, not htsat_hf's
        ast(np.zeros((2, 16000), dtype=np.float32))


def test_model_takes_features_in_any_float_dtype_and_refuses_others(model_dir):
    model = htsat_hf.HTSATForAudioClassification.from_pretrained(model_dir).eval()
    features = torch.randn(2, 401, 64)
    with torch.no_grad():
        expected = model(features).logits
        torch.testing.assert_close(model(features.double()).logits, expected)
    with pytest.raises(InputError, match="floating-point torch tensor.*torch.int64"):
        model(features.long())
    with pytest.raises(InputError, match="floating-point torch tensor.*ndarray"):
        model(features.numpy())


def test_an_extractor_whose_clips_the_model_cannot_read_is_refused_at_construction(tmp_path):
    """100 mel bins: the model reads 512 frames, a 10 s clip gives 1001. The pipeline refuses such an extractor in
    one line when it is built (every call failed deep in the model), and runs with the one from_config builds."""
    config = tiny_config(num_mel_bins=100, num_labels=2)
    model = htsat_hf.HTSATForAudioClassification(config).eval()
    with pytest.raises(InputError, match="10 s clips give 1001 log-mel frames, but the model reads at most 512"):
        pipeline("audio-classification", model=model, feature_extractor=HTSATFeatureExtractor(feature_size=100))
    classifier = pipeline("audio-classification", model=model,
                          feature_extractor=HTSATFeatureExtractor.from_config(config))
    assert len(classifier(np.zeros(4 * RATE, np.float32), top_k=None)) == 2
