"""Detection metrics (`htsat_hf.sed.metrics`): the DCASE baseline's published values on DESED validation
(../shared/desed-baseline), equality with direct calls of psds_eval, sed_eval and sed_scores_eval, and the checks of
the inputs the metrics take. The tables themselves are `tests/test_sed_io.py`'s."""

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import sed_eval
import sed_scores_eval
from conftest import require_shared
from psds_eval import PSDSEval
from sed_scores_eval.base_modules.detection import scores_to_event_list

from htsat_hf.errors import InputError
from htsat_hf.sed.io import (
    read_durations_tsv,
    read_ground_truth_tsv,
    read_operating_points,
    scores_dataframe,
    write_score_tsv,
)
from htsat_hf.sed.metrics import (
    PSDS_SCENARIOS,
    collar_event_f1,
    evaluate_detection,
    format_metrics_table,
    intersection_f1,
    operating_points_to_scores,
    psds,
    segment_f1,
)
from htsat_hf.sed.postprocessing import frame_times

F1_TOLERANCE = 1e-4  # 0.01 percentage points
PSDS_TOLERANCE = 1e-3


# ------------------------------------------------------------------------------------- DESED validation, DCASE baseline


@pytest.fixture(scope="module")
def desed():
    root = require_shared("desed-baseline/validation.tsv").parent
    student = root / "metrics_test" / "student"
    return {
        "ground_truth": root / "validation.tsv",
        "durations": root / "validation_durations.tsv",
        "detections": student / "predictions0.5.csv",
        "operating_points": student / "predictions_operating_points",
    }


@pytest.fixture(scope="module")
def desed_operating_points(desed):
    operating_points = read_operating_points(desed["operating_points"])
    assert len(operating_points) == 50
    return operating_points


@pytest.fixture(scope="module")
def desed_metrics(desed, desed_operating_points):
    return evaluate_detection(desed["detections"], desed["ground_truth"], desed["durations"], desed_operating_points)


def test_desed_published_values(desed_metrics):
    m = desed_metrics
    assert m["num_files"] == 1168 and len(m["classes"]) == 10
    assert m["intersection_f1"]["macro_f1"] == pytest.approx(0.6374, abs=F1_TOLERANCE)
    assert m["collar_event_f1"]["macro_f1"] == pytest.approx(0.3987, abs=F1_TOLERANCE)
    assert m["collar_event_f1"]["micro_f1"] == pytest.approx(0.4095, abs=F1_TOLERANCE)
    assert m["segment_f1"]["macro_f1"] == pytest.approx(0.6935, abs=F1_TOLERANCE)
    assert m["segment_f1"]["micro_f1"] == pytest.approx(0.7547, abs=F1_TOLERANCE)
    assert m["psds1"]["psds"] == pytest.approx(0.334, abs=PSDS_TOLERANCE)
    assert m["psds2"]["psds"] == pytest.approx(0.528, abs=PSDS_TOLERANCE)
    json.dumps(m, allow_nan=False)
    table = format_metrics_table(m)
    for text in ("63.74 %", "39.87 %", "40.95 %", "69.35 %", "75.47 %", "0.334", "0.528", "Vacuum_cleaner"):
        assert text in table


@pytest.mark.filterwarnings("ignore:::psds_eval")  # its pandas 3 deprecations
def test_desed_intersection_f1_is_psds_eval(desed, desed_metrics):
    evaluator = PSDSEval(
        dtc_threshold=0.5,
        gtc_threshold=0.5,
        cttc_threshold=0.3,
        ground_truth=pd.read_csv(desed["ground_truth"], sep="\t"),
        metadata=pd.read_csv(desed["durations"], sep="\t"),
    )
    macro, per_class = evaluator.compute_macro_f_score(pd.read_csv(desed["detections"], index_col=0))
    ours = desed_metrics["intersection_f1"]
    assert ours["macro_f1"] == pytest.approx(macro, abs=1e-12)
    assert ours["class_wise"] == pytest.approx(per_class, abs=1e-12)
    again = intersection_f1(desed["detections"], desed["ground_truth"], desed["durations"])
    assert again["macro_f1"] == ours["macro_f1"]


def test_desed_collar_event_f1_is_sed_eval(desed, desed_metrics):
    # The DCASE baseline's own evaluation loop (DESED_task, sed_eval on pandas tables).
    reference = pd.read_csv(desed["ground_truth"], sep="\t")
    estimated = pd.read_csv(desed["detections"], index_col=0)
    classes = sorted(set(reference.event_label.dropna()) | set(estimated.event_label.dropna()))
    metric = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=classes, t_collar=0.2, percentage_of_length=0.2, empty_system_output_handling="zero_score"
    )
    for filename in reference.filename.unique():
        metric.evaluate(
            reference[reference.filename == filename].dropna().to_dict("records"),
            estimated[estimated.filename == filename].to_dict("records"),
        )
    results = metric.results()
    ours = desed_metrics["collar_event_f1"]
    assert ours["macro_f1"] == pytest.approx(results["class_wise_average"]["f_measure"]["f_measure"], abs=1e-12)
    assert ours["micro_f1"] == pytest.approx(results["overall"]["f_measure"]["f_measure"], abs=1e-12)
    for label in classes:
        expected = results["class_wise"][label]["f_measure"]["f_measure"]
        assert ours["class_wise"][label] == pytest.approx(expected, abs=1e-12)


def test_desed_psds_is_sed_scores_eval(desed, desed_operating_points, desed_metrics):
    scores = operating_points_to_scores(desed_operating_points, desed["ground_truth"], desed["durations"])
    assert len(scores) == 1168
    # Thresholding the piecewise-constant scores just below T gives back the detections at T.
    for threshold in (0.01, 0.51):
        detected = scores_to_event_list(scores, float(np.float32(threshold)) - 1e-4)
        got = sorted((audio_id, on, off, label) for audio_id, events in detected.items() for on, off, label in events)
        table = desed_operating_points[threshold]
        expected = sorted(
            (name.rsplit(".", 1)[0], on, off, label)
            for name, on, off, label in table[["filename", "onset", "offset", "event_label"]].itertuples(index=False)
        )
        assert got == expected
    # sed_scores_eval reading the ground truth and durations files itself.
    value, *_ = sed_scores_eval.intersection_based.psds(
        scores, str(desed["ground_truth"]), str(desed["durations"]), **PSDS_SCENARIOS[1]
    )
    assert desed_metrics["psds1"]["psds"] == pytest.approx(value, abs=1e-12)


# --------------------------------------------------------------------------------------------------- synthetic sets


GROUND_TRUTH = (
    "filename\tonset\toffset\tevent_label\n"
    "f1.wav\t1.0\t3.0\ta\n"
    "f1.wav\t5.0\t7.0\tb\n"
    "f2.wav\t0.0\t2.0\ta\n"
    "f3.wav\t\t\t\n"
)
DURATIONS = "filename\tduration\nf1.wav\t10.0\nf2.wav\t10.0\nf3.wav\t8.0\n"


@pytest.fixture
def small(tmp_path):
    (tmp_path / "gt.tsv").write_text(GROUND_TRUTH)
    (tmp_path / "durations.tsv").write_text(DURATIONS)
    return tmp_path / "gt.tsv", tmp_path / "durations.tsv"


def _detections(rows):
    return pd.DataFrame(rows, columns=["filename", "onset", "offset", "event_label"])


def test_durations_errors(small, tmp_path):
    (tmp_path / "short.tsv").write_text("filename\tduration\nf1.wav\t10\nf2.wav\t10\n")
    with pytest.raises(ValueError, match=r"1 ground-truth files lack a duration \(e.g. \['f3.wav'\]\)"):
        intersection_f1(_detections([]), small[0], tmp_path / "short.tsv")
    with pytest.raises(InputError, match=r"durations, row 2: expected a filename and a positive duration"):
        intersection_f1(_detections([]), small[0], {"f1.wav": 10.0, "f2.wav": 10.0, "f3.wav": 0.0})


def test_detections_must_match_the_ground_truth(small):
    with pytest.raises(ValueError, match=r"detections for 1 files absent from the ground truth, e.g. \['f9.wav'\]"):
        collar_event_f1(_detections([("f9.wav", 0.0, 1.0, "a")]), small[0])
    with pytest.raises(InputError, match=r"detections DataFrame, row 1: unknown event label \(known: \['a', 'b'\]\)"):
        segment_f1(_detections([("f1.wav", 0.0, 1.0, "a"), ("f1.wav", 0.0, 1.0, "Dog")]), small[0])


def test_perfect_and_empty_detections(small):
    ground_truth, durations = small
    perfect = read_ground_truth_tsv(ground_truth).dropna()
    results = evaluate_detection(perfect, ground_truth, read_durations_tsv(durations))  # durations as a dict
    assert results["intersection_f1"]["macro_f1"] == 1.0
    assert results["collar_event_f1"]["macro_f1"] == results["collar_event_f1"]["micro_f1"] == 1.0
    assert results["segment_f1"]["macro_f1"] == results["segment_f1"]["micro_f1"] == 1.0
    empty = evaluate_detection(_detections([]), ground_truth, durations)
    for key in ("intersection_f1", "collar_event_f1", "segment_f1"):
        assert empty[key]["macro_f1"] == 0.0
        assert set(empty[key]["class_wise"].values()) == {0.0}
    assert empty["collar_event_f1"]["micro_f1"] == empty["segment_f1"]["micro_f1"] == 0.0
    json.dumps(empty, allow_nan=False)


@pytest.mark.filterwarnings("ignore:::psds_eval")  # its pandas 3 deprecations and 0 / 0
def test_a_class_without_true_positives_scores_zero(small):
    ground_truth, durations = small
    # Class a found exactly, class b only falsely detected (in the file without events).
    detections = _detections([("f1.wav", 1.0, 3.0, "a"), ("f2.wav", 0.0, 2.0, "a"), ("f3.wav", 2.0, 4.0, "b")])
    ours = intersection_f1(detections, ground_truth, durations)
    assert ours["class_wise"] == {"a": 1.0, "b": 0.0}
    assert ours["macro_f1"] == 0.5
    # psds_eval itself leaves class b (NaN) out of its average.
    evaluator = PSDSEval(
        0.5, 0.5, 0.3, ground_truth=pd.read_csv(ground_truth, sep="\t"), metadata=pd.read_csv(durations, sep="\t")
    )
    macro, per_class = evaluator.compute_macro_f_score(detections)
    assert macro == 1.0 and math.isnan(per_class["b"])


def _small_scores(seed=0):
    """Frame scores on the model grid for the small set: noise plus bumps over the ground-truth events."""
    rng = np.random.default_rng(seed)
    events = {"f1": [(1.0, 3.0, 0), (5.0, 7.0, 1)], "f2": [(0.0, 2.0, 0)], "f3": []}
    durations = {"f1": 10.0, "f2": 10.0, "f3": 8.0}
    scores = {}
    for audio_id, file_events in events.items():
        times = frame_times(32, durations[audio_id])
        values = rng.random((32, 2)) * 0.5
        centres = (times[:-1] + times[1:]) / 2
        for onset, offset, column in file_events:
            values[(centres > onset) & (centres < offset), column] += 0.5
        scores[audio_id] = (values, times)
    return scores


def test_psds_from_score_tables_directory_and_library(small, tmp_path):
    ground_truth, durations = small
    frames = _small_scores()
    tables = {audio_id: scores_dataframe(values, times, ["a", "b"]) for audio_id, (values, times) in frames.items()}
    directory = tmp_path / "scores"
    directory.mkdir()
    for audio_id, (values, times) in frames.items():
        write_score_tsv(directory / f"{audio_id}.tsv", values, times, ["a", "b"])
    for scenario in (1, 2):
        from_tables = psds(tables, ground_truth, durations, scenario=scenario)
        from_directory = psds(directory, ground_truth, durations, scenario=scenario)
        library, class_wise, *_ = sed_scores_eval.intersection_based.psds(
            tables, str(ground_truth), str(durations), **PSDS_SCENARIOS[scenario]
        )
        assert from_tables["psds"] == from_directory["psds"] == pytest.approx(library, abs=1e-12)
        assert 0 < library <= 1
        assert from_tables["class_wise"] == pytest.approx(class_wise, abs=1e-12)
        assert from_tables["scenario"] == scenario


def test_psds_input_errors(small):
    ground_truth, durations = small
    frames = _small_scores()
    tables = {audio_id: scores_dataframe(values, times, ["a", "b"]) for audio_id, (values, times) in frames.items()}
    with pytest.raises(ValueError, match=r"1 missing \(e.g. \['f3'\]\), 1 unknown \(e.g. \['f3.wav'\]\)"):
        psds({**{k: v for k, v in tables.items() if k != "f3"}, "f3.wav": tables["f3"]}, ground_truth, durations)
    renamed = {**tables, "f2": tables["f2"].rename(columns={"b": "c"})}
    with pytest.raises(ValueError, match=r"score table of 'f2' has classes \['a', 'c'\]"):
        psds(renamed, ground_truth, durations)
    with pytest.raises(ValueError, match="all audio ids .* or all thresholds"):
        psds({"f1": tables["f1"], 0.5: _detections([])}, ground_truth, durations)
    with pytest.raises(ValueError, match="scenario must be one of"):
        psds(tables, ground_truth, durations, scenario=3)
    with pytest.raises(ValueError, match="distinct positive numbers"):
        psds({0.0: _detections([]), 0.5: _detections([])}, ground_truth, durations)


def test_operating_points_give_piecewise_constant_scores(small):
    ground_truth, durations = small
    operating_points = {
        0.2: _detections([("f1.wav", 0.5, 3.5, "a"), ("f1.wav", 4.0, 8.0, "b"), ("f3.wav", 1.0, 2.0, "a")]),
        0.6: _detections([("f1.wav", 1.0, 3.0, "a"), ("f1.wav", 5.0, 7.0, "b")]),
        0.9: _detections([("f1.wav", 1.5, 2.5, "a")]),
    }
    scores = operating_points_to_scores(operating_points, ground_truth, durations)
    f1 = scores["f1"]
    assert f1["onset"].tolist() == [0.0, 0.5, 1.0, 1.5, 2.5, 3.0, 3.5, 4.0, 5.0, 7.0, 8.0]
    assert f1["offset"].iloc[-1] == 10.0
    np.testing.assert_array_equal(f1["a"], np.float32([0, 0.2, 0.6, 0.9, 0.6, 0.2, 0, 0, 0, 0, 0]))
    np.testing.assert_array_equal(f1["b"], np.float32([0, 0, 0, 0, 0, 0, 0, 0.2, 0.6, 0.2, 0]))
    assert scores["f2"].values.tolist() == [[0.0, 10.0, 0.0, 0.0]]
    assert scores["f3"]["onset"].tolist() == [0.0, 1.0, 2.0]
    result = psds(operating_points, ground_truth, durations, scenario=2)
    assert 0 < result["psds"] <= 1


def test_format_metrics_table_handles_missing_metrics(small):
    ground_truth, durations = small
    results = {"segment_f1": segment_f1(_detections([("f1.wav", 1.0, 3.0, "a")]), ground_truth)}
    table = format_metrics_table(results)
    assert "segment F1 (1 s segments)" in table and "PSDS" not in table
    assert "66.67 %" in table and "0.00 %" in table  # a: 1 of 2 events found (both 2 s long); b: none


def test_a_missing_metric_library_says_what_to_install(small):
    """Only a metric needs its library: without psds_eval, the other metrics still run and intersection F1 says
    what to install."""
    ground_truth, durations = small
    code = f"""
import sys
sys.modules["psds_eval"] = None  # as if it were not installed
import pandas as pd
from htsat_hf.sed.metrics import intersection_f1, segment_f1
detections = pd.DataFrame([("f1.wav", 1.0, 3.0, "a")], columns=["filename", "onset", "offset", "event_label"])
assert segment_f1(detections, {str(ground_truth)!r})["macro_f1"] > 0
try:
    intersection_f1(detections, {str(ground_truth)!r}, {str(durations)!r})
except ImportError as error:
    assert "needs psds_eval: pip install 'htsat-hf[sed]'" in str(error), error
else:
    raise AssertionError("no ImportError")
"""
    subprocess.run([sys.executable, "-c", code], check=True)
