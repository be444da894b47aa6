"""Detection runs as a library (`htsat_hf.sed.detection`): settings resolved against the model, a run's outputs
without ground truth, and the scoring of existing predictions. `tests/test_run_sed.py` runs the same code end to end
through `run_sed.py`."""

import json

import numpy as np
import pandas as pd
import pytest
import soundfile
from test_sed_windows import RATE, loudness_model, scene

from htsat_hf.errors import InputError
from htsat_hf.inputs import collect_inputs
from htsat_hf.sed.detection import (
    metrics_table,
    resolve_settings,
    run_detection,
    score_predictions,
)
from htsat_hf.sed.io import write_score_tsv
from htsat_hf.sed.postprocessing import ClassMap


@pytest.fixture(scope="module")
def model():
    return loudness_model(("low", "high"))


def test_settings_from_the_model_and_the_class_map(model, tmp_path):
    settings = resolve_settings(model[0])
    assert settings.labels == ["low", "high"] and settings.thresholds == 0.5 and settings.class_map is None
    class_map = ClassMap({"any": [0, 1]}, 2, {"any": 0.7})
    settings = resolve_settings(model[0], class_map=class_map, median_filter_seconds=0.95, short_audio="pad")
    assert settings.labels == ["any"] and settings.thresholds.tolist() == [0.7]
    assert settings.describe() == {
        "thresholds": {"any": 0.7}, "class_map": ["any"], "median_filter_seconds": 0.95, "min_duration": 0.0,
        "min_gap": 0.0, "window_seconds": None, "hop_seconds": None, "batch_size": 8, "short_audio": "pad",
    }
    json.dumps(settings.describe())
    (tmp_path / "t.tsv").write_text("low\t0.2\nhigh\t0.9\n")
    assert resolve_settings(model[0], threshold=tmp_path / "t.tsv").thresholds.tolist() == [0.2, 0.9]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"short_audio": "crop"}, "short_audio must be one of"),
        ({"batch_size": 0}, "batch_size must be positive"),
        ({"class_map": "desed"}, "maps a model with 527 classes, but the model has 2 classes"),
        ({"threshold": {"low": 0.5}}, r"missing for \['high'\]"),
    ],
)
def test_settings_errors(model, options, message):
    with pytest.raises(InputError, match=message):
        resolve_settings(model[0], **options)


def test_a_run_without_ground_truth_writes_its_outputs(model, tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    soundfile.write(folder / "a.wav", scene(6.0, [(1.0, 2.5, 500.0)]), RATE)
    settings = resolve_settings(model[0])
    result = run_detection(*model, collect_inputs([folder]), settings, tmp_path / "out", "audio/", max_plots=0,
                           progress=False)
    assert result.metrics is None and result.scores == {} and list(result.durations) == ["a.wav"]
    assert [event.label for event in result.events["a.wav"]] == ["low"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["durations.tsv", "events.tsv", "scores"]


def test_scoring_existing_predictions_errors(tmp_path):
    (tmp_path / "gt.tsv").write_text("filename\tonset\toffset\tevent_label\na.wav\t1.0\t2.0\tlow\n")
    (tmp_path / "durations.tsv").write_text("filename\tduration\na.wav\t4.0\n")
    (tmp_path / "ops").mkdir()
    (tmp_path / "ops" / "0.5.tsv").write_text("filename\tonset\toffset\tevent_label\na.wav\t1.0\t2.0\tlow\n")
    common = dict(ground_truth=tmp_path / "gt.tsv", durations=tmp_path / "durations.tsv", output_dir=tmp_path)
    with pytest.raises(InputError, match="chosen by one threshold, not by per-class thresholds"):
        score_predictions(tmp_path / "ops", threshold={"low": 0.5}, **common)
    with pytest.raises(InputError, match="no detections at threshold 0.3"):
        score_predictions(tmp_path / "ops", threshold=0.3, **common)
    with pytest.raises(InputError, match="PSDS predictions must be a directory"):
        score_predictions(tmp_path / "gt.tsv", psds_predictions=tmp_path / "gt.tsv", **common)
    (tmp_path / "scores").mkdir()
    write_score_tsv(tmp_path / "scores" / "a.tsv", np.zeros((4, 1)), np.arange(5.0), ["high"])
    with pytest.raises(InputError, match=r"a.tsv: no scores for classes \['low'\]"):
        score_predictions(tmp_path / "scores", **common)


def test_scoring_score_tables_writes_their_events(tmp_path):
    (tmp_path / "gt.tsv").write_text("filename\tonset\toffset\tevent_label\na.wav\t1.0\t2.0\tlow\n")
    (tmp_path / "durations.tsv").write_text("filename\tduration\na.wav\t4.0\n")
    (tmp_path / "scores").mkdir()
    write_score_tsv(tmp_path / "scores" / "a.tsv", np.array([[0.1], [0.8], [0.2], [0.1]]), np.arange(5.0), ["low"])
    metrics = score_predictions(tmp_path / "scores", tmp_path / "gt.tsv", tmp_path / "durations.tsv", tmp_path)
    assert metrics["predictions"]["kind"] == "scores" and metrics["intersection_f1"]["macro_f1"] == 1.0
    assert pd.read_csv(tmp_path / "events.tsv", sep="\t").to_dict("records") == [
        {"filename": "a.wav", "onset": 1.0, "offset": 2.0, "event_label": "low", "score": pytest.approx(0.8)}
    ]
    assert json.loads((tmp_path / "metrics.json").read_text())["predictions"]["kind"] == "scores"
    table = metrics_table({**metrics, "excluded_files": ["b.wav"]})
    assert "intersection F1" in table and table.endswith("1 ground-truth files were not scored (skipped or missing)")
