"""Post-processing of frame scores into events (`htsat_hf.sed.postprocessing`): time grid, median filter, thresholds
and their resolution, run joining, the chain on arrays and on `FrameScores`, class maps."""

import json

import numpy as np
import pytest
from conftest import require_shared
from scipy import ndimage, signal

from htsat_hf.errors import InputError
from htsat_hf.sed.postprocessing import (
    DEFAULT_THRESHOLD,
    ClassMap,
    Event,
    activity_to_events,
    binarize,
    detect_events,
    frame_scores_events,
    frame_times,
    load_class_map,
    map_frame_scores,
    map_scores,
    median_filter_frame_scores,
    median_filter_kernel_frames,
    median_filter_scores,
    resolve_thresholds,
    scores_to_events,
    threshold_vector,
)
from htsat_hf.sed.windows import FrameScores

DESED_LABELS = [
    "Speech",
    "Frying",
    "Dishes",
    "Running_water",
    "Blender",
    "Electric_shaver_toothbrush",
    "Alarm_bell_ringing",
    "Cat",
    "Dog",
    "Vacuum_cleaner",
]


# --------------------------------------------------------------------------------------------------------- time grid


def test_frame_times_on_the_model_grid():
    times = frame_times(32, 10.0)
    assert times.shape == (33,)
    np.testing.assert_array_equal(np.diff(times), np.full(32, 0.3125))
    assert times[0] == 0.0 and times[-1] == 10.0
    np.testing.assert_array_equal(np.diff(frame_times(32, 4.0)), np.full(32, 0.125))


@pytest.mark.parametrize("steps, duration", [(0, 10.0), (2.5, 10.0), (32, 0.0), (32, -1.0), (32, float("nan"))])
def test_frame_times_rejects_bad_arguments(steps, duration):
    with pytest.raises(ValueError):
        frame_times(steps, duration)


# ------------------------------------------------------------------------------------------------------ median filter


@pytest.mark.parametrize(
    "hop, seconds, frames",
    [(0.3125, 0.45, 1), (0.125, 0.45, 3), (0.1, 0.5, 5), (0.1, 0.4, 5), (0.1, 0.39, 3), (0.1, 0.0, 1), (0.1, None, 1)],
)
def test_median_filter_length_is_the_nearest_odd_frame_count(hop, seconds, frames):
    assert median_filter_kernel_frames(hop, seconds) == frames


@pytest.mark.parametrize("seconds", [0.375, 0.625, 0.875])  # 3, 5 and 7 frames of 125 ms
def test_median_filter_equals_scipy(seconds):
    rng = np.random.default_rng(0)
    scores = rng.random((32, 4)).astype(np.float32)
    size = median_filter_kernel_frames(0.125, seconds)
    filtered = median_filter_scores(scores, 0.125, seconds)
    assert filtered.shape == scores.shape and filtered.dtype == scores.dtype
    np.testing.assert_array_equal(filtered, ndimage.median_filter(scores, size=(size, 1)))
    # medfilt zero-pads the edges; on a copy padded by reflection ("symmetric" in numpy's words, "reflect" in
    # scipy.ndimage's) it gives the same result everywhere.
    half = size // 2
    padded = np.pad(scores, ((half, half), (0, 0)), mode="symmetric")
    for column in range(scores.shape[1]):
        expected = signal.medfilt(padded[:, column], size)[half:-half]
        np.testing.assert_array_equal(filtered[:, column], expected)


def test_median_filter_removes_short_spikes_and_gaps():
    scores = np.zeros((12, 1))
    scores[3] = 1.0  # one-frame spike
    scores[6:11] = 1.0
    scores[8] = 0.0  # one-frame gap
    filtered = median_filter_scores(scores, 0.1, 0.3)
    np.testing.assert_array_equal(filtered[:, 0], [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0])


def test_no_median_filter_returns_a_copy():
    scores = np.arange(6.0).reshape(3, 2)
    for seconds in (0, None, 0.3):  # 0.3 s on a 0.3125 s grid is one frame
        filtered = median_filter_scores(scores, 0.3125, seconds)
        np.testing.assert_array_equal(filtered, scores)
        assert filtered is not scores


def test_median_filter_rejects_bad_arguments():
    with pytest.raises(ValueError, match="frames, classes"):
        median_filter_scores(np.zeros(5), 0.1, 0.3)
    with pytest.raises(ValueError, match="frame_hop_seconds"):
        median_filter_scores(np.zeros((5, 2)), 0.0, 0.3)
    with pytest.raises(ValueError, match="filter_seconds"):
        median_filter_scores(np.zeros((5, 2)), 0.1, -0.3)


# --------------------------------------------------------------------------------------------------------- thresholds


def test_binarize_is_strictly_greater_than_the_threshold():
    scores = np.array([[0.5, 0.2], [0.51, 0.21], [0.49, 0.2]])
    np.testing.assert_array_equal(binarize(scores, 0.5), [[False, False], [True, False], [False, False]])
    np.testing.assert_array_equal(binarize(scores, [0.5, 0.2]), [[False, False], [True, True], [False, False]])
    assert binarize(scores, np.array([0.5, 0.2])).dtype == np.bool_


def test_binarize_rejects_bad_thresholds():
    with pytest.raises(ValueError, match="one per class"):
        binarize(np.zeros((4, 3)), [0.5, 0.5])
    with pytest.raises(ValueError, match="finite"):
        binarize(np.zeros((4, 2)), [0.5, np.nan])


def test_threshold_vector_needs_exactly_the_classes():
    with pytest.raises(InputError, match=r"missing for \['Cat'\], unknown labels \['Cow'\]"):
        threshold_vector({"Dog": 0.3, "Cow": 0.2}, ["Dog", "Cat"])
    np.testing.assert_array_equal(threshold_vector({"Dog": 0.39, "Cat": 0.51}, ["Cat", "Dog"]), [0.51, 0.39])


def test_resolve_thresholds_from_every_source(tmp_path):
    labels = ["Dog", "Cat"]
    with_thresholds = ClassMap({"Dog": [0], "Cat": [1]}, 2, {"Dog": 0.39, "Cat": 0.51})
    without = ClassMap({"Dog": [0], "Cat": [1]}, 2)
    assert resolve_thresholds(labels) == DEFAULT_THRESHOLD == 0.5
    assert resolve_thresholds(labels, class_map=without) == 0.5
    np.testing.assert_array_equal(resolve_thresholds(labels, class_map=with_thresholds), [0.39, 0.51])
    # An explicit threshold wins over the class map's.
    assert resolve_thresholds(labels, 0.3, with_thresholds) == 0.3
    assert isinstance(resolve_thresholds(labels, np.float32(0.25)), float)
    np.testing.assert_array_equal(resolve_thresholds(labels, {"Cat": 0.2, "Dog": 0.7}), [0.7, 0.2])
    (tmp_path / "t.tsv").write_text("Cat\t0.2\nDog\t0.7\n")
    for file in (tmp_path / "t.tsv", str(tmp_path / "t.tsv")):
        np.testing.assert_array_equal(resolve_thresholds(labels, file), [0.7, 0.2])


@pytest.mark.parametrize("threshold, message", [
    (float("nan"), "finite number"), (True, "finite number"), ("0.5", "unknown thresholds format"),
    ({"Dog": 0.5}, r"missing for \['Cat'\]"),
])
def test_resolve_thresholds_errors(threshold, message):
    with pytest.raises(InputError, match=message):
        resolve_thresholds(["Dog", "Cat"], threshold)


def test_resolve_thresholds_names_a_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"absent.tsv: cannot read the thresholds file"):
        resolve_thresholds(["Dog"], tmp_path / "absent.tsv")


# ----------------------------------------------------------------------------------------------------------- events


def _activity(frames, classes, runs):
    active = np.zeros((frames, classes), dtype=bool)
    for column, start, stop in runs:
        active[start:stop, column] = True
    return active


def test_events_land_on_the_step_boundaries():
    times = frame_times(32, 10.0)  # 0.3125 s steps
    active = _activity(32, 2, [(0, 0, 4), (0, 10, 11), (1, 3, 32)])
    events = activity_to_events(active, times, ["Dog", "Cat"])
    assert events == [
        Event(0.0, 1.25, "Dog", None),
        Event(0.9375, 10.0, "Cat", None),
        Event(3.125, 3.4375, "Dog", None),
    ]
    assert activity_to_events(np.zeros((32, 2), dtype=bool), times, ["Dog", "Cat"]) == []


def test_event_score_is_the_peak_of_its_frames():
    times = frame_times(8, 4.0)
    scores = np.array([[0.1, 0.9], [0.6, 0.8], [0.7, 0.2], [0.2, 0.1], [0.8, 0.1], [0.95, 0.1], [0.1, 0.7], [0.1, 0.6]])
    events = activity_to_events(binarize(scores, 0.5), times, ["a", "b"], scores=scores)
    assert events == [
        Event(0.0, 1.0, "b", 0.9),
        Event(0.5, 1.5, "a", 0.7),
        Event(2.0, 3.0, "a", 0.95),
        Event(3.0, 4.0, "b", 0.7),
    ]


def test_min_gap_merges_then_min_duration_drops():
    times = frame_times(16, 2.0)  # 0.125 s frames
    # Class a: one-frame runs at frames 0, 2 and 4 (gaps of 0.125 s) and 10; class b: frames 12 to 14.
    active = _activity(16, 2, [(0, 0, 1), (0, 2, 3), (0, 4, 5), (0, 10, 11), (1, 12, 15)])
    scores = np.where(active, 0.6, 0.0)
    scores[4, 0] = 0.9
    labels = ["a", "b"]
    assert len(activity_to_events(active, times, labels)) == 5
    # A 0.125 s gap is not shorter than 0.125 s: nothing merges.
    assert len(activity_to_events(active, times, labels, min_gap=0.125)) == 5
    merged = activity_to_events(active, times, labels, scores=scores, min_gap=0.2)
    assert [(e.onset, e.offset, e.label) for e in merged] == [(0.0, 0.625, "a"), (1.25, 1.375, "a"), (1.5, 1.875, "b")]
    assert [e.score for e in merged] == [0.9, 0.6, 0.6]
    # The merged 0.625 s event survives a 0.3 s minimum; single 0.125 s blips do not.
    kept = activity_to_events(active, times, labels, min_gap=0.2, min_duration=0.3)
    assert [(e.onset, e.offset, e.label) for e in kept] == [(0.0, 0.625, "a"), (1.5, 1.875, "b")]
    kept = activity_to_events(active, times, labels, min_duration=0.3)
    assert [(e.onset, e.offset, e.label) for e in kept] == [(1.5, 1.875, "b")]


def test_activity_to_events_rejects_bad_inputs():
    times = frame_times(4, 1.0)
    with pytest.raises(ValueError, match="boolean"):
        activity_to_events(np.zeros((4, 2)), times, ["a", "b"])
    with pytest.raises(ValueError, match="5 boundaries of 4 frames"):
        activity_to_events(np.zeros((4, 2), bool), times[:-1], ["a", "b"])
    with pytest.raises(ValueError, match="strictly increasing"):
        activity_to_events(np.zeros((4, 2), bool), times[::-1], ["a", "b"])
    with pytest.raises(ValueError, match="1 labels for 2 classes"):
        activity_to_events(np.zeros((4, 2), bool), times, ["a"])
    with pytest.raises(ValueError, match="shape of active"):
        activity_to_events(np.zeros((4, 2), bool), times, ["a", "b"], scores=np.zeros((4, 3)))
    with pytest.raises(ValueError, match=">= 0"):
        activity_to_events(np.zeros((4, 2), bool), times, ["a", "b"], min_gap=-1)


def test_detect_events_chains_filter_thresholds_and_runs():
    scores = np.zeros((32, 2), dtype=np.float32)
    scores[8:16, 0] = 0.8
    scores[12, 0] = 0.1  # a one-step dip that a 3-step median filter removes
    scores[20, 1] = 0.9  # a one-step spike that it removes
    scores[24:28, 1] = 0.6
    events = detect_events(scores, 4.0, ["a", "b"], [0.5, 0.5], filter_seconds=0.375)
    assert [(e.onset, e.offset, e.label) for e in events] == [(1.0, 2.0, "a"), (3.0, 3.5, "b")]
    assert events[0].score == pytest.approx(0.8)
    unfiltered = detect_events(scores, 4.0, ["a", "b"], 0.5)
    assert len(unfiltered) == 4
    assert unfiltered == scores_to_events(scores, frame_times(32, 4.0), ["a", "b"], 0.5)


def _frame_scores(scores, duration, labels=("a", "b")):
    scores = np.asarray(scores, np.float32)
    return FrameScores(scores, 0.125, duration, list(labels), {"max": scores.max(0)})


def test_frame_scores_events_on_a_clipped_last_step():
    """A FrameScores' last step ends at the audio's end: events reach it, and the median filter counts steps of
    `step_seconds`, not of the shorter last one."""
    scores = np.zeros((32, 2), dtype=np.float32)
    scores[8:16, 0] = 0.8
    scores[12, 0] = 0.1
    scores[29:32, 1] = 0.7
    frame_scores = _frame_scores(scores, 3.9)  # 32 steps of 125 ms, the last one 25 ms
    events = frame_scores_events(frame_scores, [0.5, 0.5], median_filter_seconds=0.375)
    assert [(e.onset, e.offset, e.label) for e in events] == [(1.0, 2.0, "a"), (3.625, 3.9, "b")]
    filtered = median_filter_frame_scores(frame_scores, 0.375)
    assert filtered.step_seconds == 0.125 and filtered.duration == 3.9 and filtered.labels == ["a", "b"]
    np.testing.assert_array_equal(filtered.scores, median_filter_scores(scores, 0.125, 0.375))
    assert frame_scores_events(filtered, [0.5, 0.5]) == events


def test_map_frame_scores_keeps_the_time_axis():
    scores = np.random.default_rng(0).random((10, 3)).astype(np.float32)
    frame_scores = _frame_scores(scores, 1.2, ("x", "y", "z"))
    class_map = ClassMap({"xz": [0, 2], "y": [1]}, 3)
    mapped = map_frame_scores(frame_scores, class_map)
    assert mapped.labels == ["xz", "y"] and mapped.step_seconds == 0.125 and mapped.duration == 1.2
    np.testing.assert_array_equal(mapped.scores, np.stack([scores[:, [0, 2]].max(1), scores[:, 1]], 1))
    np.testing.assert_array_equal(mapped.clip_scores["max"], map_scores(scores.max(0), class_map))
    np.testing.assert_array_equal(map_frame_scores(frame_scores, {"y": [1]}).scores, scores[:, [1]])


# -------------------------------------------------------------------------------------------------------- class maps


def test_packaged_desed_map_is_the_papers():
    class_map = load_class_map("desed", num_classes=527)
    assert class_map.labels == DESED_LABELS
    assert class_map.num_source_classes == 527
    assert class_map.classes["Speech"] == list(range(8))
    assert class_map.classes["Frying"] == [366, 367, 368]
    assert class_map.classes["Dishes"] == [364]
    assert class_map.classes["Running_water"] == list(range(288, 298))
    assert class_map.classes["Blender"] == [369]
    assert class_map.classes["Electric_shaver_toothbrush"] == [382]
    assert class_map.classes["Alarm_bell_ringing"] == [310, *range(388, 403)]
    assert class_map.classes["Cat"] == list(range(81, 86))
    assert class_map.classes["Dog"] == list(range(74, 80))
    assert class_map.classes["Vacuum_cleaner"] == [377]
    np.testing.assert_array_equal(
        class_map.threshold_vector(), [0.275, 0.2, 0.20, 0.23, 0.48, 0.20, 0.18, 0.51, 0.39, 0.14]
    )


def test_desed_map_indices_name_the_expected_audioset_classes():
    import csv

    path = require_shared("audioset/class_labels_indices.csv")
    with open(path, newline="", encoding="utf-8") as file:
        names = {int(row["index"]): row["display_name"] for row in csv.DictReader(file)}
    classes = load_class_map("desed").classes
    assert (names[classes["Speech"][0]], names[classes["Dog"][0]], names[classes["Cat"][0]]) == ("Speech", "Dog", "Cat")
    assert names[classes["Blender"][0]] == "Blender"
    assert names[classes["Vacuum_cleaner"][0]] == "Vacuum cleaner"
    assert names[classes["Frying"][1]] == "Frying (food)"
    assert names[classes["Alarm_bell_ringing"][1]] == "Alarm"


def test_map_scores_takes_the_maximum_over_member_classes():
    rng = np.random.default_rng(1)
    scores = rng.random((32, 527)).astype(np.float32)
    class_map = load_class_map("desed")
    mapped = map_scores(scores, class_map)
    assert mapped.shape == (32, 10) and mapped.dtype == np.float32
    for column, indices in enumerate(class_map.classes.values()):
        np.testing.assert_array_equal(mapped[:, column], scores[:, indices].max(axis=1))
    # Batched input and a plain dict.
    batched = map_scores(np.stack([scores, scores[::-1]]), {"x": [3, 1], "y": [0]})
    np.testing.assert_array_equal(batched[1, :, 0], np.maximum(scores[::-1, 3], scores[::-1, 1]))


def test_map_scores_errors():
    with pytest.raises(ValueError, match=r"indices \[527\] outside the 527 classes"):
        map_scores(np.zeros((4, 527)), {"x": [0, 527]})
    with pytest.raises(ValueError, match="no source classes"):
        map_scores(np.zeros((4, 10)), {"x": []})
    with pytest.raises(ValueError, match="empty"):
        map_scores(np.zeros((4, 10)), {})
    with pytest.raises(ValueError, match="outside the 50 classes"):
        map_scores(np.zeros((4, 50)), load_class_map("desed"))


def _write_map(tmp_path, document):
    path = tmp_path / "map.json"
    path.write_text(json.dumps(document))
    return path


def test_user_class_map(tmp_path):
    path = _write_map(
        tmp_path,
        {"num_source_classes": 5, "classes": [{"label": "low", "indices": [0, 1]}, {"label": "high", "indices": [4]}]},
    )
    class_map = load_class_map(path, num_classes=5)
    assert class_map == ClassMap(classes={"low": [0, 1], "high": [4]}, num_source_classes=5)
    with pytest.raises(ValueError, match="carries no thresholds"):
        class_map.threshold_vector()
    np.testing.assert_array_equal(map_scores(np.arange(5.0), class_map), [1.0, 4.0])


@pytest.mark.parametrize(
    "document, message",
    [
        ({"Speech": [0, 1]}, "unknown class map format"),
        ([{"label": "a", "indices": [0]}], "unknown class map format"),
        ({"num_source_classes": 5, "classes": [], "extra": 1}, "unknown keys"),
        ({"num_source_classes": 5, "classes": []}, "non-empty list"),
        ({"num_source_classes": 0, "classes": [{"label": "a", "indices": [0]}]}, "positive integer"),
        ({"num_source_classes": 5, "classes": [{"label": "a", "indices": [0, 5]}]}, r"indices \[5\] are out of range"),
        ({"num_source_classes": 5, "classes": [{"label": "a", "indices": [-1]}]}, "out of range"),
        ({"num_source_classes": 5, "classes": [{"label": "a", "indices": []}]}, "non-empty list of integers"),
        ({"num_source_classes": 5, "classes": [{"label": "a", "indices": [1.5]}]}, "non-empty list of integers"),
        ({"num_source_classes": 5, "classes": [{"name": "a", "indices": [1]}]}, "unknown entry format"),
        (
            {"num_source_classes": 5, "classes": [{"label": "a", "indices": [1]}, {"label": "a", "indices": [2]}]},
            "duplicate label 'a'",
        ),
        (
            {
                "num_source_classes": 5,
                "classes": [{"label": "a", "indices": [1], "threshold": 0.5}, {"label": "b", "indices": [2]}],
            },
            r"all classes or none; missing for \['b'\]",
        ),
        ({"num_source_classes": 5, "classes": [{"label": "a", "indices": [1], "threshold": "x"}]}, "finite number"),
    ],
)
def test_user_class_map_errors(tmp_path, document, message):
    with pytest.raises(InputError, match=message):
        load_class_map(_write_map(tmp_path, document))


def test_class_map_must_fit_the_model(tmp_path):
    with pytest.raises(InputError, match="maps a model with 527 classes, but the model has 50 classes"):
        load_class_map("desed", num_classes=50)
    with pytest.raises(InputError, match="neither a packaged class map"):
        load_class_map(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not JSON"):
        load_class_map(tmp_path / "bad.json")
