"""The `htsat-hf` command line on tiny saved models and generated audio files: predict (long, resampled, stereo,
unreadable files; folders and list files; json/table/tsv; single- and multi-label scores; class maps), average,
export-onnx, card, convert, and the error contract of every command: bad input is one line
`htsat-hf COMMAND: error: MESSAGE` on stderr and exit status 2, never a traceback; options are checked up front."""

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
from htsat_hf.errors import InputError, error_line
from htsat_hf.engine import predict_files
from htsat_hf.predict import TSV_COLUMNS, load_predictor, predict_file
from htsat_hf.sed.windows import sliding_window_scores
from htsat_hf.sed.postprocessing import load_class_map

from conftest import SHORT_CLIP_CONFIGS, require_shared, tiny_config

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
    capsys.readouterr()  # the test's own set-up (transformers' progress bar while saving a model) is not the command's
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@torch.no_grad()
def direct_clip_logits(model_dir, path):
    """Clip logits of a file of at most 10 s at the model's rate, computed without the CLI's code path: the clip
    handled as the model was trained (the extractor's defaults: padded to 10 s by its pad_mode)."""
    waveform, rate = soundfile.read(path, dtype="float32")
    extractor = HTSATFeatureExtractor.from_pretrained(model_dir)
    features = extractor(waveform, sampling_rate=rate, return_tensors="pt")["input_features"]
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
    code, out, err = run(
        capsys, "predict", audio["bad"], audio["clip"], audio["tiny"], "--model", tagger, "--format", "json"
    )
    assert code == 1
    bad_line, tiny_line = err.splitlines()  # one line per file that could not be used
    assert bad_line.startswith(f"htsat-hf predict: error: {audio['bad']}: cannot decode audio")
    assert tiny_line.startswith(f"htsat-hf predict: error: {audio['tiny']}: 50.0 ms of audio, too short for detection")
    assert [file_name(r["file"]) for r in json.loads(out)] == ["clip.wav"]  # the readable file is still reported

    # A path that does not exist is a typo in the command: it stops everything before the model loads.
    missing = tmp_path / "missing.wav"
    code, out, err = one_line_error(capsys, "predict", audio["clip"], missing, "--model", tagger)
    assert code == 2 and out == "" and err == f"htsat-hf predict: error: {missing}: no such file or folder"


def one_line_error(capsys, *argv):
    """Run a command that must fail on bad input: status 2 and exactly one line on stderr, the contract of every
    command (bad arguments exit through argparse's SystemExit, the rest return)."""
    command = str(argv[0])
    capsys.readouterr()  # as in `run`
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.startswith(f"htsat-hf {command}: error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err.rstrip("\n")


def test_predict_takes_folders_and_list_files(capsys, tagger, audio, tmp_path):
    folder = tmp_path / "recordings"
    folder.mkdir()
    shutil.copy(audio["clip"], folder / "LOUD.WAV")  # extensions are matched whatever their case
    shutil.copy(audio["stereo16k"], folder / "quiet.flac")
    (folder / "notes.txt").write_text("not audio, and not listed\n")
    listing = tmp_path / "batch.txt"
    listing.write_text(f"# files to tag\n\n{audio['long']}\n")
    code, out, err = run(capsys, "predict", folder, listing, "--model", tagger, "--format", "json")
    assert code == 0, err
    assert [file_name(r["file"]) for r in json.loads(out)] == ["LOUD.WAV", "quiet.flac", "long.wav"]

    listing.write_text("absent.wav\n")
    _, out, err = one_line_error(capsys, "predict", listing, "--model", tagger)
    assert out == "" and err.endswith(f"{listing}, line 1: {tmp_path / 'absent.wav'} does not exist")


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--batch-size", "0", "argument --batch-size: must be >= 1, got 0"),
        ("--batch-size", "two", "argument --batch-size: must be a whole number, got 'two'"),
        ("--top-k", "-1", "argument --top-k: must be >= 0, got -1"),
        ("--median-filter", "-0.5", "argument --median-filter: must be a number of seconds >= 0, got -0.5"),
        ("--threshold", "nan", "argument --threshold: must be a finite number or a thresholds file, got nan"),
        ("--threshold", "2", "threshold: the threshold must be a probability between 0 and 1, got 2"),
    ],
)
def test_predict_options_are_checked_before_the_audio(capsys, tagger, audio, option, value, message):
    _, out, err = one_line_error(capsys, "predict", audio["clip"], "--model", tagger, option, value)
    # The option is named, not blamed on the audio file.
    assert err == f"htsat-hf predict: error: {message}" and "clip.wav" not in err and out == ""


def test_predict_library_checks_options_before_reading_the_file(tagger, audio):
    model, extractor = load_predictor(tagger)
    with pytest.raises(InputError, match=r"^batch_size must be a whole number >= 1, got 0$"):
        predict_file(model, extractor, audio["bad"], batch_size=0)  # the option, not the undecodable file
    with pytest.raises(InputError, match=r"^median_filter_seconds must be a number of seconds >= 0"):
        predict_file(model, extractor, audio["clip"], median_filter_seconds=float("nan"))
    with pytest.raises(InputError, match="a threshold must be a finite number"):
        predict_file(model, extractor, audio["clip"], threshold=float("inf"))


def test_predict_thresholds_come_from_resolve_thresholds(capsys, tagger, audio, tmp_path):
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps({"dog": 0.9999, "cat": 0.0, "siren": 0.9999}))
    code, out, err = run(capsys, "predict", audio["clip"], "--model", tagger, "--threshold", thresholds,
                         "--format", "json")
    assert code == 0, err
    (result,) = json.loads(out)
    assert {e["label"] for e in result["events"]} == {"cat"}  # per-class thresholds from the file

    thresholds.write_text(json.dumps({"dog": 0.5}))
    _, _, err = one_line_error(capsys, "predict", audio["clip"], "--model", tagger, "--threshold", thresholds)
    assert "thresholds do not match the classes: missing for ['cat', 'siren']" in err


# ----------------------------------------------------------------------------------------------------------------
# Model folders: every problem is one line naming the folder or file
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def broken_models(tmp_path, tagger):
    """Model folders with one thing wrong each, and a regular file."""
    folders = {}
    truncated = tmp_path / "truncated"
    shutil.copytree(tagger, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    folders["truncated"] = (truncated, f"{weights}: cannot read the weights, the file is truncated")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tagger / "config.json", pickled)
    torch.save(HTSATForAudioClassification.from_pretrained(tagger).state_dict(), pickled / "pytorch_model.bin")
    folders["pickled"] = (pickled, f"{pickled / 'pytorch_model.bin'}: pickled PyTorch weights are not loaded")
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    folders["no_config"] = (no_config, f"{no_config}: not a saved model folder (no config.json)")
    folders["typo"] = (tmp_path / "typo" / "model", f"{tmp_path / 'typo' / 'model'}: no such model folder")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a model")
    folders["file"] = (a_file, f"{a_file}: is a file, not a saved model folder")
    return folders


@pytest.mark.parametrize("case", ["truncated", "pickled", "no_config", "typo", "file"])
def test_predict_names_what_is_wrong_with_the_model_folder(capsys, audio, broken_models, case):
    folder, message = broken_models[case]
    _, _, err = one_line_error(capsys, "predict", audio["clip"], "--model", folder)
    assert err.startswith(f"htsat-hf predict: error: {message}")
    assert "Repo id must be in the form" not in err


@pytest.mark.parametrize("case", ["truncated", "pickled", "typo"])
def test_average_export_and_card_name_what_is_wrong_with_the_model_folder(capsys, tmp_path, broken_models, case):
    folder, message = broken_models[case]
    _, _, err = one_line_error(capsys, "average", folder, folder, "--output", tmp_path / "avg")
    assert err.startswith(f"htsat-hf average: error: {message}")
    _, _, err = one_line_error(capsys, "export-onnx", folder, tmp_path / "x.onnx", "--no-verify")
    assert err.startswith(f"htsat-hf export-onnx: error: {message}")
    if case == "truncated":
        _, _, err = one_line_error(capsys, "card", folder)
        assert err.startswith(f"htsat-hf card: error: {message}")


def test_a_feature_extractor_that_differs_from_the_config_is_refused(capsys, tmp_path, audio):
    model_dir = save_model(tmp_path / "mismatched")
    HTSATFeatureExtractor(hop_length=160, f_max=8000.0).save_pretrained(model_dir)
    _, _, err = one_line_error(capsys, "predict", audio["clip"], "--model", model_dir)
    assert err.startswith(f"htsat-hf predict: error: {model_dir}: the feature extractor does not match")
    assert "hop_length: config 320, feature extractor 160" in err
    assert "f_max: config 14000.0, feature extractor 8000.0" in err
    _, _, err = one_line_error(capsys, "average", model_dir, model_dir, "--output", tmp_path / "avg")
    assert "hop_length: config 320, feature extractor 160" in err and not (tmp_path / "avg").exists()


@pytest.mark.parametrize("overrides", SHORT_CLIP_CONFIGS.values(), ids=SHORT_CLIP_CONFIGS.keys())
def test_a_model_that_reads_less_than_10_s(capsys, tmp_path, audio, overrides):
    """A valid config whose model reads fewer frames than a 10 s clip gives: saved with the extractor from_config
    builds (or none), predict runs; saved with a 10 s extractor, every entry point refuses it in one line before
    any audio is read (it failed in the model with a ValueError traceback, which skip_errors did not catch)."""
    torch.manual_seed(0)
    config = tiny_config(num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), **overrides)
    model_dir = tmp_path / "model"
    HTSATForAudioClassification(config).save_pretrained(model_dir)
    code, out, err = run(capsys, "predict", audio["long"], audio["clip"], "--model", model_dir, "--format", "json")
    assert code == 0 and err == "", err
    assert [file_name(r["file"]) for r in json.loads(out)] == ["long.wav", "clip.wav"]

    ten_seconds = HTSATFeatureExtractor(feature_size=config.num_mel_bins, hop_length=config.hop_length)
    ten_seconds.save_pretrained(model_dir)
    frames = 1 + 10 * config.sampling_rate // config.hop_length
    refusal = f"10 s clips give {frames} log-mel frames, but the model reads at most {config.max_frames}"
    for argv in (["--format", "json"], ["--output", tmp_path / "tags.jsonl", "--num-workers", 1]):
        _, out, err = one_line_error(capsys, "predict", audio["clip"], "--model", model_dir, *argv)
        assert err.startswith(f"htsat-hf predict: error: {model_dir}: the feature extractor's") and refusal in err
    assert not (tmp_path / "tags.jsonl").exists()
    model = HTSATForSoundEventDetection(config).eval()
    with pytest.raises(InputError, match=refusal):
        predict_file(model, ten_seconds, audio["bad"])  # refused before the (undecodable) file is read
    with pytest.raises(InputError, match=refusal):
        predict_files([audio["clip"]], model, ten_seconds, skip_errors=True)


def test_average_refuses_an_output_folder_under_a_file_before_loading(capsys, tmp_path, tagger):
    blocker = tmp_path / "results.txt"
    blocker.write_text("a file where a folder would go")
    _, _, err = one_line_error(capsys, "average", tagger, tmp_path / "missing-model", "--output", blocker / "avg")
    assert err == f"htsat-hf average: error: {blocker / 'avg'}: cannot create this folder, {blocker} is a file"


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


def require_onnxruntime():
    """onnxruntime, or a skip where it is not installed (a failure under CI, which installs it)."""
    try:
        import onnxruntime
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise
        pytest.skip("onnxruntime is not installed (pip install onnx onnxruntime)")
    return onnxruntime


def test_export_onnx(capsys, tagger, tmp_path):
    onnxruntime = require_onnxruntime()
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


def test_convert_a_text_file_renamed_ckpt(capsys, tmp_path):
    checkpoint = tmp_path / "notes.ckpt"
    checkpoint.write_text("hello, these are notes\n")  # read as pickle opcodes this raised a bare KeyError
    _, out, err = one_line_error(
        capsys, "convert", checkpoint, tmp_path / "out", "--sample-rate", 32000, "--hop-length", 320
    )
    assert err.startswith(f"htsat-hf convert: error: {checkpoint}: cannot be read as a PyTorch checkpoint")
    assert out == "" and not (tmp_path / "out").exists()


def test_convert_refuses_an_output_folder_under_a_file_before_converting(capsys, tmp_path):
    blocker = tmp_path / "model.txt"
    blocker.write_text("a file")
    checkpoint = tmp_path / "notes.ckpt"
    checkpoint.write_text("not a checkpoint either")  # the output is checked first: its error comes first
    _, _, err = one_line_error(
        capsys, "convert", checkpoint, blocker / "converted", "--sample-rate", 32000, "--hop-length", 320
    )
    assert err == f"htsat-hf convert: error: {blocker / 'converted'}: cannot create this folder, {blocker} is a file"


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--sample-rate", "0", "argument --sample-rate: must be >= 1, got 0"),
        ("--fmax", "-1", "argument --fmax: must be a frequency in Hz >= 0, got -1"),
        ("--max-length-seconds", "0", "argument --max-length-seconds: must be a number of seconds > 0, got 0"),
    ],
)
def test_convert_options_are_checked_up_front(capsys, tmp_path, option, value, message):
    arguments = {"--sample-rate": "32000", "--hop-length": "320", option: value}
    flags = [item for pair in arguments.items() for item in pair]
    _, _, err = one_line_error(capsys, "convert", tmp_path / "absent.ckpt", tmp_path / "out", *flags)
    assert err == f"htsat-hf convert: error: {message}"


def test_convert_names_a_tensor_of_the_wrong_shape(capsys, tmp_path):
    original = torch.load(require_shared("reference/tiny-esc50.ckpt"), map_location="cpu", weights_only=False)
    state = original["state_dict"] if "state_dict" in original else original
    key = next(k for k in state if k.endswith("layers.1.blocks.0.mlp.fc2.weight"))
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 3)
    checkpoint = tmp_path / "reshaped.ckpt"
    torch.save({"state_dict": state}, checkpoint)
    _, _, err = one_line_error(
        capsys, "convert", checkpoint, tmp_path / "out", "--sample-rate", 32000, "--hop-length", 320
    )
    assert "tensors of the wrong shape: layers.1.blocks.0.mlp.fc2.weight" in err and "needs" in err
    assert not (tmp_path / "out" / "model.safetensors").exists()

    key = next(k for k in state if k.endswith("patch_embed.proj.weight"))
    state[key] = state[key].flatten()  # a tensor the architecture is read from
    torch.save({"state_dict": state}, checkpoint)
    _, _, err = one_line_error(
        capsys, "convert", checkpoint, tmp_path / "out", "--sample-rate", 32000, "--hop-length", 320
    )
    assert "tensor patch_embed.proj.weight has shape" in err and "4 dimensions" in err


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


def test_every_error_type_of_the_commands_is_an_input_error():
    from htsat_hf.convert_htsat_original_checkpoint import CheckpointError
    from htsat_hf.onnx_export import OnnxExportError

    assert issubclass(CheckpointError, InputError) and issubclass(OnnxExportError, InputError)
    assert issubclass(InputError, ValueError)


class _BrokenClips(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise InputError(f"clip{index}.wav: cannot decode audio (soundfile: Format not recognised)")


def test_error_line_keeps_the_message_of_a_dataloader_worker():
    # A worker's error comes back with its traceback inside the message; the one line is the original message.
    loader = torch.utils.data.DataLoader(_BrokenClips(), num_workers=1)
    with pytest.raises(InputError) as error:
        next(iter(loader))
    assert "\n" in str(error.value)
    assert error_line(error.value) == "clip0.wav: cannot decode audio (soundfile: Format not recognised)"
    assert error_line(OSError("first line\nsecond line")) == "first line second line"


def test_ctrl_c_ends_a_command_with_one_line(capsys, tagger, audio, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("htsat_hf.engine.InferenceEngine._forward", interrupted)
    code, out, err = run(capsys, "predict", audio["clip"], "--model", tagger)
    assert code == 130 and err == "htsat-hf predict: interrupted\n" and out == ""


def test_average_refuses_to_overwrite_one_of_its_inputs(capsys, tmp_path, tagger):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tagger, copy)
    before = (copy / "model.safetensors").read_bytes()
    _, _, err = one_line_error(capsys, "average", copy, tagger, "--output", copy)
    assert "the output folder is one of the models to average" in err
    assert (copy / "model.safetensors").read_bytes() == before


# ----------------------------------------------------------------------------------------------------------------
# Re-runs into used output locations: refused, or replaced as a whole with --overwrite, never mixed
# ----------------------------------------------------------------------------------------------------------------

CONVERT_ESC50 = ["--sample-rate", 32000, "--hop-length", 320, "--problem-type", "single_label_classification",
                 "--pad-mode", "repeat"]


def test_convert_refuses_a_used_output_folder_and_overwrite_replaces_it_as_a_whole(capsys, tmp_path):
    checkpoint = require_shared("reference/tiny-esc50.ckpt")
    out = tmp_path / "model"
    out.mkdir()
    (out / "pytorch_model.bin").write_bytes(b"another model's weights")  # would stay beside the new files
    _, out_text, err = one_line_error(capsys, "convert", checkpoint, out, *CONVERT_ESC50)
    assert err == (f"htsat-hf convert: error: {out}: the folder is not empty; write to a new or empty folder, or "
                   "replace it as a whole with overwrite=True (--overwrite)")
    assert sorted(path.name for path in out.iterdir()) == ["pytorch_model.bin"] and out_text == ""

    code, _, err = run(capsys, "convert", checkpoint, out, *CONVERT_ESC50, "--overwrite")
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # no staging folder left


def test_convert_refuses_an_output_folder_that_holds_its_checkpoint_or_labels(capsys, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    checkpoint = out / "tiny-esc50.ckpt"
    shutil.copy(require_shared("reference/tiny-esc50.ckpt"), checkpoint)
    _, _, err = one_line_error(capsys, "convert", checkpoint, out, *CONVERT_ESC50, "--overwrite")
    assert err.startswith(f"htsat-hf convert: error: {out}: contains the input {checkpoint}")
    assert checkpoint.is_file() and sorted(path.name for path in out.iterdir()) == ["tiny-esc50.ckpt"]

    labels = tmp_path / "labels" / "labels.csv"
    labels.parent.mkdir()
    labels.write_text("index,mid,display_name\n")
    _, _, err = one_line_error(capsys, "convert", require_shared("reference/tiny-esc50.ckpt"), labels.parent,
                               "--sample-rate", 32000, "--hop-length", 320, "--labels", labels, "--overwrite")
    assert err.startswith(f"htsat-hf convert: error: {labels.parent}: contains the input {labels}")
    assert labels.is_file()


def test_convert_that_fails_while_saving_leaves_the_old_folder_as_it_was(tmp_path, monkeypatch):
    from htsat_hf.convert_htsat_original_checkpoint import CheckpointError, convert_checkpoint

    out = tmp_path / "model"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the previous model")
    monkeypatch.setattr(HTSATFeatureExtractor, "save_pretrained",
                        lambda self, *args, **kwargs: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint(require_shared("reference/tiny-esc50.ckpt"), out, 32000, 320, overwrite=True)
    assert sorted(path.name for path in out.iterdir()) == ["model.safetensors"]  # not half the new model
    assert (out / "model.safetensors").read_bytes() == b"the previous model"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]
    with pytest.raises(CheckpointError, match="the folder is not empty"):
        convert_checkpoint(require_shared("reference/tiny-esc50.ckpt"), out, 32000, 320)


def test_average_refuses_a_used_output_folder_and_one_holding_its_inputs(capsys, tmp_path):
    run_dir = tmp_path / "run"
    first = save_model(run_dir / "checkpoint-1", seed=1)
    second = save_model(run_dir / "checkpoint-2", seed=2)
    # The training run's folder holds the checkpoints: averaging into it would mix the average with the run.
    _, _, err = one_line_error(capsys, "average", first, second, "--output", run_dir, "--overwrite")
    assert err.startswith(f"htsat-hf average: error: {run_dir}: contains the input {first}")
    _, _, err = one_line_error(capsys, "average", first, second, "--output", first / "avg")
    assert err.startswith(f"htsat-hf average: error: {first / 'avg'}: lies inside the input {first}")
    assert sorted(path.name for path in run_dir.iterdir()) == ["checkpoint-1", "checkpoint-2"]

    out = tmp_path / "avg"
    out.mkdir()
    (out / "pytorch_model.bin").write_bytes(b"another model's weights")
    _, _, err = one_line_error(capsys, "average", first, second, "--output", out)
    assert err == (f"htsat-hf average: error: {out}: the folder is not empty; write to a new or empty folder, or "
                   "replace it as a whole with overwrite=True (--overwrite)")
    assert sorted(path.name for path in out.iterdir()) == ["pytorch_model.bin"]
    code, out_text, err = run(capsys, "average", first, second, "--output", out, "--overwrite")
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["avg", "run"]  # no staging folder left


def test_export_onnx_refuses_an_existing_file_and_the_model_s_own_files(capsys, tagger, tmp_path):
    output = tmp_path / "tagger.onnx"
    output.write_bytes(b"an earlier export")
    _, _, err = one_line_error(capsys, "export-onnx", tagger, output)
    assert err == (f"htsat-hf export-onnx: error: {output}: the file exists; write to a new path, or replace it with "
                   "overwrite=True (--overwrite)")
    assert output.read_bytes() == b"an earlier export"

    model = tmp_path / "model"
    shutil.copytree(tagger, model)
    for name in ("model.safetensors", "config.json"):
        before = (model / name).read_bytes()
        _, _, err = one_line_error(capsys, "export-onnx", model, model / name, "--overwrite")
        assert err == (f"htsat-hf export-onnx: error: {model / name}: is the model's own file {model / name}; "
                       "write the ONNX file to another path")
        assert (model / name).read_bytes() == before
    _, _, err = one_line_error(capsys, "export-onnx", model, tmp_path, "--overwrite")
    assert err == f"htsat-hf export-onnx: error: {tmp_path}: is a folder; give the path of the .onnx file to write"


def test_export_onnx_overwrite_replaces_the_file_once_verified(capsys, tagger, tmp_path):
    require_onnxruntime()
    output = tmp_path / "tagger.onnx"
    output.write_bytes(b"an earlier export")
    code, out, err = run(capsys, "export-onnx", tagger, output, "--exporter", "torchscript", "--overwrite")
    assert code == 0, err
    import onnx

    onnx.checker.check_model(onnx.load(str(output)))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tagger.onnx"]  # no temporary file left


# ----------------------------------------------------------------------------------------------------------------
# average and convert: their inputs named plainly
# ----------------------------------------------------------------------------------------------------------------


def test_average_refuses_the_same_model_folder_twice(capsys, tagger, tmp_path):
    """`average A A B` averaged A twice without a word (a silently different answer), also through a symlink or `..`."""
    second = save_model(tmp_path / "second", seed=2)
    link = tmp_path / "link"
    link.symlink_to(tagger, target_is_directory=True)
    dotted = tmp_path / "second" / ".." / "second"
    for first, again in ((tagger, tagger), (tagger, link), (second, dotted)):
        _, out, err = one_line_error(capsys, "average", first, second if again != dotted else tagger, again,
                                     "--output", tmp_path / "avg")
        assert err.startswith(f"htsat-hf average: error: {again}: the same model folder as {first}, given twice")
        assert out == "" and not (tmp_path / "avg").exists()


def test_average_names_a_missing_folder_without_the_hub(capsys, tagger, tmp_path, monkeypatch):
    """A local typo (`average run/checkpoint-1 nonexist`, a valid Hub id) was looked up on huggingface.co; average
    takes saved model folders only."""
    monkeypatch.chdir(tmp_path)
    _, _, err = one_line_error(capsys, "average", tagger, "nonexist", "--output", tmp_path / "avg")
    assert err == "htsat-hf average: error: nonexist: no such model folder"
    assert not (tmp_path / "avg").exists()


def test_convert_names_a_folder_given_as_the_checkpoint(capsys, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    _, out, err = one_line_error(capsys, "convert", folder, tmp_path / "out", "--sample-rate", 32000, "--hop-length",
                                 320)
    assert err == (f"htsat-hf convert: error: {folder}: is a folder, not a checkpoint file (give the .ckpt file "
                   "inside it)")
    assert out == "" and not (tmp_path / "out").exists()


def test_convert_stopped_by_sigterm_or_sighup_leaves_no_partial_folder(capsys, tmp_path, monkeypatch):
    """A tester's case: `kill` (or a closed terminal) while the model was being saved left `.model.partial-*` beside
    the untouched old folder (hundreds of MB with real models); it now cleans up as Ctrl-C does, with one line."""
    import signal

    out = tmp_path / "model"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the previous model")
    for signum in (signal.SIGTERM, signal.SIGHUP):
        monkeypatch.setattr(HTSATFeatureExtractor, "save_pretrained",
                            lambda self, *args, **kwargs: signal.raise_signal(signum))
        code, out_text, err = run(capsys, "convert", require_shared("reference/tiny-esc50.ckpt"), out,
                                  *CONVERT_ESC50, "--overwrite")
        assert code == 128 + signum and out_text == ""
        assert err.splitlines()[-1] == f"htsat-hf convert: stopped by {signal.Signals(signum).name}"  # after saving's bar
        assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # no staging folder left
        assert (out / "model.safetensors").read_bytes() == b"the previous model"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are the caller's again


def test_outputs_that_cannot_be_replaced_are_refused_before_any_work(capsys, tmp_path, monkeypatch):
    """A tester's cases: `convert CKPT .` ran the whole conversion and then failed with `[Errno 16] Device or resource
    busy`; `--overwrite` into the home folder deleted it."""
    checkpoint = require_shared("reference/tiny-esc50.ckpt")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for output in (".", "./", ".."):
        _, _, err = one_line_error(capsys, "convert", checkpoint, output, *CONVERT_ESC50)
        assert err == f"htsat-hf convert: error: {output.rstrip('/') or '.'}: is the current folder or contains it; " \
                      "write the output to a new folder"
    _, _, err = one_line_error(capsys, "convert", checkpoint, "", *CONVERT_ESC50)
    assert err == "htsat-hf convert: error: the output folder's name is empty; give the folder to write"
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    (home / "docs" / "thesis.txt").write_text("precious")
    monkeypatch.setenv("HOME", str(home))
    _, _, err = one_line_error(capsys, "convert", checkpoint, home, *CONVERT_ESC50, "--overwrite")
    assert err == f"htsat-hf convert: error: {home}: is the home folder; write the output to a new folder inside it"
    assert (home / "docs" / "thesis.txt").read_text() == "precious"
    assert sorted(path.name for path in work.iterdir()) == []


def test_convert_into_a_symbolic_link_writes_where_it_points(capsys, tmp_path):
    """A tester's case: a link given as the output folder was replaced by a folder of its own (the link gone, the
    model not where it pointed)."""
    target = tmp_path / "models" / "esc50"
    target.mkdir(parents=True)
    link = tmp_path / "latest"
    link.symlink_to(target)
    code, _, err = run(capsys, "convert", require_shared("reference/tiny-esc50.ckpt"), link, *CONVERT_ESC50)
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert (target / "model.safetensors").is_file()
