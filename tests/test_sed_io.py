"""The tables of sound event detection (`htsat_hf.sed.io`): ground truth, detections, durations, operating points,
score tables and thresholds files; errors that name the file and line; round trips through sed_scores_eval's own
readers and writer; and writing without the metric libraries."""

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sed_scores_eval.base_modules.io import read_ground_truth_events, read_sed_scores, write_sed_scores

from htsat_hf.errors import InputError
from htsat_hf.sed.io import (
    detection_table,
    durations_mapping,
    events_to_dataframe,
    ground_truth_table,
    predictions_kind,
    read_detection_tsv,
    read_durations_tsv,
    read_ground_truth_tsv,
    read_operating_points,
    read_score_tsvs,
    read_thresholds,
    scores_dataframe,
    write_durations_tsv,
    write_events_tsv,
    write_score_tsv,
)
from htsat_hf.sed.postprocessing import Event, frame_times

GROUND_TRUTH = (
    "filename\tonset\toffset\tevent_label\n"
    "f1.wav\t1.0\t3.0\ta\n"
    "f1.wav\t5.0\t7.0\tb\n"
    "f2.wav\t0.0\t2.0\ta\n"
    "f3.wav\t\t\t\n"
)


@pytest.fixture
def ground_truth(tmp_path):
    path = tmp_path / "gt.tsv"
    path.write_text(GROUND_TRUTH)
    return path


# ------------------------------------------------------------------------------------------------------ event tables


def test_read_ground_truth_keeps_files_without_events(ground_truth):
    table = read_ground_truth_tsv(ground_truth, labels=["a", "b"])
    assert list(table.columns) == ["filename", "onset", "offset", "event_label"]
    assert table["filename"].tolist() == ["f1.wav", "f1.wav", "f2.wav", "f3.wav"]
    assert math.isnan(table["onset"][3]) and pd.isna(table["event_label"][3])
    pd.testing.assert_frame_equal(ground_truth_table(pd.read_csv(ground_truth, sep="\t")), table)
    assert len(read_detection_tsv(ground_truth)) == 3  # detections drop the row without events


@pytest.mark.parametrize(
    "rows, message",
    [
        ("f1.wav\t1.0\t3.0\ta\nf2.wav\t1.0\t2.0\tcow\n", r"gt.tsv, line 3: unknown event label"),
        ("f1.wav\t4.0\t3.0\ta\n", r"gt.tsv, line 2: onset after offset"),
        ("f1.wav\t-0.5\t3.0\ta\n", r"gt.tsv, line 2: negative onset"),
        ("f1.wav\tone\t3.0\ta\n", r"gt.tsv, line 2: onset and offset must be numbers"),
        ("f1.wav\tinf\t3.0\ta\n", r"gt.tsv, line 2: onset and offset must be finite"),
        ("f1.wav\t1.0\t\ta\n", r"gt.tsv, line 2: a row needs onset, offset and event_label, or none of them"),
        ("f1.wav\t1.0\t2.0\ta\n\nf1.wav\t3.0\t2.0\ta\n", r"gt.tsv, line 4: onset after offset"),
        ("\t1.0\t2.0\ta\n", r"gt.tsv, line 2: empty filename"),
        ("f1.wav\t4.0\t3.0\ta\nf2.wav\t4.0\t3.0\ta\n", r"line 2: onset after offset: .* \(and 1 more rows\)"),
    ],
)
def test_read_ground_truth_errors_name_file_and_line(tmp_path, rows, message):
    path = tmp_path / "gt.tsv"
    path.write_text("filename\tonset\toffset\tevent_label\n" + rows)
    with pytest.raises(InputError, match=message):
        read_ground_truth_tsv(path, labels=["a", "b"])


def test_unreadable_tables(tmp_path):
    path = tmp_path / "gt.tsv"
    path.write_text("filename\tstart\tend\tevent_label\nf1.wav\t1\t2\ta\n")
    with pytest.raises(InputError, match=r"gt.tsv: missing columns \['onset', 'offset'\]"):
        read_ground_truth_tsv(path)
    with pytest.raises(InputError, match=r"absent.tsv: no such file"):
        read_ground_truth_tsv(tmp_path / "absent.tsv")
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(InputError, match=r"empty.tsv: cannot read the table"):
        read_detection_tsv(tmp_path / "empty.tsv")
    (tmp_path / "binary.tsv").write_bytes(b"filename\tonset\n\xff\xfe\x00\x81\n")
    with pytest.raises(InputError, match=r"binary.tsv: cannot read the table"):
        read_detection_tsv(tmp_path / "binary.tsv")


def test_read_detections_csv_with_index_column(tmp_path):
    path = tmp_path / "predictions.csv"
    path.write_text(",event_label,onset,offset,filename\n0,a,0.0,1.5,f1.wav\n1,b,2.0,3.0,f2.wav\n")
    table = read_detection_tsv(path)
    assert table.to_dict("records") == [
        {"filename": "f1.wav", "onset": 0.0, "offset": 1.5, "event_label": "a"},
        {"filename": "f2.wav", "onset": 2.0, "offset": 3.0, "event_label": "b"},
    ]


def test_detection_dataframes_are_checked_by_row():
    table = pd.DataFrame({"filename": ["f1.wav", "f1.wav"], "onset": [0.0, 2.0], "offset": [1.0, 1.0],
                          "event_label": ["a", "a"]})
    with pytest.raises(InputError, match=r"detections at 0.5 DataFrame, row 1: onset after offset"):
        detection_table(table, what="detections at 0.5")
    with pytest.raises(InputError, match=r"ground truth DataFrame, row 1: onset after offset"):
        ground_truth_table(table)


def test_read_operating_points(tmp_path):
    directory = tmp_path / "ops"
    directory.mkdir()
    for name in ("predictions_th_0.10.tsv", "0.500.tsv"):
        (directory / name).write_text("event_label\tonset\toffset\tfilename\tindex\na\t0.0\t1.0\tf1.wav\t0\n")
    tables = read_operating_points(directory)
    assert list(tables) == [0.1, 0.5]
    assert tables[0.1].to_dict("records") == [{"filename": "f1.wav", "onset": 0.0, "offset": 1.0, "event_label": "a"}]
    (directory / "0.5.tsv").write_text("filename\tonset\toffset\tevent_label\n")
    with pytest.raises(InputError, match=r"0.500.tsv: a second file for threshold 0.5"):
        read_operating_points(directory)
    (directory / "0.5.tsv").unlink()
    (directory / "predictions_final.tsv").write_text("filename\tonset\toffset\tevent_label\n")
    with pytest.raises(InputError, match="predictions_final.tsv: the file name does not end with a threshold"):
        read_operating_points(directory)
    with pytest.raises(InputError, match="is not a directory"):
        read_operating_points(directory / "0.500.tsv")


def test_events_tsv_round_trip(tmp_path):
    events = {
        "f1.wav": [Event(0.3125, 1.25, "a", 0.75), Event(5.0, 10.0, "b", 0.5)],
        "f2.0.wav": [Event(0.1, 0.30000000000000004, "a", 0.9)],
        "f3.wav": [],
    }
    path = tmp_path / "events.tsv"
    write_events_tsv(events, path)
    assert path.read_text().splitlines()[0] == "filename\tonset\toffset\tevent_label\tscore"
    table = read_detection_tsv(path)
    expected = events_to_dataframe(events)
    pd.testing.assert_frame_equal(table, expected.drop(columns="score"))
    # sed_scores_eval reads it as an event list keyed by audio id.
    assert read_ground_truth_events(path) == {
        "f1": [[0.3125, 1.25, "a"], [5.0, 10.0, "b"]],
        "f2.0": [[0.1, 0.30000000000000004, "a"]],
    }
    write_events_tsv({"f1.wav": [(0.0, 1.0, "a")]}, path)
    assert path.read_text().splitlines() == ["filename\tonset\toffset\tevent_label", "f1.wav\t0.0\t1.0\ta"]


# --------------------------------------------------------------------------------------------------------- durations


def test_durations(tmp_path):
    path = tmp_path / "durations.tsv"
    write_durations_tsv({"f1.wav": 10.0, "f2.wav": 9.984}, path)
    assert read_durations_tsv(path) == {"f1.wav": 10.0, "f2.wav": 9.984}
    assert durations_mapping(path) == durations_mapping({"f1.wav": 10.0, "f2.wav": 9.984})
    assert durations_mapping(pd.read_csv(path, sep="\t")) == {"f1.wav": 10.0, "f2.wav": 9.984}


@pytest.mark.parametrize(
    "text, message",
    [
        ("filename\tduration\nf1.wav\t10\nf2.wav\t-1\n", r"bad.tsv, line 3: expected a filename and a positive"),
        ("filename\tduration\nf1.wav\tlong\n", r"bad.tsv, line 2: expected a filename and a positive duration"),
        ("filename\tduration\nf1.wav\t10\nf1.wav\t9\n", r"bad.tsv, line 3: duplicate filename 'f1.wav'"),
        ("filename\tseconds\nf1.wav\t10\n", r"bad.tsv: missing columns \['duration'\]"),
    ],
)
def test_durations_errors(tmp_path, text, message):
    (tmp_path / "bad.tsv").write_text(text)
    with pytest.raises(InputError, match=message):
        read_durations_tsv(tmp_path / "bad.tsv")


def test_durations_mapping_errors_name_the_row():
    with pytest.raises(InputError, match=r"durations, row 1: expected a filename and a positive duration"):
        durations_mapping({"f1.wav": 10.0, "f2.wav": 0.0})


# ------------------------------------------------------------------------------------------------------------ scores


def test_score_tsv_round_trip_and_sed_scores_eval_format(tmp_path):
    rng = np.random.default_rng(3)
    values = rng.random((32, 3)).astype(np.float32)
    times = frame_times(32, 4.0)
    directory = tmp_path / "scores"
    directory.mkdir()
    write_score_tsv(directory / "clip.one.tsv", values, times, ["x", "y", "z"])
    write_score_tsv(directory / "clip2.tsv", values[::-1], times, ["x", "y", "z"])
    # Byte for byte what sed_scores_eval's own writer makes of the same table.
    write_sed_scores(scores_dataframe(values, times, ["x", "y", "z"]), tmp_path / "theirs.tsv")
    assert (directory / "clip.one.tsv").read_bytes() == (tmp_path / "theirs.tsv").read_bytes()
    table = read_sed_scores(directory / "clip.one.tsv")
    assert list(table.columns) == ["onset", "offset", "x", "y", "z"]
    np.testing.assert_array_equal(table["onset"], times[:-1])
    np.testing.assert_array_equal(table["offset"], times[1:])
    np.testing.assert_array_equal(table[["x", "y", "z"]].to_numpy(np.float32), values)
    ours, theirs = read_score_tsvs(directory), read_sed_scores(directory)
    assert list(ours) == sorted(theirs) == ["clip.one", "clip2"]
    for key in ours:
        pd.testing.assert_frame_equal(ours[key], theirs[key])
    np.testing.assert_array_equal(ours["clip2"][["x", "y", "z"]].to_numpy(np.float32), values[::-1])
    with pytest.raises(ValueError, match="33 increasing boundaries"):
        write_score_tsv(directory / "bad.tsv", values, times[:-1], ["x", "y", "z"])


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("a.tsv", "start\tend\tx\n0\t1\t0.5\n", r"a.tsv: expected columns onset, offset, <class>"),
        ("a.tsv", "onset\toffset\tx\n0\t1\thigh\n", r"a.tsv: every value of a score table must be a number"),
        ("a.tsv", "onset\toffset\tx\n0\t1\t0.5\n2\t3\t0.5\n", r"a.tsv: frames must have positive lengths"),
        ("a.tsv", "onset\toffset\tx\n0\t0\t0.5\n", r"a.tsv: frames must have positive lengths"),
        ("notes.txt", "hello", r"must hold only .tsv files, but holds notes.txt"),
    ],
)
def test_read_score_tsvs_errors(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=message):
        read_score_tsvs(tmp_path)


def test_predictions_kind(tmp_path, ground_truth):
    assert predictions_kind(ground_truth) == "events"
    (tmp_path / "ops").mkdir()
    (tmp_path / "ops" / "0.5.tsv").write_text(GROUND_TRUTH)
    assert predictions_kind(tmp_path / "ops") == "operating_points"
    (tmp_path / "scores").mkdir()
    write_score_tsv(tmp_path / "scores" / "f1.tsv", np.zeros((2, 1)), [0.0, 1.0, 2.0], ["a"])
    assert predictions_kind(tmp_path / "scores") == "scores"
    (tmp_path / "other").mkdir()
    with pytest.raises(InputError, match="no .tsv files"):
        predictions_kind(tmp_path / "other")
    (tmp_path / "other" / "x.tsv").write_text("a\tb\n")
    with pytest.raises(InputError, match=r"x.tsv: neither a detection table .* nor a score table"):
        predictions_kind(tmp_path / "other")
    with pytest.raises(InputError, match="no such file or directory"):
        predictions_kind(tmp_path / "absent")


def test_writing_needs_no_metric_library(tmp_path):
    """events.tsv and score tables are written with pandas alone: the [sed] metric libraries stay unimported."""
    code = f"""
import sys
import numpy as np
from htsat_hf.sed.io import write_events_tsv, write_score_tsv
write_events_tsv({{"f.wav": [(0.0, 1.0, "a", 0.9)]}}, {str(tmp_path / "events.tsv")!r})
write_score_tsv({str(tmp_path / "f.tsv")!r}, np.zeros((2, 1)), np.array([0.0, 0.5, 1.0]), ["a"])
loaded = sorted(name for name in ("sed_scores_eval", "sed_eval", "psds_eval", "matplotlib") if name in sys.modules)
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "events.tsv").read_text().splitlines()[1] == "f.wav\t0.0\t1.0\ta\t0.9"


# -------------------------------------------------------------------------------------------------------- thresholds


def test_read_thresholds_json_and_tsv(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"Dog": 0.39, "Cat": 0.51}))
    (tmp_path / "t.tsv").write_text("Dog\t0.39\n\nCat\t0.51\n")
    for name in ("t.json", "t.tsv"):
        assert read_thresholds(tmp_path / name) == {"Dog": 0.39, "Cat": 0.51}


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("t.tsv", "Dog\t0.39\nCat 0.51\n", r"t.tsv, line 2: expected 'label<TAB>threshold'"),
        ("t.tsv", "Dog\t0.39\nCat\thigh\n", r"t.tsv, line 2: threshold 'high' of 'Cat' is not a number"),
        ("t.tsv", "Dog\t0.39\nDog\t0.4\n", r"line 2: duplicate label 'Dog'"),
        ("t.tsv", "Dog\tinf\n", "must be finite"),
        ("t.tsv", "Dog\t0.39\nCat\t1.5\n", r"t.tsv, line 2: threshold of 'Cat' must be between 0 and 1, got '1.5'"),
        ("t.json", '{"Dog": -0.1}', r"threshold of 'Dog' must be between 0 and 1, got -0.1"),
        ("t.tsv", "\n\n", "t.tsv: no thresholds"),
        ("t.json", '["Dog", 0.39]', "expected a JSON object"),
        ("t.json", '{"Dog": "0.39"}', "must be a finite number"),
        ("t.json", "{Dog: 0.39}", "not JSON"),
        ("t.yaml", "Dog: 0.39", "unknown thresholds format"),
    ],
)
def test_read_thresholds_errors(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=message):
        read_thresholds(tmp_path / name)


def test_overlapping_ground_truth_events_of_one_class_are_merged(tmp_path, caplog):
    import logging

    from htsat_hf.sed.io import merge_intervals

    path = tmp_path / "gt.tsv"
    path.write_text(
        "filename\tonset\toffset\tevent_label\n"
        "a.wav\t1.0\t3.0\tDog\n"      # line 2
        "a.wav\t2.0\t4.0\tDog\n"      # line 3: overlaps line 2
        "a.wav\t2.5\t3.5\tCat\n"      # another class: kept
        "a.wav\t4.0\t5.0\tDog\n"      # touches the merged event: two events for the metrics
        "b.wav\t0.0\t1.0\tDog\n"
        "b.wav\t0.5\t0.8\tDog\n"      # line 7: inside line 6
        "c.wav\t\t\t\n"
    )
    with caplog.at_level(logging.WARNING):
        table = read_ground_truth_tsv(path)
    assert "a.wav (Dog): line 2, line 3" in caplog.text and "b.wav (Dog): line 6, line 7" in caplog.text
    assert str(path) in caplog.text
    rows = [tuple(row) for row in table.dropna().itertuples(index=False)]
    assert rows == [("a.wav", 1.0, 4.0, "Dog"), ("a.wav", 2.5, 3.5, "Cat"), ("a.wav", 4.0, 5.0, "Dog"),
                    ("b.wav", 0.0, 1.0, "Dog")]
    assert table["filename"].tolist()[-1] == "c.wav"
    assert merge_intervals([(2.0, 4.0), (1.0, 3.0), (4.0, 5.0)]) == [(1.0, 4.0), (4.0, 5.0)]
