"""Batch inputs (`htsat_hf.inputs`): files, folders (recursive) and list files, the rows of a `datasets` split (also
streamed), the Python API's mixed inputs, and the errors that name the file and line."""

import numpy as np
import pytest
import soundfile

from htsat_hf.audio import load_waveform
from htsat_hf.errors import InputError
from htsat_hf.inputs import AudioItem, StreamingItems, as_items, collect_inputs, dataset_items
from htsat_hf.synthetic import make_classification_folder

RATE = 32000


@pytest.fixture
def folder(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in ("b.wav", "a.flac", "c.WAV"):
        soundfile.write(audio / name, np.full(RATE // 2, 0.01, np.float32), RATE)
    (audio / "notes.txt").write_text("not audio")
    (audio / "sub").mkdir()
    soundfile.write(audio / "sub" / "deep.wav", np.zeros(RATE, np.float32), RATE)
    (audio / "sub" / "deeper").mkdir()
    soundfile.write(audio / "sub" / "deeper" / "b.Flac", np.zeros(RATE, np.float32), RATE, format="FLAC")
    return audio


def test_folders_files_and_list_files(folder, tmp_path):
    items = collect_inputs([folder])
    # Recursive, audio extensions in any case, sorted by path inside the folder, named by it.
    assert [item.name for item in items] == ["a.flac", "b.wav", "c.WAV", "sub/deep.wav", "sub/deeper/b.Flac"]
    assert items[0] == AudioItem("a.flac", str(folder / "a.flac"))
    assert items[-1] == AudioItem("sub/deeper/b.Flac", str(folder / "sub" / "deeper" / "b.Flac"))
    assert items[-1].audio_id == "sub/deeper/b"
    listing = tmp_path / "files.txt"
    listing.write_text(f"# a comment\n\naudio/b.wav\n  {folder / 'sub' / 'deep.wav'}  \n")
    items = collect_inputs([listing, folder / "a.flac", folder / "b.wav"])  # b.wav twice: kept once
    assert [(item.name, item.path) for item in items] == [
        ("b.wav", str(tmp_path / "audio" / "b.wav")), ("deep.wav", str(folder / "sub" / "deep.wav")),
        ("a.flac", str(folder / "a.flac")),
    ]
    assert items[0].audio_id == "b" and AudioItem("x.y.wav").audio_id == "x.y"


def test_input_errors(folder, tmp_path):
    listing = tmp_path / "files.txt"
    listing.write_text("audio/b.wav\n\nmissing.wav\n")
    with pytest.raises(InputError, match=r"files.txt, line 3: .*missing.wav does not exist"):
        collect_inputs([listing])
    assert [item.name for item in collect_inputs([listing], skip_missing=True)] == ["b.wav"]
    with pytest.raises(InputError, match=r"nowhere: no such file or folder"):
        collect_inputs([tmp_path / "nowhere"])
    (tmp_path / "silent").mkdir()
    with pytest.raises(InputError, match=r"silent: no audio files"):
        collect_inputs([tmp_path / "silent"])
    other = tmp_path / "other"
    other.mkdir()
    soundfile.write(other / "b.wav", np.zeros(RATE, np.float32), RATE)
    with pytest.raises(InputError, match=r"two inputs have the name 'b.wav' \(.*audio/b.wav and .*other/b.wav\)"):
        collect_inputs([folder, other])
    # Where outputs name files by path (htsat-hf predict), the same name in two folders is fine.
    assert [item.path for item in collect_inputs([folder / "b.wav", other], keyed_by_name=False)] == [
        str(folder / "b.wav"), str(other / "b.wav")]
    # Recursion makes same-named files normal; where names would collide, it is one line naming both files.
    (tmp_path / "dup").mkdir()
    soundfile.write(tmp_path / "dup" / "deep.wav", np.zeros(RATE, np.float32), RATE)
    with pytest.raises(InputError, match=r"two inputs have the name 'deep.wav' \(.*sub/deep.wav and .*dup/deep.wav\)"):
        collect_inputs([folder / "sub" / "deep.wav", tmp_path / "dup"])
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match=r"no audio to process"):
        collect_inputs([tmp_path / "empty.txt"])
    (tmp_path / "data.bin").write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(InputError, match=r"data.bin: not a text list of audio files"):
        collect_inputs([tmp_path / "data.bin"])


def test_items_load_through_the_audio_layer(folder, tmp_path):
    item = collect_inputs([folder / "b.wav"])[0]
    np.testing.assert_array_equal(item.load(RATE), load_waveform(folder / "b.wav", RATE))
    assert item.load(16000).shape == (RATE // 4,)  # resampled
    (folder / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(InputError, match=r"broken.wav: cannot decode"):
        AudioItem("broken.wav", str(folder / "broken.wav")).load(RATE)


def test_dataset_split_rows(tmp_path):
    root = make_classification_folder(tmp_path / "clips", classes=("tone", "hum"), clips_per_class=2, seconds=0.5)
    items = dataset_items(str(root), None, "train", "audio")
    assert sorted(item.name for item in items) == ["hum_0.wav", "hum_1.wav", "tone_0.wav", "tone_1.wav"]
    for item in items:
        assert item.path is None and item.source == f"{item.name} (row {item.index})"
        np.testing.assert_array_equal(item.load(RATE), load_waveform(root / item.name, RATE))
    with pytest.raises(InputError, match=r"has no column 'sound'"):
        dataset_items(str(root), None, "train", "sound")
    with pytest.raises(InputError, match=r"cannot load split 'test'"):
        dataset_items(str(root), None, "test", "audio")


def test_every_dataset_audio_form_gives_the_scores_of_the_file(tmp_path):
    """Decoded dicts (array + sampling_rate, float or int16), undecoded {path, bytes}, torchcodec decoders and
    path columns all go through `load_waveform`: same samples, same detection scores as the file."""
    from test_sed_windows import loudness_model, scene

    from htsat_hf.sed.detection import check_audio_items, file_scores, resolve_settings

    model, extractor = loudness_model()
    wave = scene(3.0, [(0.5, 1.5)])
    pcm = np.round(wave * 32767).astype(np.int16)
    path = tmp_path / "x.wav"
    soundfile.write(path, pcm, RATE, subtype="PCM_16")
    reference = load_waveform(path, RATE)
    settings = resolve_settings(model)
    expected = file_scores(model, extractor, reference, settings).scores
    forms = {
        "path": {"audio": str(path)},
        "undecoded": {"audio": {"path": None, "bytes": path.read_bytes()}},
        "decoded float": {"audio": {"array": pcm.astype(np.float32) / 32768, "sampling_rate": RATE}},
        "decoded int16": {"audio": {"array": pcm, "sampling_rate": RATE}},
        "list": {"audio": {"array": (pcm.astype(np.float32) / 32768).tolist(), "sampling_rate": RATE}},
    }
    try:
        from torchcodec.decoders import AudioDecoder

        forms["decoder"] = {"audio": AudioDecoder(str(path))}
    except ImportError:
        pass
    rows = list(forms.values())
    items = [AudioItem(f"{name}.wav", dataset=rows, index=i) for i, name in enumerate(forms)]
    assert check_audio_items(items) == (items, [])
    for item in items:
        np.testing.assert_allclose(item.load(RATE), reference, atol=1e-6, err_msg=item.name)
        np.testing.assert_allclose(file_scores(model, extractor, item.load(RATE), settings).scores, expected,
                                   atol=1e-6, err_msg=item.name)
    broken = AudioItem("broken.wav", dataset=[{"audio": {"path": "broken.wav", "bytes": b"RIFFnope"}}], index=0)
    with pytest.raises(InputError, match=r"broken.wav \(row 0\): cannot decode"):
        check_audio_items([broken])
    assert check_audio_items([broken], skip_bad_audio=True)[1][0][0] == "broken.wav"


def test_streamed_dataset_rows_match_the_loaded_ones(tmp_path):
    root = make_classification_folder(tmp_path / "clips", classes=("tone", "hum"), clips_per_class=2, seconds=0.5)
    loaded = dataset_items(str(root), None, "train", "audio")
    streamed = dataset_items(str(root), None, "train", "audio", streaming=True)
    assert isinstance(streamed, StreamingItems)
    rows = list(streamed)
    assert [item.name for item in rows] == [item.name for item in loaded] == [item.name for item in streamed]
    for row, item in zip(rows, loaded):
        assert row.path is None and row.dataset is None
        np.testing.assert_array_equal(row.load(RATE), item.load(RATE))


def test_python_api_inputs(folder, tmp_path):
    wave = np.zeros(RATE, np.float32)
    items = as_items([folder / "b.wav", wave, {"array": wave, "sampling_rate": 16000}, str(folder / "sub")])
    assert [(item.name, item.path) for item in items] == [
        ("b.wav", str(folder / "b.wav")), ("audio_1", None), ("audio_2", None),
        ("deep.wav", str(folder / "sub" / "deep.wav")), ("deeper/b.Flac", str(folder / "sub" / "deeper" / "b.Flac")),
    ]
    assert items[1].audio is wave and items[2].load(RATE).shape == (2 * RATE,)
    assert [item.name for item in as_items(wave.tolist())] == ["audio_0"]  # a list of numbers is one clip
    assert [item.path for item in as_items(folder / "a.flac")] == [str(folder / "a.flac")]
    with pytest.raises(InputError, match="no audio to process"):
        as_items([])
    with pytest.raises(InputError, match="nowhere: no such file or folder"):
        as_items([wave, tmp_path / "nowhere"])


def test_hidden_files_broken_links_and_list_lines(folder, tmp_path):
    """Folders skip dot-files, AppleDouble `._*` files and dot-folders (a dot-file given by itself is read); a broken
    link is kept so the run reports it; a listed folder, a list listing itself or another list is one clear line."""
    (folder / "._b.wav").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    soundfile.write(folder / ".hidden.wav", np.zeros(RATE, np.float32), RATE)
    (folder / ".cache").mkdir()
    soundfile.write(folder / ".cache" / "x.wav", np.zeros(RATE, np.float32), RATE)
    (folder / "broken.wav").symlink_to(folder / "gone.wav")
    items = collect_inputs([folder])
    assert [item.name for item in items] == ["a.flac", "b.wav", "broken.wav", "c.WAV", "sub/deep.wav",
                                            "sub/deeper/b.Flac"]
    with pytest.raises(InputError, match=r"broken.wav: no such file$"):
        items[2].load(RATE)
    assert [item.name for item in collect_inputs([folder / ".hidden.wav"])] == [".hidden.wav"]
    listing = tmp_path / "files.txt"
    listing.write_text("audio/b.wav\naudio\n")
    with pytest.raises(InputError, match=r"files.txt, line 2: .*audio is a folder; list files name audio files$"):
        collect_inputs([listing])
    listing.write_text("audio/b.wav\n\nfiles.txt\n")
    with pytest.raises(InputError, match=r"files.txt, line 3: a list file cannot list itself$"):
        collect_inputs([listing])
    (tmp_path / "other.txt").write_text("audio/c.WAV\n")
    listing.write_text("other.txt\n")
    with pytest.raises(InputError, match=r"files.txt, line 1: .*other.txt is not an audio file .*not other lists$"):
        collect_inputs([listing])
