"""The `htsat-hf` command line on tiny saved models and generated audio files: predict (long, resampled, stereo,
unreadable files; json/table/tsv; single- and multi-label scores; class maps), average, export-onnx, card, and the
existing convert command."""

import csv
import io
import importlib.util
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile
import torch
from huggingface_hub import ModelCard

from htsat_hf import HTSATFeatureExtractor, HTSATForAudioClassification, HTSATForSoundEventDetection
from htsat_hf.cli import main
from htsat_hf.predict import TSV_COLUMNS
from htsat_hf.sed_inference import sliding_window_scores
from htsat_hf.sed_postprocessing import load_class_map

from conftest import require_shared, tiny_config

SR = 32000
LABELS = ["dog", "cat", "siren"]


def save_model(directory, labels=LABELS, seed=0, problem_type="multi_label_classification", dog_bias=3.0):
    torch.manual_seed(seed)
    config = tiny_config(
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        problem_type=problem_type,
    )
    model = HTSATForAudioClassification(config).eval()
    with torch.no_grad():
        model.htsat.feature_norm.running_mean.uniform_(-40, -20)
        model.htsat.feature_norm.running_var.uniform_(10, 60)
        # Class 0 is present everywhere: a known event that must span the whole of every file.
        model.head.conv.bias[0] += dog_bias
    model.save_pretrained(directory)
    HTSATFeatureExtractor.from_config(config).save_pretrained(directory)
    return directory


def tone(seconds, rate, frequency=440.0, channels=1):
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.1 * np.sin(2 * np.pi * frequency * t) + 0.01 * np.random.default_rng(0).standard_normal(t.shape)
    wave = wave.astype(np.float32)
    return np.stack([wave, 0.5 * wave], axis=1) if channels == 2 else wave


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("tagger"))


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio")
    files = {
        "long": folder / "long.wav",  # 25 s: three 10 s windows and a bit, stitched
        "clip": folder / "clip.wav",  # 4 s at the model's rate: one window at its own length
        "stereo16k": folder / "stereo16k.flac",  # 3 s stereo at 16 kHz: downmixed and resampled
        "bad": folder / "bad.wav",
        "tiny": folder / "tiny.wav",  # 50 ms: too short for detection
    }
    soundfile.write(files["long"], tone(25.0, SR), SR)
    soundfile.write(files["clip"], tone(4.0, SR, 880.0), SR)
    soundfile.write(files["stereo16k"], tone(3.0, 16000, channels=2), 16000)
    files["bad"].write_bytes(b"this is not audio" * 64)
    soundfile.write(files["tiny"], tone(0.05, SR), SR)
    return files


def file_name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@torch.no_grad()
def direct_clip_logits(model_dir, path):
    """Clip logits of a file of at most 10 s at the model's rate, computed without the CLI's code path."""
    waveform, rate = soundfile.read(path, dtype="float32")
    extractor = HTSATFeatureExtractor.from_pretrained(model_dir)
    features = extractor(waveform, sampling_rate=rate, padding="longest", return_tensors="pt")["input_features"]
    return HTSATForSoundEventDetection.from_pretrained(model_dir).eval()(features).clip_logits[0]


@pytest.mark.parametrize(
    "command,phrase",
    [
        ("convert", "Lightning"),
        ("predict", "softmax"),
        ("average", "BatchNorm"),
        ("export-onnx", "onnxruntime"),
        ("card", "model-index"),
    ],
)
def test_every_command_explains_itself(capsys, command, phrase):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert phrase in help_text


# ----------------------------------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------------------------------


def test_predict_json(capsys, tagger, audio):
    code, out, err = run(
        capsys,
        "predict",
        audio["long"],
        audio["clip"],
        audio["stereo16k"],
        "--model",
        tagger,
        "--top-k",
        2,
        "--format",
        "json",
        "--batch-size",
        2,
    )
    assert code == 0, err
    results = {file_name(r["file"]): r for r in json.loads(out)}
    assert set(results) == {"long.wav", "clip.wav", "stereo16k.flac"}
    assert results["long.wav"]["duration"] == pytest.approx(25.0)
    assert results["stereo16k.flac"]["duration"] == pytest.approx(3.0)
    assert results["stereo16k.flac"]["sampling_rate"] == 16000 and results["clip.wav"]["sampling_rate"] == SR
    for result in results.values():
        scores = [tag["score"] for tag in result["tags"]]
        assert len(scores) == 2 and scores == sorted(scores, reverse=True)
        assert result["tags"][0]["label"] == "dog" and scores[0] > 0.9
        dog = [e for e in result["events"] if e["label"] == "dog"]
        # Present all along: one event from 0 to the end of the file, across the stitched windows of the 25 s one.
        assert len(dog) == 1 and dog[0]["onset"] == 0 and dog[0]["offset"] == pytest.approx(result["duration"])
        for event in result["events"]:
            assert 0 <= event["onset"] < event["offset"] <= result["duration"] + 1e-6 and event["score"] > 0.5

    # A file within one window: multi-label tag scores are the sigmoid of the model's clip logits.
    expected = torch.sigmoid(direct_clip_logits(tagger, audio["clip"]))
    for tag in results["clip.wav"]["tags"]:
        assert tag["score"] == pytest.approx(float(expected[LABELS.index(tag["label"])]), abs=1e-5)
    # The 25 s file: the windows' sigmoid clip scores averaged (not their maximum).
    model = HTSATForSoundEventDetection.from_pretrained(tagger).eval()
    windows = sliding_window_scores(
        model, HTSATFeatureExtractor.from_pretrained(tagger), soundfile.read(audio["long"], dtype="float32")[0], SR
    ).clip_scores
    assert not np.allclose(windows["mean"], windows["max"], atol=1e-4)
    for tag in results["long.wav"]["tags"]:
        assert tag["score"] == pytest.approx(float(windows["mean"][LABELS.index(tag["label"])]), abs=1e-5)


def test_predict_single_label_uses_softmax(capsys, tmp_path, audio):
    model_dir = save_model(
        tmp_path / "softmax", labels=["a", "b", "c", "d"], problem_type="single_label_classification", dog_bias=0.0
    )
    code, out, err = run(
        capsys, "predict", audio["clip"], audio["long"], "--model", model_dir, "--top-k", 4, "--format", "json"
    )
    assert code == 0, err
    clip, long = json.loads(out)
    expected = torch.softmax(direct_clip_logits(model_dir, audio["clip"]), dim=-1)
    for tag in clip["tags"]:
        assert tag["score"] == pytest.approx(float(expected[["a", "b", "c", "d"].index(tag["label"])]), abs=1e-5)
    # Softmax per window, averaged over the windows: still a distribution over the classes.
    assert sum(t["score"] for t in long["tags"]) == pytest.approx(1.0, abs=1e-5)


def test_predict_table_and_tsv(capsys, tagger, audio):
    code, out, err = run(capsys, "predict", audio["long"], "--model", tagger, "--median-filter", 0.45)
    assert code == 0, err
    assert f"{audio['long']}  (25.00 s)" in out and "tags:" in out and "events:" in out and "dog" in out

    code, out, err = run(
        capsys, "predict", audio["long"], audio["clip"], "--model", tagger, "--format", "tsv", "--top-k", 3
    )
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out), delimiter="\t"))
    assert tuple(rows[0].keys()) == TSV_COLUMNS
    tags = [r for r in rows if r["kind"] == "tag"]
    events = [r for r in rows if r["kind"] == "event"]
    assert len(tags) == 6 and {r["event_label"] for r in tags} == set(LABELS)
    assert events and all(float(r["onset"]) < float(r["offset"]) for r in events)
    assert {file_name(r["filename"]) for r in events} == {"long.wav", "clip.wav"}


def test_predict_decodes_with_ffmpeg_what_soundfile_cannot(capsys, tagger, audio, tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg program is not installed (make install provides it)")
    m4a = tmp_path / "clip.m4a"  # AAC: libsndfile has no decoder for it
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(audio["clip"]), "-c:a", "aac", str(m4a)], check=True)
    with pytest.raises(soundfile.LibsndfileError):
        soundfile.info(m4a)
    code, out, err = run(capsys, "predict", m4a, "--model", tagger, "--format", "json")
    assert code == 0, err
    (result,) = json.loads(out)
    # torchcodec reports the file's own rate; the ffmpeg program (without torchcodec) decodes straight to the model's.
    own_rate = 32000 if importlib.util.find_spec("torchcodec") else None
    assert result["sampling_rate"] == own_rate
    assert result["duration"] == pytest.approx(4.0, abs=0.05) and result["tags"][0]["label"] == "dog"


def test_predict_threshold(capsys, tagger, audio):
    code, out, _ = run(capsys, "predict", audio["clip"], "--model", tagger, "--threshold", 0.999, "--format", "json")
    assert code == 0
    (result,) = json.loads(out)
    assert result["events"] == [] and result["tags"][0]["label"] == "dog"


def test_predict_with_the_desed_class_map(capsys, tmp_path, audio, tagger):
    desed = load_class_map("desed", num_classes=527)
    model_dir = save_model(tmp_path / "audioset", labels=[f"audioset {i}" for i in range(527)])
    code, out, err = run(
        capsys,
        "predict",
        audio["clip"],
        "--model",
        model_dir,
        "--class-map",
        "desed",
        "--format",
        "json",
        "--top-k",
        10,
    )
    assert code == 0, err
    (result,) = json.loads(out)
    assert result["tags"][0]["label"] == "Speech"  # AudioSet class 0 (the biased one) maps to Speech
    assert {t["label"] for t in result["tags"]} == set(desed.labels)
    event_labels = {e["label"] for e in result["events"]}
    assert "Speech" in event_labels and event_labels <= set(desed.labels)

    code, _, err = run(capsys, "predict", audio["clip"], "--model", tagger, "--class-map", "desed")
    assert code == 2 and "527" in err  # a 3-class model cannot use an AudioSet map


def test_predict_errors_name_the_file(capsys, tagger, audio, tmp_path):
    missing = tmp_path / "missing.wav"
    code, out, err = run(
        capsys, "predict", audio["bad"], audio["clip"], missing, audio["tiny"], "--model", tagger, "--format", "json"
    )
    assert code == 1
    assert str(audio["bad"]) in err and "cannot decode" in err
    assert str(missing) in err and "no such file" in err
    assert str(audio["tiny"]) in err and "too short" in err
    assert [file_name(r["file"]) for r in json.loads(out)] == ["clip.wav"]  # the readable file is still reported

    code, out, err = run(capsys, "predict", audio["clip"], "--model", tmp_path / "no-model")
    assert code == 2 and "no-model" in err and out == ""


# ----------------------------------------------------------------------------------------------------------------
# average, export-onnx, card, convert
# ----------------------------------------------------------------------------------------------------------------


def test_average(capsys, tmp_path):
    first = save_model(tmp_path / "a", seed=1)
    second = save_model(tmp_path / "b", seed=2)
    code, out, err = run(capsys, "average", first, second, "--output", tmp_path / "avg")
    assert code == 0, err
    assert "2 models" in out
    averaged = HTSATForAudioClassification.from_pretrained(tmp_path / "avg").state_dict()
    a = HTSATForAudioClassification.from_pretrained(first).state_dict()
    b = HTSATForAudioClassification.from_pretrained(second).state_dict()
    name = "htsat.encoder.stages.0.blocks.0.attention.qkv.weight"
    assert not torch.equal(a[name], b[name])
    torch.testing.assert_close(averaged[name], (a[name] + b[name]) / 2)
    assert (tmp_path / "avg" / "preprocessor_config.json").is_file()

    other = save_model(tmp_path / "c", labels=["x", "y"])
    code, _, err = run(capsys, "average", first, other, "--output", tmp_path / "bad-avg")
    assert code == 2 and "cannot combine" in err and str(other) in err


def test_export_onnx(capsys, tagger, tmp_path):
    try:
        import onnxruntime
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise
        pytest.skip("onnxruntime is not installed (pip install onnx onnxruntime)")
    # The torchscript exporter keeps this test fast; the default (dynamo) path is covered in test_onnx.py.
    output = tmp_path / "tagger.onnx"
    code, out, err = run(capsys, "export-onnx", tagger, output, "--task", "detection", "--exporter", "torchscript")
    assert code == 0, err
    assert "max abs difference" in out and "frame_logits, clip_logits" in out
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    features = np.random.default_rng(0).standard_normal((3, 1001, 64)).astype(np.float32) * 10 - 35
    frame_logits, clip_logits = session.run(None, {"input_features": features})
    assert frame_logits.shape == (3, 32, 3) and clip_logits.shape == (3, 3)
    with torch.no_grad():
        expected = HTSATForAudioClassification.from_pretrained(tagger).eval()(torch.from_numpy(features)).logits
    np.testing.assert_allclose(clip_logits, expected.numpy(), rtol=0, atol=1e-4)

    code, out, err = run(
        capsys, "export-onnx", tagger, tmp_path / "unverified.onnx", "--no-verify", "--exporter", "torchscript"
    )
    assert code == 0, err
    assert "max abs difference" not in out and "-> logits" in out

    code, _, err = run(capsys, "export-onnx", tmp_path / "no-model", tmp_path / "x.onnx")
    assert code == 2 and "no-model" in err


def test_card(capsys, tagger, tmp_path):
    metrics = tmp_path / "eval_results.json"
    metrics.write_text(json.dumps({"epoch": 5.0, "eval_mAP": 0.42, "eval_mAUC": 0.9, "eval_loss": 0.1}))
    code, out, err = run(
        capsys,
        "card",
        tagger,
        "--repo-id",
        "me/tagger",
        "--dataset",
        "agkphysics/AudioSet",
        "--dataset",
        "extra/set",
        "--metrics-json",
        metrics,
        "--base-model",
        "me/base",
        "--dataset-split",
        "eval",
    )
    assert code == 0, err
    assert str(tagger / "README.md") in out
    card = ModelCard.load(tagger / "README.md")
    assert card.data.datasets == ["agkphysics/AudioSet", "extra/set"] and card.data.base_model == "me/base"
    assert {(r.metric_type, r.metric_value, r.dataset_split) for r in card.data.eval_results} == {
        ("map", 0.42, "eval"),
        ("roc_auc", 0.9, "eval"),
    }
    assert 'model="me/tagger"' in card.text

    code, _, err = run(capsys, "card", tagger, "--metrics-json", tmp_path / "absent.json")
    assert code == 2 and "absent.json" in err


def test_convert_is_unchanged(capsys, tmp_path):
    checkpoint = require_shared("reference/tiny-esc50.ckpt")
    code, out, err = run(
        capsys,
        "convert",
        checkpoint,
        tmp_path / "esc50",
        "--sample-rate",
        32000,
        "--hop-length",
        320,
        "--problem-type",
        "single_label_classification",
        "--pad-mode",
        "repeat",
    )
    assert code == 0, err
    assert "wrote" in out and (tmp_path / "esc50" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "esc50" / "config.json").read_text())["problem_type"] == "single_label_classification"
