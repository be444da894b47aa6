"""Strong-label training data (`htsat_hf.sed.targets`): frame targets on the model's grid, the clips of a folder in
the DESED layout, the collator, and frame F1."""

import numpy as np
import pytest
import soundfile
import torch

from htsat_hf import HTSATFeatureExtractor
from htsat_hf.errors import InputError
from htsat_hf.sed.targets import (
    StrongLabelCollator,
    compute_frame_metrics,
    frame_f1,
    frame_targets,
    read_strong_label_dir,
    read_strong_labels,
    strong_label_inputs,
)
from htsat_hf.sed.windows import grid_step_seconds

RATE = 32000


def test_frame_targets():
    labels = ["a", "b"]
    targets = frame_targets([(0.1, 0.4, "a"), (0.3, 0.6, "a"), (0.9, 2.0, "b")], labels, 4, 0.25)
    # a: union [0.1, 0.6): steps [0, .25) 0.6, [.25, .5) 1, [.5, .75) 0.4; b: [0.9, 1.0) of the grid's last step.
    np.testing.assert_allclose(targets[:, 0], [0.6, 1.0, 0.4, 0.0], atol=1e-6)
    np.testing.assert_allclose(targets[:, 1], [0.0, 0.0, 0.0, 0.4], atol=1e-6)
    majority = frame_targets([(0.1, 0.4, "a"), (0.3, 0.6, "a"), (0.9, 2.0, "b")], labels, 4, 0.25, mode="majority")
    np.testing.assert_array_equal(majority, [[1, 0], [1, 0], [0, 0], [0, 0]])
    with pytest.raises(ValueError, match="'c'"):
        frame_targets([(0.0, 1.0, "c")], labels, 4, 0.25)
    with pytest.raises(ValueError, match="target mode"):
        frame_targets([], labels, 4, 0.25, mode="soft")


def write_folder(root, files, annotations):
    (root / "audio").mkdir(parents=True)
    for name, seconds in files.items():
        soundfile.write(root / "audio" / name, np.full(int(seconds * RATE), 0.01, np.float32), RATE)
    (root / "annotations.tsv").write_text("filename\tonset\toffset\tevent_label\n" + annotations)
    return root


def test_strong_label_windows_and_collator(tmp_path):
    """A 25 s file is cut into 10 s clips (the last 5 s, zero-padded): events clipped to each, targets on the 10 s
    grid of the padded clip."""
    root = write_folder(
        tmp_path / "data", {"long.wav": 25, "short.wav": 3},
        "long.wav\t8.0\t12.0\ttone\nlong.wav\t19.0\t23.0\thum\nshort.wav\t\t\t\n",
    )
    examples, labels, skipped = read_strong_label_dir(root)
    assert labels == ["hum", "tone"] and skipped == []
    assert [(e.filename, e.start, e.seconds) for e in examples] == [
        ("long.wav", 0.0, 10.0), ("long.wav", 10.0, 10.0), ("long.wav", 20.0, 5.0), ("short.wav", 0.0, 3.0)
    ]
    assert examples[0].events == [(8.0, 10.0, "tone")]
    assert examples[1].events == [(0.0, 2.0, "tone"), (9.0, 10.0, "hum")]
    assert examples[2].events == [(0.0, 3.0, "hum")]
    assert examples[3].events == []

    extractor = HTSATFeatureExtractor()
    collator = StrongLabelCollator(extractor, labels)
    batch = collator(examples)
    assert batch["input_features"].shape == (4, 1001, 64)
    assert batch["labels"].shape == (4, 32, 2) and batch["labels"].dtype == torch.float32
    assert collator.step_seconds == grid_step_seconds(10 * RATE, 320, 32, RATE) == 0.3125
    hum = batch["labels"][2, :, 0].numpy()  # 0-3 s of the padded 20-25 s clip: 9.6 steps
    np.testing.assert_allclose(hum[:9], 1.0)
    assert hum[9] == pytest.approx(0.6) and not hum[10:].any()
    assert not batch["labels"][3].any()
    # The padding is silence (-100 dB), whatever the extractor's pad mode.
    assert batch["input_features"][2, 600:].max() == pytest.approx(-100.0)

    with pytest.raises(InputError, match="annotations.tsv, line 3: unknown event label"):
        read_strong_label_dir(root, labels=["tone"])
    (root / "audio" / "short.wav").unlink()
    with pytest.raises(InputError, match="short.wav: listed in .*annotations.tsv but missing"):
        read_strong_label_dir(root)
    assert [e.filename for e in read_strong_label_dir(root, skip_bad_audio=True)[0]] == ["long.wav"] * 3


def test_collator_skips_unreadable_clips_when_asked(tmp_path):
    root = write_folder(tmp_path / "data", {"a.wav": 2, "b.wav": 2}, "a.wav\t0.5\t1.0\ttone\nb.wav\t0.0\t1.0\ttone\n")
    examples, labels, _ = read_strong_label_dir(root)
    (root / "audio" / "b.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(InputError, match="b.wav"):
        StrongLabelCollator(HTSATFeatureExtractor(), labels)(examples)
    collator = StrongLabelCollator(HTSATFeatureExtractor(), labels, skip_bad_audio=True)
    assert collator(examples)["labels"].shape == (1, 32, 1) and collator.skipped == 1
    with pytest.raises(ValueError, match="target_mode"):
        StrongLabelCollator(HTSATFeatureExtractor(), labels, target_mode="soft")


def test_strong_label_folder_errors_and_inputs(tmp_path):
    with pytest.raises(InputError, match="expected a strong-label folder with audio/ and annotations.tsv"):
        read_strong_labels(tmp_path)
    root = write_folder(tmp_path / "empty", {"a.wav": 1}, "a.wav\t\t\t\n")
    with pytest.raises(InputError, match=r"annotations.tsv: no events"):
        read_strong_labels(root)
    root = write_folder(tmp_path / "data", {"b.wav": 1, "a.wav": 1, "extra.wav": 1},
                        "b.wav\t0.1\t0.5\ttone\na.wav\t\t\t\nb.wav\t0.6\t0.9\ttone\n")
    table, labels, annotations = read_strong_labels(root)
    assert labels == ["tone"] and annotations == root / "annotations.tsv" and len(table) == 3
    items, annotations, durations = strong_label_inputs(root)
    assert [item.name for item in items] == ["b.wav", "a.wav"] and durations is None
    assert items[0].path == str(root / "audio" / "b.wav")
    (root / "durations.tsv").write_text("filename\tduration\na.wav\t1\nb.wav\t1\n")
    assert strong_label_inputs(root)[2] == root / "durations.tsv"


def test_frame_f1():
    targets = np.zeros((2, 4, 2))
    targets[0, :2, 0] = 1
    perfect = frame_f1(np.where(targets > 0, 0.9, 0.1), targets)
    assert perfect == {"frame_f1_micro": 1.0, "frame_f1_macro": 1.0}
    half = frame_f1(np.full_like(targets, 0.9), targets)  # everything predicted: 2 TP, 14 FP
    assert half["frame_f1_micro"] == pytest.approx(4 / 18)


def test_compute_frame_metrics_reads_the_frame_logits():
    class Prediction:
        label_ids = np.zeros((1, 4, 1))
        predictions = (np.array([[[5.0], [-5.0], [-5.0], [-5.0]]]), np.zeros((1, 1)))  # frame and clip logits

    Prediction.label_ids[0, 0, 0] = 1
    assert compute_frame_metrics(Prediction()) == {"frame_f1_micro": 1.0, "frame_f1_macro": 1.0}


def test_frame_targets_and_ground_truth_share_one_merge():
    from htsat_hf.sed import io, targets

    assert targets.merge_intervals is io.merge_intervals
    overlapping = frame_targets([(0.0, 0.5, "a"), (0.25, 0.75, "a")], ["a"], 4, 0.25)
    np.testing.assert_allclose(overlapping[:, 0], [1, 1, 1, 0])
