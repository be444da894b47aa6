"""`htsat_hf.synthetic`'s folder generators write a new or empty folder: a re-run into a used one (with fewer files)
left the earlier clips beside the rewritten metadata.csv / annotations.tsv. A used folder is refused in one line, or
replaced as a whole with `overwrite=True`."""

import csv

import pytest

from htsat_hf.errors import InputError
from htsat_hf.synthetic import make_classification_folder, make_detection_folder

RATE = 16000


def names(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def test_classification_folder_refuses_a_used_folder_unless_overwritten(tmp_path):
    root = make_classification_folder(tmp_path / "clips", ("tone", "hum"), 3, 0.5, RATE, seed=0)
    before = {name: (root / name).read_bytes() for name in names(root)}
    with pytest.raises(InputError) as caught:
        make_classification_folder(root, ("tone",), 1, 0.5, RATE, seed=1)
    assert str(caught.value) == (f"{root}: the folder is not empty (an earlier data set?); generate into a new or "
                                 "empty folder, or replace it as a whole with overwrite=True")
    assert {name: (root / name).read_bytes() for name in names(root)} == before

    assert make_classification_folder(root, ("tone",), 1, 0.5, RATE, seed=1, overwrite=True) == root
    assert names(root) == ["metadata.csv", "tone_0.wav"]  # no clip of the earlier set is left
    with (root / "metadata.csv").open() as handle:
        assert [row["file_name"] for row in csv.DictReader(handle)] == ["tone_0.wav"]
    assert [path.name for path in tmp_path.iterdir()] == ["clips"]  # no temporary folder left


def test_detection_folder_refuses_a_used_folder_unless_overwritten(tmp_path):
    root = make_detection_folder(tmp_path / "scenes", num_files=3, seconds=2.5, sampling_rate=RATE, events_per_file=1,
                                 max_event=1.0)
    with pytest.raises(InputError, match=r"scenes: the folder is not empty"):
        make_detection_folder(root, num_files=1, seconds=2.5, sampling_rate=RATE, events_per_file=1, max_event=1.0)
    assert len(list((root / "audio").iterdir())) == 3
    make_detection_folder(root, num_files=1, seconds=2.5, sampling_rate=RATE, events_per_file=1, max_event=1.0,
                          overwrite=True)
    assert names(root) == ["annotations.tsv", "audio/scene_000.wav", "durations.tsv"]


def test_an_empty_folder_is_used_and_a_file_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    assert names(make_classification_folder(tmp_path / "empty", ("tone",), 1, 0.5, RATE)) == [
        "metadata.csv", "tone_0.wav"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"file: is a file, not a folder to generate a data set in"):
        make_detection_folder(tmp_path / "file", num_files=1, seconds=2.5, sampling_rate=RATE, events_per_file=1,
                              max_event=1.0)
