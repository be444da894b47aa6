"""run_sed.py end to end: detection over folders, list files and `datasets` splits with the files it writes, scoring
against ground truth (and scoring existing detections, including the DCASE baseline's on DESED validation), clear
errors for bad inputs, the shipped DESED configs, and strong-label fine-tuning of a tiny model."""

import importlib.util
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
from conftest import REPO_ROOT, require_shared, tiny_config
from sed_scores_eval.base_modules.detection import scores_to_event_list
from sed_scores_eval.base_modules.io import read_ground_truth_events, read_sed_scores
from test_sed_windows import RATE, loudness_model, scene
from transformers import TrainingArguments

from htsat_hf import HTSATFeatureExtractor, HTSATForSoundEventDetection
from htsat_hf.synthetic import make_classification_folder, make_detection_folder

CLASSES = ("tone", "chirp", "bursts")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _load_script():
    spec = importlib.util.spec_from_file_location("run_sed", REPO_ROOT / "run_sed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RUN_SED = _load_script()
DetectionArguments, EvaluationArguments = RUN_SED.DetectionArguments, RUN_SED.EvaluationArguments
ModelArguments, StrongLabelArguments, run = RUN_SED.ModelArguments, RUN_SED.StrongLabelArguments, RUN_SED.run


def run_sed(*args) -> int:
    return RUN_SED.main([str(arg) for arg in args])


def quiet(output_dir) -> list:
    return ["--output_dir", output_dir, "--disable_tqdm", "true", "--report_to", "none"]


def save_tiny_model(directory: Path, labels=CLASSES, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = tiny_config(num_labels=len(labels), id2label=dict(enumerate(labels)),
                         label2id={label: i for i, label in enumerate(labels)})
    HTSATForSoundEventDetection(config).save_pretrained(directory)
    HTSATFeatureExtractor.from_config(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-sed"))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """3 scenes of 10 s with 3 events each of tone/chirp/bursts, DESED layout."""
    return make_detection_folder(tmp_path_factory.mktemp("scenes"), num_files=3, classes=CLASSES)


@pytest.fixture(scope="module")
def short_scenes(tmp_path_factory):
    """2 scenes of 4 s, for the error cases."""
    return make_detection_folder(tmp_path_factory.mktemp("short"), num_files=2, seconds=4.0, classes=CLASSES,
                                 events_per_file=1, seed=5)


def read_events_tsv(path) -> dict[str, list[tuple[float, float, str]]]:
    table = pd.read_csv(path, sep="\t")
    events = {}
    for row in table.itertuples():
        events.setdefault(row.filename, []).append((row.onset, row.offset, row.event_label))
    return events


def assert_same_metrics(ours, theirs, keys=("intersection_f1", "collar_event_f1", "segment_f1", "psds1", "psds2")):
    for key in keys:
        for value in ("macro_f1", "micro_f1", "psds"):
            if value in theirs[key]:
                assert ours[key][value] == pytest.approx(theirs[key][value], abs=1e-9), (key, value)
        assert ours[key]["class_wise"] == pytest.approx(theirs[key]["class_wise"], abs=1e-9), key


# -------------------------------------------------------------------------------------------------- detection runs


def test_detection_run_writes_events_scores_plots_and_metrics(tiny_dir, scenes, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_sed(
        "--model_name_or_path", tiny_dir, "--inputs", scenes / "audio", "--ground_truth", scenes / "annotations.tsv",
        "--durations", scenes / "durations.tsv", "--threshold", 0.5, "--max_plots", 2, "--threshold_sweep", 5,
        *quiet(out),
    )
    assert code == 0
    ids = ["scene_000", "scene_001", "scene_002"]

    events = pd.read_csv(out / "events.tsv", sep="\t")
    assert list(events.columns)[:4] == ["filename", "onset", "offset", "event_label"]
    assert set(events["filename"]) <= {f"{i}.wav" for i in ids}
    assert set(events["event_label"]) <= set(CLASSES)
    assert (events["onset"] < events["offset"]).all()

    scores = read_sed_scores(out / "scores")  # sed_scores_eval's own reader
    assert sorted(scores) == ids
    for table in scores.values():
        assert list(table.columns) == ["onset", "offset", *CLASSES]
        assert len(table) == 32 and table["offset"].iloc[-1] == pytest.approx(10.0)
        assert table[list(CLASSES)].to_numpy().min() >= 0 and table[list(CLASSES)].to_numpy().max() <= 1

    plots = sorted((out / "plots").iterdir())
    assert [p.name for p in plots] == ["scene_000.png", "scene_001.png"]  # --max_plots 2
    for plot in plots:
        assert plot.read_bytes()[:8] == PNG_SIGNATURE and 5_000 < plot.stat().st_size < 200_000

    durations = pd.read_csv(out / "durations.tsv", sep="\t")
    assert durations["duration"].tolist() == pytest.approx([10.0] * 3)

    metrics = json.loads((out / "metrics.json").read_text())
    truth_labels = sorted(set(pd.read_csv(scenes / "annotations.tsv", sep="\t")["event_label"]))
    assert metrics["num_files"] == 3 and metrics["classes"] == truth_labels
    for key in ("intersection_f1", "collar_event_f1", "segment_f1"):
        assert 0 <= metrics[key]["macro_f1"] <= 1
    for key in ("psds1", "psds2"):
        assert 0 <= metrics[key]["psds"] <= 1
    assert set(metrics["threshold_sweep"]) == {"num_thresholds", "psds1", "psds2"}
    assert metrics["settings"]["thresholds"] == 0.5
    printed = capsys.readouterr().out
    assert "intersection F1" in printed and "PSDS2" in printed and "5 operating points" in printed


BAND_SCENES = {  # (onset, offset, label): "low" a 500 Hz tone, "high" a 7 kHz tone; 10 s files
    "band_0.wav": [(0.8, 2.35, "low"), (3.1, 4.9, "high"), (6.05, 8.7, "low"), (7.5, 9.4, "high")],
    "band_1.wav": [(0.4, 1.9, "high"), (2.6, 5.2, "low"), (6.3, 6.95, "high")],
    "band_2.wav": [(1.7, 3.3, "low"), (4.4, 8.1, "high"), (8.6, 9.9, "low")],
}


def write_band_scenes(root: Path) -> Path:
    """DESED layout (audio/, annotations.tsv, durations.tsv) of `BAND_SCENES`."""
    (root / "audio").mkdir(parents=True)
    rows = []
    for index, (name, events) in enumerate(BAND_SCENES.items()):
        tones = [(onset, offset, 500.0 if label == "low" else 7000.0) for onset, offset, label in events]
        soundfile.write(root / "audio" / name, scene(10.0, tones, seed=index), RATE)
        rows += [(name, onset, offset, label) for onset, offset, label in events]
    pd.DataFrame(rows, columns=["filename", "onset", "offset", "event_label"]).to_csv(
        root / "annotations.tsv", sep="\t", index=False
    )
    pd.DataFrame({"filename": list(BAND_SCENES), "duration": 10.0}).to_csv(
        root / "durations.tsv", sep="\t", index=False
    )
    return root


@pytest.fixture(scope="module")
def tone_run(tmp_path_factory):
    """The loudness model (class "low": loud in the lower half of the mel bins, "high": in the upper half) on scenes
    of low and high tones, through run_sed.py's `run`."""
    root = tmp_path_factory.mktemp("tones")
    data = write_band_scenes(root / "data")
    model, extractor = loudness_model(("low", "high"))
    out = root / "out"
    summary = run(
        ModelArguments(),
        DetectionArguments(inputs=[str(data / "audio")], max_plots=1),
        EvaluationArguments(ground_truth=str(data / "annotations.tsv"), durations=str(data / "durations.tsv")),
        StrongLabelArguments(),
        TrainingArguments(output_dir=str(out), disable_tqdm=True, report_to="none"),
        model=model,
        feature_extractor=extractor,
    )
    return data, out, summary


def test_detected_events_match_the_scenes(tone_run):
    data, out, summary = tone_run
    metrics = summary["metrics"]
    assert json.loads((out / "metrics.json").read_text())["intersection_f1"] == metrics["intersection_f1"]
    assert metrics["intersection_f1"]["macro_f1"] > 0.9, metrics["intersection_f1"]
    assert metrics["segment_f1"]["macro_f1"] > 0.9, metrics["segment_f1"]
    assert metrics["psds2"]["psds"] > 0.9, metrics["psds2"]
    truth = read_events_tsv(data / "annotations.tsv")
    found = read_events_tsv(out / "events.tsv")
    step = 10.0 / 32
    for name, events in truth.items():
        assert len(found[name]) == len(events), (found[name], events)
        for (onset, offset, label), (found_onset, found_offset, found_label) in zip(sorted(events), sorted(found[name])):
            assert found_label == label
            assert abs(found_onset - onset) <= step and abs(found_offset - offset) <= step


def test_output_tables_round_trip_through_sed_scores_eval(tone_run):
    """events.tsv is what sed_scores_eval's thresholding of scores/ gives (no median filter, threshold 0.5)."""
    _, out, _ = tone_run
    detected = read_ground_truth_events(out / "events.tsv")
    from_scores = scores_to_event_list(read_sed_scores(out / "scores"), thresholds=0.5)
    assert sorted(detected) == sorted(from_scores)
    for audio_id, events in from_scores.items():
        assert len(events) == len(detected[audio_id]) > 0
        for ours, theirs in zip(sorted(detected[audio_id]), sorted(events)):
            assert ours[2] == theirs[2] and ours[0] == pytest.approx(theirs[0]) and ours[1] == pytest.approx(theirs[1])


def test_score_only_on_written_scores_gives_the_run_metrics(tone_run, tmp_path):
    data, out, summary = tone_run
    code = run_sed(
        "--score_only", "--predictions", out / "scores", "--ground_truth", data / "annotations.tsv",
        "--durations", data / "durations.tsv", *quiet(tmp_path),
    )
    assert code == 0
    rescored = json.loads((tmp_path / "metrics.json").read_text())
    assert_same_metrics(rescored, summary["metrics"])
    rewritten, written = read_events_tsv(tmp_path / "events.tsv"), read_events_tsv(out / "events.tsv")
    assert sorted(rewritten) == sorted(written)
    for name, events in written.items():
        assert [label for _, _, label in rewritten[name]] == [label for _, _, label in events]
        np.testing.assert_allclose([e[:2] for e in rewritten[name]], [e[:2] for e in events], atol=1e-6)

    # The same detections as an events file, and as operating points (one file per threshold).
    points = tmp_path / "points"
    points.mkdir()
    events = pd.read_csv(out / "events.tsv", sep="\t")
    for threshold in (0.3, 0.5, 0.7):
        events.to_csv(points / f"predictions_th_{threshold:.2f}.tsv", sep="\t", index=False)
    for predictions in (out / "events.tsv", points):
        target = tmp_path / f"scored-{predictions.stem}"
        code = run_sed("--score_only", "--predictions", predictions, "--psds_predictions", points,
                       "--ground_truth", data / "annotations.tsv", "--durations", data / "durations.tsv",
                       *quiet(target))
        assert code == 0
        again = json.loads((target / "metrics.json").read_text())
        assert_same_metrics(again, summary["metrics"], ("intersection_f1", "collar_event_f1", "segment_f1"))
        assert again["predictions"]["kind"] == ("events" if predictions.is_file() else "operating_points")


def test_score_only_reproduces_the_dcase_baseline_on_desed(tmp_path, capsys):
    root = require_shared("desed-baseline/validation.tsv").parent
    student = root / "metrics_test" / "student"
    started = time.perf_counter()
    code = run_sed(
        "--score_only", "--predictions", student / "predictions0.5.csv",
        "--psds_predictions", student / "predictions_operating_points",
        "--ground_truth", root / "validation.tsv", "--durations", root / "validation_durations.tsv", *quiet(tmp_path),
    )
    elapsed = time.perf_counter() - started
    assert code == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["num_files"] == 1168 and len(m["classes"]) == 10
    assert m["intersection_f1"]["macro_f1"] == pytest.approx(0.6374, abs=1e-4)
    assert m["collar_event_f1"]["macro_f1"] == pytest.approx(0.3987, abs=1e-4)
    assert m["collar_event_f1"]["micro_f1"] == pytest.approx(0.4095, abs=1e-4)
    assert m["segment_f1"]["macro_f1"] == pytest.approx(0.6935, abs=1e-4)
    assert m["segment_f1"]["micro_f1"] == pytest.approx(0.7547, abs=1e-4)
    assert m["psds1"]["psds"] == pytest.approx(0.334, abs=1e-3)
    assert m["psds2"]["psds"] == pytest.approx(0.528, abs=1e-3)
    printed = capsys.readouterr().out
    for text in ("63.74 %", "39.87 %", "40.95 %", "69.35 %", "75.47 %", "0.334", "0.528"):
        assert text in printed
    with capsys.disabled():
        print(f"\n--score_only on DESED validation (1168 files, 50 operating points): {elapsed:.0f} s")


def test_score_only_operating_points_need_the_f1_threshold(tmp_path, capsys):
    root = require_shared("desed-baseline/validation.tsv").parent
    code = run_sed(
        "--score_only", "--predictions", root / "metrics_test" / "student" / "predictions_operating_points",
        "--ground_truth", root / "validation.tsv", "--durations", root / "validation_durations.tsv",
        *quiet(tmp_path),
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "no detections at threshold 0.5" in error and "predictions_operating_points" in error


def test_list_file_and_json_config(short_scenes, tiny_dir, tmp_path):
    listing = tmp_path / "files.txt"
    listing.write_text(f"# two scenes\n{short_scenes / 'audio' / 'scene_001.wav'}\n\n../{tmp_path.name}/x.wav\n")
    soundfile.write(tmp_path / "x.wav", np.zeros(RATE, np.float32) + 0.01, RATE)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "model_name_or_path": str(tiny_dir), "inputs": [str(listing)], "plot": False, "hop_seconds": 2.0,
        "output_dir": str(tmp_path / "out"), "disable_tqdm": True, "report_to": "none",
    }))
    assert run_sed(config) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "scores").iterdir()) == ["scene_001.tsv", "x.tsv"]
    assert not (tmp_path / "out" / "plots").exists() or not any((tmp_path / "out" / "plots").iterdir())
    one_second = pd.read_csv(tmp_path / "out" / "scores" / "x.tsv", sep="\t")
    assert len(one_second) == 32 and one_second["offset"].iloc[-1] == pytest.approx(1.0)


def test_dataset_split_input(tiny_dir, tmp_path):
    folder = make_classification_folder(tmp_path / "clips", classes=("tone", "hum"), clips_per_class=1, seconds=1.5)
    code = run_sed("--model_name_or_path", tiny_dir, "--dataset_name", folder, "--split", "train",
                   "--audio_column_name", "audio", "--plot", "false", *quiet(tmp_path / "out"))
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out" / "scores").iterdir()) == ["hum_0.tsv", "tone_0.tsv"]
    assert pd.read_csv(tmp_path / "out" / "durations.tsv", sep="\t")["duration"].tolist() == pytest.approx([1.5, 1.5])


def test_short_audio_pad_mode_keeps_the_ten_second_grid(tmp_path):
    """'pad' (the original DESED protocol) zero-pads a 4 s file to 10 s: steps of 312.5 ms, only those in the audio
    kept; 'stretch' spreads the 32 steps over the 4 s."""
    model, extractor = loudness_model()
    folder = tmp_path / "audio"
    folder.mkdir()
    t = np.arange(4 * RATE) / RATE
    wave = np.where((t >= 1.0) & (t < 2.0), 0.3 * np.sin(2 * np.pi * 500 * t), 0.001).astype(np.float32)
    soundfile.write(folder / "four.wav", wave, RATE)
    for mode, steps in (("pad", math.ceil(4 / 0.3125)), ("stretch", 32)):
        out = tmp_path / mode
        run(ModelArguments(), DetectionArguments(inputs=[str(folder)], short_audio=mode, plot=False),
            EvaluationArguments(), StrongLabelArguments(), TrainingArguments(output_dir=str(out), disable_tqdm=True),
            model=model, feature_extractor=extractor)
        table = pd.read_csv(out / "scores" / "four.tsv", sep="\t")
        assert len(table) == steps and table["offset"].iloc[-1] == pytest.approx(4.0)
        (onset, offset, _), = read_events_tsv(out / "events.tsv")["four.wav"]
        step = table["offset"].iloc[0]
        assert abs(onset - 1.0) <= step and abs(offset - 2.0) <= step


# ------------------------------------------------------------------------------------------------------- bad inputs


def _ground_truth_with(tmp_path, scenes, *rows) -> Path:
    table = pd.read_csv(scenes / "annotations.tsv", sep="\t", dtype=str)
    extra = pd.DataFrame([dict(zip(table.columns, row)) for row in rows], dtype=str)
    path = tmp_path / "ground_truth.tsv"
    pd.concat([table, extra]).to_csv(path, sep="\t", index=False)
    return path


def _run_failing(capsys, *args) -> str:
    assert run_sed(*args) == 2
    return capsys.readouterr().err


def test_unknown_label_in_ground_truth(tiny_dir, short_scenes, tmp_path, capsys):
    truth = _ground_truth_with(tmp_path, short_scenes, ("scene_000.wav", "1.0", "2.0", "Dog"))
    error = _run_failing(capsys, "--model_name_or_path", tiny_dir, "--inputs", short_scenes / "audio",
                         "--ground_truth", truth, *quiet(tmp_path / "out"))
    assert str(truth) in error and "line 4" in error and "unknown event label" in error and "Dog" in error
    assert not (tmp_path / "out" / "events.tsv").exists()  # checked before running the model


def test_onset_after_offset_in_ground_truth(tiny_dir, short_scenes, tmp_path, capsys):
    truth = _ground_truth_with(tmp_path, short_scenes, ("scene_001.wav", "3.0", "2.5", "tone"))
    error = _run_failing(capsys, "--model_name_or_path", tiny_dir, "--inputs", short_scenes / "audio",
                         "--ground_truth", truth, *quiet(tmp_path / "out"))
    assert str(truth) in error and "line 4" in error and "onset after offset" in error


def test_ground_truth_file_missing_from_the_folder(tiny_dir, short_scenes, tmp_path, capsys, caplog):
    truth = _ground_truth_with(tmp_path, short_scenes, ("ghost.wav", "1.0", "2.0", "tone"))
    common = ["--model_name_or_path", tiny_dir, "--inputs", short_scenes / "audio", "--ground_truth", truth,
              "--plot", "false"]
    error = _run_failing(capsys, *common, *quiet(tmp_path / "out"))
    assert "ghost.wav" in error and str(truth) in error and "missing" in error
    with caplog.at_level(logging.WARNING):
        assert run_sed(*common, "--skip_bad_audio", *quiet(tmp_path / "skip")) == 0
    metrics = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert metrics["excluded_files"] == ["ghost.wav"] and metrics["num_files"] == 2
    assert "ghost.wav" in caplog.text


@pytest.mark.parametrize(
    "name, samples, message",
    [("aaa_empty.wav", 0, "empty"), ("aaa_short.wav", 1600, "too short"), ("aaa_broken.wav", None, "cannot decode")],
)
def test_bad_audio_files(tiny_dir, short_scenes, tmp_path, capsys, caplog, name, samples, message):
    folder = tmp_path / "audio"
    folder.mkdir()
    for path in (short_scenes / "audio").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    if samples is None:
        (folder / name).write_bytes(b"RIFF....WAVEfmt garbage")
    else:
        soundfile.write(folder / name, np.zeros(samples, np.float32), RATE)
    common = ["--model_name_or_path", tiny_dir, "--inputs", folder, "--plot", "false"]
    error = _run_failing(capsys, *common, *quiet(tmp_path / "out"))
    assert str(folder / name) in error and message in error

    with caplog.at_level(logging.WARNING):
        assert run_sed(*common, "--skip_bad_audio", *quiet(tmp_path / "skip")) == 0
    skipped = pd.read_csv(tmp_path / "skip" / "skipped_audio.tsv", sep="\t")
    assert skipped["filename"].tolist() == [name] and message in skipped["reason"][0]
    assert sorted(p.name for p in (tmp_path / "skip" / "scores").iterdir()) == ["scene_000.tsv", "scene_001.tsv"]
    assert "1 of 3 files were skipped" in caplog.text


def test_unwritable_output_directory(tiny_dir, short_scenes, tmp_path, capsys):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the output directory's parent should be")
    error = _run_failing(capsys, "--model_name_or_path", tiny_dir, "--inputs", short_scenes / "audio",
                         *quiet(blocker / "out"))
    assert "cannot create this folder" in error and f"{blocker} is a file" in error and str(blocker / "out") in error


def test_missing_inputs(tiny_dir, tmp_path, capsys):
    listing = tmp_path / "files.txt"
    listing.write_text("missing.wav\n")
    error = _run_failing(capsys, "--model_name_or_path", tiny_dir, "--inputs", listing, *quiet(tmp_path / "out"))
    assert str(listing) in error and "line 1" in error and "missing.wav" in error
    error = _run_failing(capsys, "--model_name_or_path", tiny_dir, "--inputs", tmp_path / "nowhere",
                         *quiet(tmp_path / "out"))
    assert "nowhere" in error
    error = _run_failing(capsys, "--score_only", "--predictions", listing, *quiet(tmp_path / "out"))
    assert "--ground_truth and --durations" in error


def test_threshold_options(tiny_dir, short_scenes, tmp_path, capsys):
    common = ["--model_name_or_path", tiny_dir, "--inputs", short_scenes / "audio", "--plot", "false"]
    (tmp_path / "t.tsv").write_text("tone\t0.3\nchirp\t0.4\n")
    error = _run_failing(capsys, *common, "--threshold", 0.5, "--thresholds_file", tmp_path / "t.tsv",
                         *quiet(tmp_path / "out"))
    assert "give --threshold or --thresholds_file, not both" in error
    error = _run_failing(capsys, *common, "--thresholds_file", tmp_path / "t.tsv", *quiet(tmp_path / "out"))
    (line,) = [line for line in error.splitlines() if line.startswith("run_sed.py: error: ")]
    assert f"{tmp_path / 't.tsv'}: thresholds do not match the classes: missing for ['bursts']" in line
    (tmp_path / "t.tsv").write_text("tone\t0.3\nchirp\t0.4\nbursts\t0.2\n")
    assert run_sed(*common, "--thresholds_file", tmp_path / "t.tsv", *quiet(tmp_path / "ok")) == 0
    error = _run_failing(capsys, *common, "--durations", short_scenes / "durations.tsv", *quiet(tmp_path / "out"))
    assert "--durations and --threshold_sweep are for scoring: give --ground_truth too" in error


# ---------------------------------------------------------------------------------------------------------- configs


def test_desed_configs():
    zero_shot = RUN_SED.parse_arguments([str(REPO_ROOT / "configs" / "desed.json")])
    modern = RUN_SED.parse_arguments([str(REPO_ROOT / "configs" / "desed_modern.json")])
    for args in (zero_shot, modern):
        model_args, detection, evaluation, _, training = args
        assert detection.class_map == "desed" and evaluation.ground_truth and detection.inputs
        assert detection.short_audio == "pad" and not training.do_train
    # The paper's protocol: the class map's per-class thresholds, no median filter.
    assert zero_shot[1].threshold is None and not zero_shot[1].median_filter_seconds
    assert modern[1].threshold == 0.5 and modern[1].median_filter_seconds == pytest.approx(0.45)


# --------------------------------------------------------------------------------------------------------- training


def test_fine_tuning_improves_detection(tmp_path, capsys):
    """A tiny model trained from scratch on 12 generated scenes (3 classes) for 6 epochs, then scored on 6 held-out
    scenes, against the same model before training."""
    train_dir = make_detection_folder(tmp_path / "train", num_files=12, classes=CLASSES, seed=0)
    eval_dir = make_detection_folder(tmp_path / "eval", num_files=6, classes=CLASSES, seed=1)
    initial = save_tiny_model(tmp_path / "initial")
    started = time.perf_counter()
    assert run_sed("--model_name_or_path", initial, "--inputs", eval_dir / "audio", "--ground_truth",
                   eval_dir / "annotations.tsv", "--plot", "false", *quiet(tmp_path / "before")) == 0
    before = json.loads((tmp_path / "before" / "metrics.json").read_text())
    out = tmp_path / "trained"
    code = run_sed(
        "--do_train", "--train_dir", train_dir, "--eval_dir", eval_dir, "--model_name_or_path", initial,
        "--num_train_epochs", 6, "--per_device_train_batch_size", 4, "--learning_rate", 2e-3, "--warmup_steps", 2,
        "--spec_augment", "false", "--save_strategy", "no", "--seed", 0, "--logging_steps", 6, "--plot", "false",
        "--dataloader_pin_memory", "false",
        *quiet(out),
    )
    elapsed = time.perf_counter() - started
    assert code == 0
    after = json.loads((out / "eval_detection" / "metrics.json").read_text())
    frame = json.loads((out / "eval_results.json").read_text())
    assert (out / "model.safetensors").is_file() and (out / "preprocessor_config.json").is_file()
    summary = {
        key: (round(before[key]["macro_f1"], 4), round(after[key]["macro_f1"], 4))
        for key in ("intersection_f1", "collar_event_f1", "segment_f1")
    }
    summary["psds1"] = (round(before["psds1"]["psds"], 3), round(after["psds1"]["psds"], 3))
    with capsys.disabled():
        print(f"\nstrong-label fine-tuning ({elapsed:.0f} s), before -> after: {summary}; frame F1 after "
              f"{frame['eval_frame_f1_macro']:.3f} (macro), {frame['eval_frame_f1_micro']:.3f} (micro)")
    assert after["segment_f1"]["macro_f1"] > before["segment_f1"]["macro_f1"] + 0.3, summary
    assert after["intersection_f1"]["macro_f1"] > before["intersection_f1"]["macro_f1"] + 0.3, summary
    assert after["psds1"]["psds"] > before["psds1"]["psds"] + 0.2, summary
    assert frame["eval_frame_f1_macro"] > 0.6

    # The fine-tuned model loads for detection like any other.
    assert run_sed("--model_name_or_path", out, "--inputs", eval_dir / "audio" / "scene_000.wav", "--plot", "false",
                   *quiet(tmp_path / "reloaded")) == 0


def test_training_refuses_evaluation_labels_outside_the_training_set(tmp_path, capsys):
    train_dir = make_detection_folder(tmp_path / "train", num_files=1, seconds=4.0, classes=("tone",),
                                      events_per_file=1)
    eval_dir = make_detection_folder(tmp_path / "eval", num_files=1, seconds=4.0, classes=("chirp",),
                                     events_per_file=1)
    error = _run_failing(capsys, "--do_train", "--train_dir", train_dir, "--eval_dir", eval_dir,
                         "--config_overrides", "embed_dim=16,depths=[2,2,2,2],num_heads=[1,2,4,8]",
                         *quiet(tmp_path / "out"))
    assert str(eval_dir / "annotations.tsv") in error and "unknown event label" in error and "chirp" in error


# ------------------------------------------------------------------------------- output folder: never a mix of runs


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _copy_audio(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_reruns_replace_exactly_the_previous_outputs(tiny_dir, short_scenes, tmp_path, capsys):
    """A corrupt file stops a run before anything is written; a successful rerun replaces the previous run's
    detection outputs (its stale skipped_audio.tsv and metrics.json go), and leaves other files alone."""
    folder = _copy_audio(short_scenes / "audio", tmp_path / "audio")
    (folder / "aaa_broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    out = tmp_path / "out"
    common = ["--model_name_or_path", tiny_dir, "--inputs", folder, "--max_plots", 1]
    error = _run_failing(capsys, *common, *quiet(out))
    assert str(folder / "aaa_broken.wav") in error
    assert not out.exists() or not any(out.iterdir())  # checked before anything is written

    assert run_sed(*common, "--skip_bad_audio", "--ground_truth", short_scenes / "annotations.tsv",
                   *quiet(out)) == 0
    assert (out / "skipped_audio.tsv").is_file() and (out / "metrics.json").is_file()
    (out / "notes.txt").write_text("mine")
    (out / "checkpoint-10").mkdir()
    (out / "checkpoint-10" / "model.safetensors").write_bytes(b"weights")
    (folder / "aaa_broken.wav").unlink()
    assert run_sed(*common, *quiet(out)) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint-10", "durations.tsv", "events.tsv", "notes.txt", "plots", "scores"]
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "checkpoint-10" / "model.safetensors").read_bytes() == b"weights"


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_failed_or_interrupted_rerun_keeps_the_previous_results(tiny_dir, short_scenes, tmp_path, monkeypatch,
                                                                 failure):
    engine = importlib.import_module("htsat_hf.engine")
    out = tmp_path / "out"
    common = ["--model_name_or_path", tiny_dir, "--inputs", short_scenes / "audio", "--max_plots", 1]
    assert run_sed(*common, "--ground_truth", short_scenes / "annotations.tsv", *quiet(out)) == 0
    before = _snapshot(out)
    finish = engine._FileAssembler.finish
    calls = []

    def finish_then_fail(self, *args):
        result = finish(self, *args)  # the file's scores are written
        calls.append(result.name)
        if len(calls) == 2:  # half of the new scores written
            raise failure("interrupted")
        return result

    monkeypatch.setattr(engine._FileAssembler, "finish", finish_then_fail)
    if failure is KeyboardInterrupt:  # Ctrl-C: one line, status 130
        assert run_sed(*common, "--threshold", 0.2, *quiet(out)) == 130
    else:
        with pytest.raises(failure):
            run_sed(*common, "--threshold", 0.2, *quiet(out))
    assert len(calls) == 2
    assert _snapshot(out) == before  # byte for byte
    assert not list(out.glob(".sed-run-*"))


def test_score_only_rerun_is_staged_and_keeps_the_predictions(tone_run, tmp_path, monkeypatch):
    data, out, _ = tone_run
    target = tmp_path / "scored"
    _copy_audio(out / "scores", tmp_path / "scores")
    args = ["--score_only", "--predictions", tmp_path / "scores", "--ground_truth", data / "annotations.tsv",
            "--durations", data / "durations.tsv", *quiet(target)]
    assert run_sed(*args) == 0
    before = _snapshot(target)
    detection = importlib.import_module("htsat_hf.sed.detection")
    monkeypatch.setattr(detection, "write_metrics", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert run_sed(*args) == 130  # interrupted
    assert _snapshot(target) == before and not list(target.glob(".sed-run-*"))
    monkeypatch.undo()
    # An events file as predictions, in the output folder itself: scored, not removed.
    assert run_sed("--score_only", "--predictions", target / "events.tsv", "--ground_truth", data / "annotations.tsv",
                   "--durations", data / "durations.tsv", *quiet(target)) == 0
    assert (target / "events.tsv").read_bytes() == before["events.tsv"]


# ----------------------------------------------------------------------------- data that tools accept stays itself


def test_overlapping_ground_truth_events_are_merged_with_a_warning(tiny_dir, short_scenes, tmp_path, caplog):
    """Older DESED releases have overlapping events of one class in one file; psds_eval refuses them."""
    table = pd.read_csv(short_scenes / "annotations.tsv", sep="\t", dtype=str)
    first = table.iloc[0]
    onset, offset = float(first["onset"]), float(first["offset"])
    truth = _ground_truth_with(tmp_path, short_scenes,
                               (first["filename"], str(onset + 0.1), str(offset + 0.5), first["event_label"]))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert run_sed("--model_name_or_path", tiny_dir, "--inputs", short_scenes / "audio", "--ground_truth", truth,
                       "--plot", "false", *quiet(out)) == 0
    assert first["filename"] in caplog.text and "line 2" in caplog.text and "line 4" in caplog.text
    assert "merged" in caplog.text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["psds1"]["psds"] >= 0 and metrics["num_files"] == 2


def test_score_only_threshold_sweep(tone_run, tmp_path, capsys):
    """From score tables the sweep is computed (as a detection run computes it); from events only it is refused."""
    data, out, summary = tone_run
    common = ["--ground_truth", data / "annotations.tsv", "--durations", data / "durations.tsv",
              "--threshold_sweep", 10]
    assert run_sed("--score_only", "--predictions", out / "scores", *common, *quiet(tmp_path / "a")) == 0
    sweep = json.loads((tmp_path / "a" / "metrics.json").read_text())["threshold_sweep"]
    assert sweep["num_thresholds"] == 10 and 0.5 < sweep["psds2"] <= 1
    assert run_sed("--score_only", "--predictions", out / "events.tsv", "--psds_predictions", out / "scores",
                   *common, *quiet(tmp_path / "b")) == 0
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["threshold_sweep"] == pytest.approx(sweep)
    # The detection run's own sweep over the same scores.
    again = run(ModelArguments(), DetectionArguments(inputs=[str(data / "audio")], plot=False),
                EvaluationArguments(ground_truth=str(data / "annotations.tsv"), durations=str(data / "durations.tsv"),
                                    threshold_sweep=10),
                StrongLabelArguments(), TrainingArguments(output_dir=str(tmp_path / "run"), disable_tqdm=True,
                                                          report_to="none"),
                model=loudness_model(("low", "high"))[0], feature_extractor=loudness_model(("low", "high"))[1])
    assert again["metrics"]["threshold_sweep"]["psds1"] == pytest.approx(sweep["psds1"], abs=1e-9)
    assert again["metrics"]["threshold_sweep"]["psds2"] == pytest.approx(sweep["psds2"], abs=1e-9)
    error = _run_failing(capsys, "--score_only", "--predictions", out / "events.tsv", *common, *quiet(tmp_path / "c"))
    assert "--threshold_sweep" in error and str(out / "events.tsv") in error
    assert not (tmp_path / "c" / "metrics.json").exists()


# ------------------------------------------------------------------------------------------- options, checked first


@pytest.mark.parametrize(
    "option, value",
    [
        ("--batch_size", 0), ("--batch_size", -2), ("--window_seconds", 0), ("--window_seconds", "nan"),
        ("--window_seconds", -1), ("--hop_seconds", 0), ("--hop_seconds", "nan"), ("--hop_seconds", "inf"),
        ("--median_filter_seconds", -0.5), ("--median_filter_seconds", "nan"), ("--min_duration", -1),
        ("--min_duration", "nan"), ("--min_gap", -0.1), ("--min_gap", "inf"), ("--max_plots", -1),
        ("--plot_top_k", -1), ("--threshold", 1.5), ("--threshold", -0.1), ("--threshold", "nan"),
        ("--threshold_sweep", -3), ("--device", "gpu7"),
        ("--class_map", "no-such-map.json"), ("--durations", "no-such-durations.tsv"),
        ("--predictions", "no-such-events.tsv"), ("--eval_dir", "no-such-folder"),
    ],
)
def test_bad_option_values_are_refused_before_loading_the_model(short_scenes, tmp_path, capsys, option, value):
    # The model does not exist: an option error must come first, naming the option.
    scoring = option in ("--threshold_sweep", "--durations")
    extra = ["--ground_truth", short_scenes / "annotations.tsv"] if scoring else []
    error = _run_failing(capsys, "--model_name_or_path", tmp_path / "no-model", "--inputs", short_scenes / "audio",
                         *extra, option, value, *quiet(tmp_path / "out"))
    assert error.startswith("run_sed.py: error: ") and error.count("\n") == 1
    assert option in error or str(value) in error, error
    assert "no-model" not in error
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_out_of_range_thresholds_file_and_conflicting_options(short_scenes, tmp_path, capsys):
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps({"tone": 0.5, "chirp": 2.0, "bursts": 0.5}))
    common = ["--model_name_or_path", tmp_path / "no-model", "--inputs", short_scenes / "audio"]
    error = _run_failing(capsys, *common, "--thresholds_file", thresholds, *quiet(tmp_path / "out"))
    assert str(thresholds) in error and "'chirp'" in error and "between 0 and 1" in error
    error = _run_failing(capsys, *common, "--score_only", "--predictions", thresholds, *quiet(tmp_path / "out"))
    assert "--score_only" in error and "--inputs" in error
    error = _run_failing(capsys, *common, "--psds_predictions", tmp_path, *quiet(tmp_path / "out"))
    assert "--psds_predictions is for --score_only" in error
    error = _run_failing(capsys, *common, "--window_seconds", 2, "--hop_seconds", 3, *quiet(tmp_path / "out"))
    assert "--hop_seconds" in error and "--window_seconds" in error


def test_window_longer_than_the_model_clip_is_refused_before_writing(tiny_dir, short_scenes, tmp_path, capsys):
    error = _run_failing(capsys, "--model_name_or_path", tiny_dir, "--inputs", short_scenes / "audio",
                         "--window_seconds", 20, *quiet(tmp_path / "out"))
    assert "window_seconds" in error and "20" in error
    assert not list((tmp_path / "out").iterdir())


def test_durations_missing_a_ground_truth_file(tiny_dir, short_scenes, tmp_path, capsys):
    durations = tmp_path / "durations.tsv"
    durations.write_text("filename\tduration\nscene_000.wav\t4.0\n")
    error = _run_failing(capsys, "--model_name_or_path", tiny_dir, "--inputs", short_scenes / "audio",
                         "--ground_truth", short_scenes / "annotations.tsv", "--durations", durations,
                         *quiet(tmp_path / "out"))
    assert str(durations) in error and "scene_001.wav" in error


# ------------------------------------------------------------------ training output folder, several processes

TINY_OVERRIDES = "embed_dim=16,depths=[2,2,2,2],num_heads=[1,2,4,8]"


@pytest.fixture(scope="module")
def tiny_strong(tmp_path_factory):
    """One 4 s scene with one event: the smallest strong-label training folder."""
    return make_detection_folder(tmp_path_factory.mktemp("strong") / "strong", num_files=1, seconds=4.0,
                                 classes=CLASSES, events_per_file=1, seed=2)


def train_args(train_dir, *more) -> list:
    return ["--do_train", "--train_dir", train_dir, "--config_overrides", TINY_OVERRIDES, "--max_steps", 2,
            "--per_device_train_batch_size", 1, "--save_strategy", "steps", "--save_steps", 1, "--logging_steps", 1,
            "--dataloader_pin_memory", "false", "--plot", "false", *more]


def test_training_into_a_used_output_folder_is_refused_unless_resumed_or_overwritten(tiny_strong, tmp_path, capsys):
    """Trainer (transformers 5) wrote `checkpoint-N` beside an earlier run's and rotated and resumed among both. As
    run_audio_classification.py (one check, `htsat_hf.training.output_dir`): a folder with files is refused in one
    line that says what to do, unless resumed or `--overwrite_output_dir true`."""
    out = tmp_path / "out"
    assert run_sed(*train_args(tiny_strong), *quiet(out)) == 0
    assert (out / "checkpoint-2").is_dir()
    before = sorted(path.name for path in out.iterdir())
    capsys.readouterr()  # the run's progress bars

    error = _run_failing(capsys, *train_args(tiny_strong), *quiet(out))
    assert error.splitlines() == [
        f"run_sed.py: error: {out}: the folder is not empty (an earlier run's outputs?); train into a new or empty "
        f"folder, continue that run with --resume_from_checkpoint {out / 'checkpoint-2'}, or replace its contents "
        "with --overwrite_output_dir true"]
    assert sorted(path.name for path in out.iterdir()) == before
    error = _run_failing(capsys, *train_args(tiny_strong, "--overwrite_output_dir", "true", "--resume_from_checkpoint",
                                             out / "checkpoint-2"), *quiet(out))
    assert error.startswith("run_sed.py: error: give --resume_from_checkpoint") and "not both" in error
    error = _run_failing(capsys, "--model_name_or_path", out, "--inputs", tiny_strong / "audio",
                         "--overwrite_output_dir", "true", *quiet(tmp_path / "detected"))
    assert error.startswith("run_sed.py: error: --overwrite_output_dir replaces the folder a training run writes")

    # Resuming continues the run there; replacing leaves only the new run's checkpoints.
    assert run_sed(*train_args(tiny_strong, "--max_steps", 3, "--resume_from_checkpoint", out / "checkpoint-2"),
                   *quiet(out)) == 0
    assert read_state(out)["global_step"] == 3
    (out / "notes.txt").write_text("an earlier run's")
    assert run_sed(*train_args(tiny_strong, "--max_steps", 1, "--overwrite_output_dir", "true"), *quiet(out)) == 0
    assert (out / "checkpoint-1").is_dir() and not (out / "checkpoint-2").exists()
    assert not (out / "checkpoint-3").exists() and not (out / "notes.txt").exists()
    assert read_state(out)["global_step"] == 1


def read_state(out: Path) -> dict:
    return json.loads((out / "trainer_state.json").read_text())


def test_training_output_folder_may_not_hold_or_be_an_input(tiny_strong, tmp_path, capsys):
    data = tmp_path / "runs" / "strong"
    shutil.copytree(tiny_strong, data)
    error = _run_failing(capsys, *train_args(data, "--overwrite_output_dir", "true"), *quiet(tmp_path / "runs"))
    assert error.startswith(f"run_sed.py: error: {tmp_path / 'runs'}: contains the input {data}")
    assert (data / "annotations.tsv").is_file()
    error = _run_failing(capsys, *train_args(data), *quiet(data / "out"))
    assert error.startswith(f"run_sed.py: error: {data / 'out'}: lies inside the input {data}")
    # Detection alone does not write into its data either (its durations.tsv would replace the folder's); beside a
    # model's files it may.
    model = save_tiny_model(tmp_path / "model")
    capsys.readouterr()  # the save's progress bar
    error = _run_failing(capsys, "--model_name_or_path", model, "--inputs", data / "audio", "--plot", "false",
                         *quiet(data))
    assert error.startswith(f"run_sed.py: error: {data}: contains the input {data / 'audio'}")
    assert not (data / "events.tsv").exists() and (data / "annotations.tsv").is_file()
    assert run_sed("--model_name_or_path", model, "--inputs", data / "audio", "--plot", "false", *quiet(model)) == 0
    assert (model / "events.tsv").is_file()


@pytest.fixture
def two_cpu_processes(monkeypatch):
    """What `accelerate launch --num_processes 2 --cpu` sets besides the ranks (launch_two's): TrainingArguments then
    sets up the processes' group on the CPU (gloo), as Trainer's distributed training needs."""
    pytest.importorskip("accelerate")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")


def _launch_two(arguments, tmp_path, timeout=300):
    from test_engine import launch_two

    return launch_two([REPO_ROOT / "run_sed.py", *arguments], tmp_path, timeout=timeout)


def _detection_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if " events in " in line and " files written to " in line]


def test_two_processes_detect_once_with_the_files_of_one(tiny_dir, short_scenes, tmp_path, two_cpu_processes):
    """`accelerate launch run_sed.py` without --do_train: every process detected all inputs into the same folder at
    once (the work done twice, the staged outputs of both renamed over each other). Now the main process detects and
    writes, the other waits for it, and the files are those of a one-process run."""
    import os
    import subprocess
    import sys

    common = ["--model_name_or_path", tiny_dir, "--inputs", short_scenes / "audio", "--ground_truth",
              short_scenes / "annotations.tsv", "--plot", "false", "--batch_size", 2, "--disable_tqdm", "true",
              "--report_to", "none", "--output_dir"]
    single = subprocess.run([sys.executable, REPO_ROOT / "run_sed.py", *map(str, common), tmp_path / "one"],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert single.returncode == 0, single.stderr
    results = _launch_two([*common, tmp_path / "two"], tmp_path)
    assert [status for status, _ in results] == [0, 0], results
    assert len(_detection_lines(results[0][1])) == 1 and _detection_lines(results[1][1]) == [], results
    assert _snapshot(tmp_path / "two") == _snapshot(tmp_path / "one")
    assert sorted(path.name for path in (tmp_path / "two").iterdir()) == [
        "durations.tsv", "events.tsv", "metrics.json", "scores"]


def test_two_processes_fail_together_when_the_main_process_fails(tiny_dir, short_scenes, tmp_path, two_cpu_processes):
    """An error in the main process's detection (here: one injected where its outputs are staged)
    ends both processes with the same line; the other is not left waiting for it."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, runpy\n"
        "import htsat_hf.sed.detection as detection\n"
        "from htsat_hf.errors import InputError\n"
        "def fail(*args, **kwargs):\n"
        "    raise InputError('scene_000.wav: cannot be decoded (injected)')\n"
        "detection.staged_outputs = fail\n"
        f"sys.argv = [{str(REPO_ROOT / 'run_sed.py')!r}] + sys.argv[1:]\n"
        f"runpy.run_path({str(REPO_ROOT / 'run_sed.py')!r}, run_name='__main__')\n"
    )
    pytest.importorskip("accelerate")
    from test_engine import launch_two

    results = launch_two([script, "--model_name_or_path", tiny_dir, "--inputs", short_scenes / "audio", "--plot",
                          "false", *quiet(tmp_path / "out")], tmp_path, timeout=300)
    assert [status for status, _ in results] == [2, 2], results
    for _, err in results:
        assert [line for line in err.splitlines() if line.startswith("run_sed.py: error:")] == [
            "run_sed.py: error: scene_000.wav: cannot be decoded (injected)"], err


def test_two_processes_train_then_detect_once(tiny_strong, tmp_path, two_cpu_processes):
    """`accelerate launch run_sed.py --do_train --eval_dir ...`: both processes refuse a used --output_dir with the
    same line; with --overwrite_output_dir true the saving process empties it (inside `together`), both train, and
    the main process alone runs the detection on --eval_dir while the other waits; both exit 0."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint-9").mkdir()
    arguments = [*train_args(tiny_strong, "--eval_dir", tiny_strong, "--save_strategy", "no"), *quiet(out)]
    results = _launch_two(arguments, tmp_path)
    assert [status for status, _ in results] == [2, 2], results
    for _, err in results:
        assert err.splitlines()[-1].startswith(f"run_sed.py: error: {out}: the folder is not empty"), err
    results = _launch_two([*arguments, "--overwrite_output_dir", "true"], tmp_path)
    assert [status for status, _ in results] == [0, 0], results
    assert len(_detection_lines(results[0][1])) == 1 and _detection_lines(results[1][1]) == [], results
    assert not (out / "checkpoint-9").exists() and (out / "model.safetensors").is_file()
    assert (out / "eval_detection" / "metrics.json").is_file()


def test_no_run_writes_into_its_data_and_a_bad_resume_is_one_line(tiny_strong, tmp_path, capsys):
    """A resumed training run skipped the overlap check (its model and checkpoints went into the data folder), and a
    bad `--resume_from_checkpoint` was a transformers traceback after the output folder had been created."""
    data = tmp_path / "strong"
    shutil.copytree(tiny_strong, data)
    before = _snapshot(data)
    out = tmp_path / "out"
    assert run_sed(*train_args(data), *quiet(out)) == 0
    capsys.readouterr()
    for output_dir, refusal in ((data, f"{data}: is the input {data} itself"),
                                (data / "sub", f"{data / 'sub'}: lies inside the input {data}")):
        error = _run_failing(capsys, *train_args(data, "--max_steps", 3, "--resume_from_checkpoint",
                                                 out / "checkpoint-2"), *quiet(output_dir))
        assert error.splitlines() == [f"run_sed.py: error: {refusal}; write the output to a "
                                      f"{'new folder' if output_dir == data else 'folder outside it'}"]
    # Detection alone: a folder holding the ground truth (whose durations.tsv the run would replace) is refused.
    truth = tmp_path / "truth"
    truth.mkdir()
    shutil.copy(data / "annotations.tsv", truth / "annotations.tsv")
    error = _run_failing(capsys, "--model_name_or_path", out, "--inputs", data / "audio", "--ground_truth",
                         truth / "annotations.tsv", "--plot", "false", *quiet(truth))
    assert error.startswith(f"run_sed.py: error: {truth}: contains the input {truth / 'annotations.tsv'}")
    assert _snapshot(data) == before and sorted(p.name for p in truth.iterdir()) == ["annotations.tsv"]

    new = tmp_path / "new"
    for value, refusal in ((tmp_path / "nonexist", f"{tmp_path / 'nonexist'}: no such checkpoint folder"),
                           (data, f"{data}: not a Trainer checkpoint (no trainer_state.json"),
                           ("true", f"true continues the last checkpoint-N folder in --output_dir, and {new} holds "
                                    "none")):
        error = _run_failing(capsys, *train_args(data, "--resume_from_checkpoint", value), *quiet(new))
        assert len(error.splitlines()) == 1 and "Traceback" not in error
        assert error.startswith(f"run_sed.py: error: --resume_from_checkpoint {refusal}"), error
        assert not new.exists()
