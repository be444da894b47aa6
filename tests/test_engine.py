"""The inference engine (`htsat_hf.engine`): results equal to the one-file code paths (`predict_file`, run_sed's
`file_scores` + `postprocess`), the streamed median filter and event joining equal to the whole-file functions,
flat memory in duration, batches packed across files, worker and process sharding with deterministic output, and
the journalled, resumable outputs (a run killed with SIGKILL, then resumed); with several processes, a refusal or an
error in one of them ends every one with its line (none left waiting)."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
import torch
from scipy import ndimage
from test_cli import save_model, tone
from test_sed_windows import RATE, loudness_model, scene
from transformers import pipeline

from htsat_hf import (
    HTSATFeatureExtractor,
    HTSATForAudioClassification,
    HTSATForSoundEventDetection,
    predict_files,
    sliding_window_scores,
)
from htsat_hf.engine import (
    InferenceEngine,
    WindowPlan,
    _EventStream,
    _FileAssembler,
    _MedianStream,
    in_input_order,
    write_predictions,
)
from htsat_hf import cpu_fast_path_htsat as fast_path
from htsat_hf.cli import main
from htsat_hf.errors import InputError
from htsat_hf.inputs import AudioItem, collect_inputs
from htsat_hf.modeling_htsat import stretch_spectrogram
from htsat_hf.predict import load_predictor, predict_file
from htsat_hf.sed.detection import file_scores, postprocess, resolve_settings
from htsat_hf.sed.io import write_score_tsv
from htsat_hf.sed.postprocessing import ClassMap, activity_to_events, binarize
from htsat_hf.synthetic import make_detection_folder

from conftest import tiny_config


def assert_same_events(got, expected, atol=1e-5):
    assert [e.label for e in got] == [e.label for e in expected]
    np.testing.assert_allclose(np.reshape([(e.onset, e.offset, e.score) for e in got], (-1, 3)),
                               np.reshape([(e.onset, e.offset, e.score) for e in expected], (-1, 3)), atol=atol)


def assert_same_prediction(got, expected, atol=1e-5):
    assert got.path == expected.path and got.duration == pytest.approx(expected.duration, abs=1e-9)
    assert [label for label, _ in got.tags] == [label for label, _ in expected.tags]
    np.testing.assert_allclose([s for _, s in got.tags], [s for _, s in expected.tags], atol=atol)
    assert_same_events(got.events, expected.events, atol)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A folder of scenes with known events: long (stitched windows, events across window edges and at the end),
    exactly one clip, shorter than a clip, stereo at 16 kHz in a sub-folder."""
    folder = tmp_path_factory.mktemp("scenes")
    (folder / "sub").mkdir()
    soundfile.write(folder / "long.wav", scene(47.3, [(1, 3), (9.5, 10.7), (12.2, 20.5), (30, 30.4), (40, 47.3)]),
                    RATE)
    soundfile.write(folder / "ten.wav", scene(10.0, [(2, 5)]), RATE)
    soundfile.write(folder / "short.WAV", scene(4.0, [(1, 2)]), RATE)
    wave = scene(6.0, [(0.5, 1.5), (3, 5)])[::2]
    soundfile.write(folder / "sub" / "stereo16k.flac", np.stack([wave, wave], axis=1), 16000)
    return folder


# ----------------------------------------------------------------------------------------------- equal results


@pytest.mark.parametrize("median_filter, num_workers", [(None, 0), (0.95, 2), (2.2, 1)])
def test_events_equal_predict_file(scenes, median_filter, num_workers):
    model, extractor = loudness_model(("low", "high"))
    results = predict_files([scenes], model, extractor, median_filter_seconds=median_filter, batch_size=3,
                            num_workers=num_workers)
    assert [r.path for r in results] == [str(p) for p in (scenes / "long.wav", scenes / "short.WAV",
                                                          scenes / "sub/stereo16k.flac", scenes / "ten.wav")]
    assert sum(len(r.events) for r in results) >= 5  # real events, found
    for result in results:
        assert_same_prediction(result, predict_file(model, extractor, result.path,
                                                    median_filter_seconds=median_filter))


@pytest.mark.parametrize("problem_type", ["multi_label_classification", "single_label_classification"])
def test_tags_equal_predict_file(tmp_path, scenes, problem_type):
    model_dir = save_model(tmp_path / "model", problem_type=problem_type)
    model, extractor = load_predictor(model_dir)
    # Long (windows averaged), exactly one clip (its window is the tagging pass), shorter (padded tagging pass).
    files = [scenes / "long.wav", scenes / "ten.wav", scenes / "short.WAV"]
    class_map = ClassMap({"pets": [0, 1], "alarm": [2]}, 3) if problem_type.startswith("multi") else None
    results = predict_files(files, model, extractor, top_k=3, threshold=0.6, batch_size=5, class_map=class_map)
    for result in results:
        assert len(result.tags) == (2 if class_map else 3)
        assert_same_prediction(result, predict_file(model, extractor, result.path, top_k=3, threshold=0.6,
                                                    class_map=class_map))


def test_detection_scores_and_score_files_equal_run_sed(scenes, tmp_path):
    """run_sed's options (window, hop, padded short audio, min duration and gap): the streamed, filtered scores
    equal `file_scores` + `postprocess` on the whole waveform, and the score files equal `write_score_tsv`'s bytes."""
    model, extractor = loudness_model(("low", "high"))
    items = collect_inputs([scenes])
    for options in (dict(median_filter_seconds=1.6, min_duration=0.5, min_gap=1.0),
                    dict(window_seconds=4.0, hop_seconds=1.0, short_audio="pad", median_filter_seconds=0.7)):
        settings = resolve_settings(model, batch_size=4, **options)
        engine = InferenceEngine(model, extractor, settings, top_k=0)
        results = list(engine.run(items, scores_dir=tmp_path / "scores", keep_scores=True))
        assert [r.index for r in results] == list(range(len(items)))
        for item, result in zip(items, results):
            expected_scores, expected_events = postprocess(
                file_scores(model, extractor, item.load(RATE), settings), settings)
            np.testing.assert_allclose(result.scores.scores, expected_scores.scores, atol=1e-6)
            np.testing.assert_allclose(result.scores.boundaries, expected_scores.boundaries, atol=1e-12)
            assert_same_events(result.prediction.events, expected_events, atol=1e-6)
            write_score_tsv(tmp_path / "expected.tsv", result.scores.scores, result.scores.boundaries,
                            settings.labels)
            written = tmp_path / "scores" / f"{item.audio_id}.tsv"
            assert written.read_bytes() == (tmp_path / "expected.tsv").read_bytes()


# ------------------------------------------------------------------------------------------------ streaming parts


@pytest.mark.parametrize("size", [1, 3, 7, 21])
@pytest.mark.parametrize("length", [1, 4, 11, 60])
def test_median_stream_equals_the_whole_file_filter(size, length):
    rng = np.random.default_rng(size * 100 + length)
    rows = rng.random((length, 3)).astype(np.float32)
    stream, out, position = _MedianStream(size), [], 0
    while position < length:
        chunk = int(rng.integers(0, 6))
        out.append(stream.push(rows[position : position + chunk]))
        position += chunk
    out.append(stream.finish())
    np.testing.assert_array_equal(np.concatenate([o.reshape(-1, 3) for o in out]),
                                  ndimage.median_filter(rows, size=(size, 1)))


@pytest.mark.parametrize("min_duration, min_gap", [(0.0, 0.0), (0.7, 0.0), (0.0, 1.1), (0.9, 0.8)])
def test_event_stream_equals_activity_to_events(min_duration, min_gap):
    rng = np.random.default_rng(7)
    for length in (1, 5, 40, 97):
        rows = rng.random((length, 4)).astype(np.float32)
        rows[:, 3] = 0.9  # a class active from start to end
        thresholds = np.array([0.5, 0.3, 0.8, 0.5])
        step, duration = 0.3125, (length - 0.4) * 0.3125
        stream, position = _EventStream(list("abcd"), thresholds, step, min_duration, min_gap), 0
        while position < length:
            chunk = int(rng.integers(0, 7))
            stream.push(rows[position : position + chunk])
            position += chunk
        boundaries = np.append(np.arange(length) * step, duration)
        expected = activity_to_events(binarize(rows, thresholds), boundaries, list("abcd"), scores=rows,
                                      min_duration=min_duration, min_gap=min_gap)
        assert stream.finish(duration) == expected


def test_memory_is_flat_in_duration(monkeypatch):
    """A 10-minute file: never more than one window of audio per block read, and at most a window and a hop of
    steps held by the assembler, whatever the duration."""
    model, extractor = loudness_model()
    wave = scene(600.0, [(100, 130), (500, 590)])
    held = []
    original = _FileAssembler.add_window

    def add_window(self, *args):
        original(self, *args)
        held.append(self.totals.shape[0])

    monkeypatch.setattr(_FileAssembler, "add_window", add_window)
    (result,) = predict_files([wave], model, extractor, batch_size=16)
    plan = WindowPlan.for_model(model.config, extractor)
    assert len(held) == 119 and max(held) <= plan.steps_per_window + plan.hop_steps
    assert [(round(e.onset), round(e.offset)) for e in result.events] == [(100, 130), (500, 590)]


@pytest.fixture
def batch_rows(monkeypatch):
    """The number of windows in each forward the engine runs (before it pads a short batch)."""
    rows = []
    forward = InferenceEngine._forward

    def recording(self, features):
        rows.append(features.shape[0])
        return forward(self, features)

    monkeypatch.setattr(InferenceEngine, "_forward", recording)
    return rows


def test_batches_are_packed_across_files(batch_rows):
    model, extractor = loudness_model()
    clips = [scene(10.0, [(1, 2)], seed=seed) for seed in range(10)]
    predict_files(clips, model, extractor, batch_size=4)
    assert batch_rows == [4, 4, 2]  # ten 10 s clips, one window each, in full batches


def test_files_of_any_length_share_batches(tmp_path, batch_rows):
    """A file shorter than a window is a window of its own length; stretched to the model's input size in the
    worker, it shares a batch with full windows instead of running alone in a zero-padded batch (a folder of clips
    of varied lengths ran nearly every window alone), with the scores the model gives it unstretched."""
    model, extractor = loudness_model()
    clips = []
    for k, seconds in enumerate((3.0, 4.5, 10.0, 7.25, 2.0)):
        clips.append(str(tmp_path / f"clip{k}.wav"))
        soundfile.write(clips[-1], scene(seconds, [(0.5, 1.5)], seed=k), RATE)
    results = predict_files(clips, model, extractor, batch_size=4)
    # A window each, and a tagging pass for each of the four shorter than the 10 s clip: 9 rows in full batches.
    assert batch_rows == [4, 4, 1]
    for clip, result in zip(clips, results, strict=True):
        assert_same_prediction(result, predict_file(model, extractor, clip))


def random_model(num_mel_bins):
    """A tiny random detection model; with more mel bins than 64 its image has fewer, longer rows (100 bins:
    freq_ratio 2, 512 frames, bins stretched to 128 after `feature_norm`), so its extractor reads 5 s clips."""
    torch.manual_seed(0)
    model = HTSATForSoundEventDetection(tiny_config(num_mel_bins=num_mel_bins, num_labels=3)).eval()
    seconds = 10.0 if num_mel_bins == 64 else 5.0
    return model, HTSATFeatureExtractor.from_config(model.config, max_length_seconds=seconds)


@pytest.mark.parametrize("num_mel_bins", [64, 100])
def test_a_stretched_log_mel_gives_the_models_scores(num_mel_bins):
    """`feature_norm` (per mel bin) commutes with the model's time stretch, and the bicubic stretch is separable, so
    stretching time first changes only float rounding, also where the model then stretches the bins: the engine's
    premise for batching windows of any length."""
    model, extractor = random_model(num_mel_bins)
    rng = np.random.default_rng(0)
    features = extractor(rng.standard_normal(int(3.3 * RATE)).astype(np.float32) * 0.1, sampling_rate=RATE,
                         padding="longest", return_tensors="pt")["input_features"]
    frames = model.config.spec_size * model.config.freq_ratio
    stretched = stretch_spectrogram(features, frames, num_mel_bins)
    assert stretched.shape[1:] == (frames, num_mel_bins)
    assert stretch_spectrogram(stretched, *stretched.shape[1:]) is stretched
    with torch.no_grad():
        direct, early = model(features), model(stretched)
    torch.testing.assert_close(early.logits, direct.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(early.clip_logits, direct.clip_logits, atol=1e-5, rtol=0)


def test_a_model_that_stretches_its_mel_bins(tmp_path):
    """100 mel bins (the model stretches them to 128 after `feature_norm`): the engine stretches only time, so the
    features keep the bins the model's normalisation reads (stretching both failed: 'got shape (2, 512, 128)'), and
    results equal `predict_file`'s."""
    model, extractor = random_model(100)
    rng = np.random.default_rng(1)
    files = []
    for k, seconds in enumerate((3.0, 5.0, 12.0)):
        files.append(str(tmp_path / f"c{k}.wav"))
        soundfile.write(files[-1], (rng.standard_normal(int(seconds * RATE)) * 0.1).astype(np.float32), RATE)
    for result in predict_files(files, model, extractor, batch_size=2):
        assert_same_prediction(result, predict_file(model, extractor, result.path))


# ---------------------------------------------------------------------------------------------- inputs and errors


def test_every_input_form_and_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    model, extractor = loudness_model()
    wave = scene(12.0, [(2, 4)])
    path = tmp_path / "x.wav"
    soundfile.write(path, wave, RATE)
    expected = predict_file(model, extractor, path)
    forms = [wave, torch.from_numpy(wave), {"array": wave, "sampling_rate": RATE}, path.read_bytes(),
             {"path": None, "bytes": path.read_bytes()}, AudioItem("named.wav", audio=wave)]
    results = predict_files(forms, model, extractor)
    assert len(results) == len(forms) and [r.path for r in results][-1] == "named.wav"
    for result in results:
        assert_same_events(result.events, expected.events)
    table = datasets.Dataset.from_dict({"audio": [str(path), str(path)]}).cast_column("audio", datasets.Audio())
    for source in (table, table.to_iterable_dataset()):
        results = predict_files(source, model, extractor, num_workers=2)
        assert [r.path for r in results] == ["x.wav", "000001_x.wav"]
        for result in results:
            assert_same_events(result.events, expected.events)


def test_unreadable_files_are_reported_and_skipped(tmp_path, scenes):
    model, extractor = loudness_model()
    (tmp_path / "bad.wav").write_bytes(b"not audio" * 50)
    soundfile.write(tmp_path / "tiny.wav", np.zeros(800, np.float32), RATE)
    with pytest.raises(InputError, match=r"bad.wav: cannot decode"):
        predict_files([tmp_path / "bad.wav", scenes / "ten.wav"], model, extractor)
    results = list(in_input_order(InferenceEngine(model, extractor, resolve_settings(model)).run(
        collect_inputs([tmp_path / "bad.wav", scenes / "ten.wav", tmp_path / "tiny.wav", scenes / "short.WAV"]))))
    assert [(r.name, r.error is None) for r in results] == [
        ("bad.wav", False), ("ten.wav", True), ("tiny.wav", False), ("short.WAV", True)]
    assert "tiny.wav: 25.0 ms of audio, too short" in results[2].error


# ------------------------------------------------------------------------------------------------------- outputs


def test_outputs_in_input_order_whatever_the_workers(tmp_path, scenes):
    model, extractor = loudness_model(("low", "high"))
    settings = resolve_settings(model, batch_size=2)
    items = collect_inputs([scenes], keyed_by_name=False)
    written = {}
    for workers in (0, 1, 3):
        for suffix in ("jsonl", "tsv"):
            output = tmp_path / f"w{workers}.{suffix}"
            done, failed = write_predictions(InferenceEngine(model, extractor, settings, num_workers=workers),
                                             items, output, progress=False)
            assert (done, failed) == (len(items), 0) and not output.with_name(output.name + ".parts").exists()
            written.setdefault(suffix, set()).add(output.read_bytes())
    assert len(written["jsonl"]) == len(written["tsv"]) == 1
    lines = (tmp_path / "w0.jsonl").read_text().splitlines()
    expected = [predict_file(model, extractor, item.path).to_dict() for item in items]
    assert [json.loads(line)["file"] for line in lines] == [e["file"] for e in expected]
    for line, reference in zip(lines, expected):
        got = json.loads(line)
        assert set(got) == {"file", "duration", "sampling_rate", "tags", "events"}
        assert [e["label"] for e in got["events"]] == [e["label"] for e in reference["events"]]
    header, *rows = (tmp_path / "w0.tsv").read_text().splitlines()
    assert header.split("\t") == ["filename", "onset", "offset", "event_label", "score", "kind"]
    assert len(rows) == sum(len(e["tags"]) + len(e["events"]) for e in expected)
    with pytest.raises(InputError, match=r"w0.jsonl exists: pass --resume"):
        write_predictions(InferenceEngine(model, extractor, settings), items, tmp_path / "w0.jsonl")


def test_resume_after_a_kill(tmp_path, capsys, monkeypatch):
    """SIGKILL mid-run, a torn last line, then --resume: the output equals an uninterrupted run's, byte for byte,
    each file once; without --resume the used output is refused in one line."""
    model_dir = save_model(tmp_path / "model")
    folder = tmp_path / "clips"
    for k in range(12):
        # Sub-folders, each with a file of the same name: outputs name files by path, so nothing collides.
        name = "same_name.wav" if k < 3 else f"clip{k:02d}.wav"
        (folder / f"g{k % 3}").mkdir(parents=True, exist_ok=True)
        soundfile.write(folder / f"g{k % 3}" / name, tone(2.0 + k / 2, RATE, 200.0 + 40 * k), RATE)
    # One thread here and in the killed process: the same float rounding, so the same bytes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    options = [str(folder), "--model", str(model_dir), "--batch-size", "1", "--no-progress"]
    complete = tmp_path / "complete.jsonl"
    try:
        assert main(["predict", *options, "--output", str(complete)]) == 0
    finally:
        torch.set_num_threads(threads)

    output = tmp_path / "out.jsonl"
    journal = tmp_path / "out.jsonl.parts" / "shard-00000.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "htsat_hf.cli", "predict", *options, "--output", str(output)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (journal.exists() and journal.read_text().count("\n") >= 2):
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not output.exists()
    assert 2 <= journal.read_text().count("\n") < 12
    with open(journal, "a") as handle:
        handle.write('{"index": 11, "file": "torn')  # a line cut by the kill

    capsys.readouterr()
    assert main(["predict", *options, "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out.jsonl.parts exists: pass --resume" in err

    torch.set_num_threads(1)
    try:
        assert main(["predict", *options, "--output", str(output), "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert output.read_bytes() == complete.read_bytes()
    files = [json.loads(line)["file"] for line in output.read_text().splitlines()]
    assert len(files) == len(set(files)) == 12
    assert not (tmp_path / "out.jsonl.parts").exists()
    # Resuming a finished JSONL run leaves it as it is.
    assert main(["predict", *options, "--output", str(output), "--resume"]) == 0
    assert output.read_bytes() == complete.read_bytes()


def test_two_processes_write_the_output_of_one(tmp_path):
    """`torchrun --standalone --nproc_per_node 2` (what `accelerate launch --num_processes 2 --cpu` starts): files
    shared out, one merged output, byte-identical to a one-process run with the same threads per process (torchrun
    runs each process on one thread; another thread count can round the last digit of a score differently)."""
    pytest.importorskip("accelerate")
    model_dir = save_model(tmp_path / "model")
    folder = tmp_path / "clips"
    folder.mkdir()
    for k in range(7):
        soundfile.write(folder / f"c{k}.wav", tone(2.0 + 3 * k, RATE, 300.0 + 50 * k), RATE)
    soundfile.write(folder / "tiny.wav", tone(0.05, RATE), RATE)
    command = ["-m", "htsat_hf.cli", "predict", str(folder), "--model", str(model_dir), "--batch-size", "3",
               "--no-progress", "--threshold", "0.55", "--output"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *command, str(tmp_path / "one.jsonl")], capture_output=True,
                            text=True, env=environment, timeout=600)
    assert single.returncode == 1 and "tiny.wav" in single.stderr  # the unreadable file: named, exit 1
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *command,
         str(tmp_path / "two.jsonl")], capture_output=True, text=True, env=environment, timeout=600)
    assert launched.returncode != 0 and "tiny.wav" in launched.stderr  # the process that met it exits 1
    one = (tmp_path / "one.jsonl").read_bytes()
    assert one.count(b"\n") == 7 and (tmp_path / "two.jsonl").read_bytes() == one


def launch_two(arguments, tmp_path, timeout=120):
    """Start two processes of one job (`python ARGUMENTS`, ranks 0 and 1 on the CPU, as `accelerate launch
    --num_processes 2 --cpu` or torchrun set them up, but without a launcher that would end one when the other
    fails) and wait for both; `[(exit status, stderr)]` by rank. A process still running after `timeout` seconds
    (one waiting for the other forever) fails the test, and both are killed."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    processes = []
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(open(tmp_path / f"rank{rank}.err", "w+")) for rank in range(2)]
        for rank, log in enumerate(logs):
            environment = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
                           "LOCAL_WORLD_SIZE": "2"}
            processes.append(subprocess.Popen([sys.executable, *map(str, arguments)], stdout=subprocess.DEVNULL,
                                              stderr=log, env=environment, start_new_session=True))
        deadline = time.monotonic() + timeout
        try:
            for process in processes:
                try:
                    process.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    pytest.fail(f"a process was still running after {timeout} s (waiting for the other forever)")
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        for log in logs:
            log.seek(0)
        return [(process.returncode, log.read()) for process, log in zip(processes, logs)]


@pytest.fixture(scope="module")
def used_output(tmp_path_factory):
    """A finished one-process run (`--top-k 2`) of a tiny model on two short files: `(predict arguments, output)`."""
    folder = tmp_path_factory.mktemp("used")
    model_dir = save_model(folder / "model")
    (folder / "clips").mkdir()
    for k in range(2):
        soundfile.write(folder / "clips" / f"c{k}.wav", tone(1.0 + k, RATE, 300.0 + 50 * k), RATE)
    arguments = [folder / "clips", "--model", model_dir, "--batch-size", "1", "--no-progress",
                 "--output", folder / "out.jsonl"]
    assert main(["predict", *map(str, arguments), "--top-k", "2"]) == 0
    return arguments, folder / "out.jsonl"


@pytest.mark.parametrize("options, refusal", [
    ([], r"out.jsonl exists: pass --resume to continue that run"),
    (["--resume", "--top-k", "1"], r"out.jsonl: --resume with a different top-k than the run it continues"),
], ids=["existing-output", "resume-with-other-options"])
def test_two_processes_refuse_a_used_output_together(used_output, tmp_path, options, refusal):
    """Rank 0 decides whether the output may be used; its refusal reached only itself, and rank 1 waited for it in
    a barrier forever (or, once rank 0 had exited, crashed with gloo's "Connection closed by peer"). Now every
    process exits with status 2 and the same one line, and the finished output is left as it was."""
    pytest.importorskip("accelerate")
    arguments, output = used_output
    before = output.read_bytes()
    for status, err in launch_two(["-m", "htsat_hf.cli", "predict", *arguments, *options], tmp_path):
        lines = err.splitlines()
        assert status == 2 and len(lines) == 1 and re.match(rf"htsat-hf predict: error: .*{refusal}", lines[0]), err
    assert output.read_bytes() == before and not output.with_name("out.jsonl.parts").exists()


def test_an_unreadable_input_in_one_process_stops_every_process(tmp_path):
    """`predict_files(..., output=...)` without `skip_errors` raises in the process that meets an unreadable input;
    the other (rank 0 here) waited for it forever at the end of its share. Now both raise the same `InputError`."""
    pytest.importorskip("accelerate")
    model_dir = save_model(tmp_path / "model")
    (tmp_path / "clips").mkdir()
    soundfile.write(tmp_path / "clips" / "a.wav", tone(1.0, RATE), RATE)
    soundfile.write(tmp_path / "clips" / "b.wav", tone(0.05, RATE), RATE)  # input 1: rank 1's, too short
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "from htsat_hf import predict_files\n"
        "from htsat_hf.errors import InputError, error_line\n"
        "try:\n"
        f"    predict_files([{str(tmp_path / 'clips')!r}], {str(model_dir)!r}, batch_size=1,\n"
        f"                  output={str(tmp_path / 'out.jsonl')!r})\n"
        "except InputError as error:\n"
        "    print('error:', error_line(error), file=sys.stderr)\n"
        "    sys.exit(2)\n"
    )
    for status, err in launch_two([script], tmp_path):
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert status == 2 and len(lines) == 1 and "b.wav" in lines[0] and "too short" in lines[0], err
        assert "Traceback" not in err, err
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("error, lines", [
    ("PermissionError(13, 'Permission denied', 'checkpoint-1')", ["[Errno 13] Permission denied: 'checkpoint-1'"] * 2),
    ("KeyError('fold')", ["process 1 failed: KeyError: 'fold'", "'fold'"]),
], ids=["os-error", "bug"])
def test_an_error_in_one_process_inside_together_ends_every_process(tmp_path, error, lines):
    """`distributed.together`, as around `run_audio_classification.py`'s emptying of `--output_dir` (an `OSError` in
    the process that saves): the process that failed raises its own error, the other one line naming it (the same
    line for a user's problem), and neither waits for the other."""
    pytest.importorskip("accelerate")
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "from htsat_hf.distributed import distributed_state, together\n"
        "from htsat_hf.errors import error_line\n"
        "try:\n"
        "    with together():\n"
        "        if distributed_state().process_index == 1:\n"
        f"            raise {error}\n"
        "except Exception as error:\n"
        "    print('error:', error_line(error), file=sys.stderr)\n"
        "    sys.exit(2)\n"
    )
    results = launch_two([script], tmp_path, timeout=60)
    assert [status for status, _ in results] == [2, 2], results
    assert [err.splitlines() for _, err in results] == [[f"error: {line}"] for line in lines]


def test_a_process_that_ended_before_together_is_one_line_in_the_other(tmp_path):
    """A tester's case: rank 1 killed mid-run left rank 0 with a 33-line gloo traceback ("Connection closed by
    peer"); the process that is left now stops with one line."""
    pytest.importorskip("accelerate")
    script = tmp_path / "run.py"
    script.write_text(
        "import os, sys\n"
        "from htsat_hf.distributed import distributed_state, together\n"
        "from htsat_hf.errors import error_line\n"
        "if distributed_state().process_index == 1:\n"
        "    os._exit(9)  # killed: no exit handlers, no goodbye to the process group\n"
        "try:\n"
        "    with together():\n"
        "        pass\n"
        "except Exception as error:\n"
        "    print('error:', error_line(error), file=sys.stderr)\n"
        "    sys.exit(2)\n"
    )
    (status, err), (killed, _) = launch_two([script], tmp_path, timeout=60)
    assert killed == 9 and status == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: another process of this run ended before this step"), err


def test_every_process_exits_with_its_own_status_after_a_refusal(tmp_path):
    """A failed run of several processes ends each with the run's status, never gloo's abort at exit ("terminate
    called without an active exception", -6: 3 in 40 two-process refusals did): `distributed_state` registers the
    process group's teardown to run at exit. Repeated, since the abort came only now and then."""
    pytest.importorskip("accelerate")
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "import transformers  # noqa: F401  (the threads of a real run's imports)\n"
        "from htsat_hf.distributed import distributed_state, together\n"
        "from htsat_hf.errors import InputError, error_line\n"
        "try:\n"
        "    with together():\n"
        "        if distributed_state().process_index == 0:\n"
        "            raise InputError('out.jsonl exists')\n"
        "except InputError as error:\n"
        "    print('error:', error_line(error), file=sys.stderr)\n"
        "    sys.exit(2)\n"
    )
    for attempt in range(10):  # the old code aborted 4 of 50 such processes
        results = launch_two([script], tmp_path, timeout=60)
        assert [status for status, _ in results] == [2, 2], (attempt, results)
        assert all(err.splitlines() == ["error: out.jsonl exists"] for _, err in results), (attempt, results)


def test_dtype_and_options(tmp_path, scenes):
    model_dir = save_model(tmp_path / "model")
    model, extractor = load_predictor(model_dir, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    full = predict_files([scenes / "long.wav"], model_dir, top_k=3)[0]
    half = predict_files([scenes / "long.wav"], model, extractor, top_k=3)[0]
    np.testing.assert_allclose([s for _, s in half.tags], [s for _, s in full.tags], atol=0.05)
    with pytest.raises(InputError, match="dtype must be one of"):
        load_predictor(model_dir, dtype="int8")
    with pytest.raises(InputError, match="num_workers must be a whole number"):
        InferenceEngine(model, extractor, resolve_settings(model), num_workers=-1)
    with pytest.raises(InputError, match="must be a .jsonl or .tsv file"):
        predict_files([scenes / "ten.wav"], model, extractor, output=tmp_path / "out.csv")


def test_a_model_in_training_mode_is_refused(tmp_path, scenes):
    """A tester's case: `predict_files` on a `.train()` model gave other tags on each call (dropout, drop path)."""
    model, extractor = load_predictor(save_model(tmp_path / "model"))
    model.train()
    for call in (
        lambda: predict_files([scenes / "ten.wav"], model, extractor),
        lambda: predict_file(model, extractor, scenes / "ten.wav"),
        lambda: InferenceEngine(model, extractor, resolve_settings(model)),
    ):
        with pytest.raises(InputError, match="the model is in training mode.*call model.eval"):
            call()
    assert model.training  # refused, not switched behind the caller's back


def test_a_bf16_model_gets_float32_features_everywhere(tmp_path, scenes):
    """The engine, predict_file, sliding_window_scores and the audio-classification pipeline hand a model loaded in
    bf16 the extractor's float32 log-mel, which the model casts to its float32 feature normalisation. They cast it to
    bf16 first, which rounded the log-mel and moved the full-size model's frame probabilities 5.2e-3 from fp32
    (4.3e-3 from float32 features)."""
    model_dir = save_model(tmp_path / "model")
    model, extractor = load_predictor(model_dir, dtype="bfloat16")
    classifier = HTSATForAudioClassification.from_pretrained(model_dir, torch_dtype=torch.bfloat16).eval()
    assert model.htsat.feature_norm.weight.dtype == classifier.htsat.feature_norm.weight.dtype == torch.float32
    seen = []
    for loaded in (model, classifier):
        loaded.htsat.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    predict_files([scenes / "ten.wav"], model, extractor, top_k=3)
    predict_file(model, extractor, scenes / "long.wav")
    sliding_window_scores(model, extractor, soundfile.read(scenes / "ten.wav", dtype="float32")[0], RATE)
    pipeline("audio-classification", model=classifier, feature_extractor=extractor)(str(scenes / "ten.wav"))
    assert len(seen) >= 4 and set(seen) == {torch.float32}


class _Killed(Exception):
    """Stands for a kill after the journal got its first lines."""


@contextlib.contextmanager
def killed_after(monkeypatch, count: int):
    """Inside the block, `InferenceEngine.run` stops with `_Killed` after `count` results (expected to be raised)."""
    run = InferenceEngine.run

    def killed(self, *args, **kwargs):
        for number, result in enumerate(run(self, *args, **kwargs)):
            if number == count:
                raise _Killed
            yield result

    monkeypatch.setattr(InferenceEngine, "run", killed)
    try:
        with pytest.raises(_Killed):
            yield
    finally:
        monkeypatch.setattr(InferenceEngine, "run", run)


def test_resume_refuses_another_model_options_or_inputs(tmp_path, capsys, monkeypatch):
    """A resume continues only the run it was started as: another model (same architecture, other weights), other
    options (top-k, threshold, class map, median filter, batch size, dtype) or other inputs are refused in one line
    naming what differs, and the journal is left as it was; the same run resumes, and a finished output resumed with
    the same inputs and options is left as it is (with other inputs or options: refused)."""
    model_a, model_b = save_model(tmp_path / "a", seed=0), save_model(tmp_path / "b", seed=1)
    folder = tmp_path / "clips"
    folder.mkdir()
    for k in range(5):
        soundfile.write(folder / f"c{k}.wav", tone(2.0 + k, RATE, 300.0 + 50 * k), RATE)
    common = ["--batch-size", "2", "--no-progress"]
    output, parts = tmp_path / "out.jsonl", tmp_path / "out.jsonl.parts"
    with killed_after(monkeypatch, 2):
        main(["predict", str(folder), "--model", str(model_a), *common, "--output", str(output)])
    journal = parts / "shard-00000.jsonl"
    before = journal.read_bytes()
    assert before.count(b"\n") == 2
    class_map = tmp_path / "map.json"
    class_map.write_text(json.dumps({"num_source_classes": 3, "classes": [{"label": "any", "indices": [0, 1]}]}))
    changes = [
        (["--model", str(model_b)], "model weights"),
        (["--model", str(model_a), "--top-k", "2"], "top-k"),
        (["--model", str(model_a), "--threshold", "0.7"], r"options \(thresholds\)"),
        (["--model", str(model_a), "--median-filter", "0.5"], r"options \(median_filter_seconds\)"),
        (["--model", str(model_a), "--class-map", str(class_map)], r"options \(class_map"),
        (["--model", str(model_a), "--dtype", "bfloat16"], "dtype"),
        (["--model", str(model_a), "--batch-size", "3"], r"options \(batch_size\)"),
    ]
    for change, named in changes:
        capsys.readouterr()
        code = main(["predict", str(folder), *common, *change, "--output", str(output), "--resume"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, (change, err)
        assert re.search(rf"out.jsonl.parts: --resume with a different {named}", err), (change, err)
        assert journal.read_bytes() == before and not output.exists()
    # Other inputs: a sub-set of the same folder.
    code = main(["predict", *map(str, sorted(folder.glob("c[0-3].wav"))), "--model", str(model_a), *common,
                 "--output", str(output), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "a different inputs" in err
    # The same run resumes into the output of an uninterrupted run.
    assert main(["predict", str(folder), "--model", str(model_a), *common, "--output", str(output), "--resume"]) == 0
    complete = tmp_path / "complete.jsonl"
    assert main(["predict", str(folder), "--model", str(model_a), *common, "--output", str(complete)]) == 0
    lines = output.read_text().splitlines()
    assert [json.loads(line)["file"] for line in lines] == [str(folder / f"c{k}.wav") for k in range(5)]
    finished = output.read_bytes()
    # A finished output: other inputs (the files in another order, a file more) or another model are refused ...
    soundfile.write(tmp_path / "extra.wav", tone(3.0, RATE), RATE)
    for inputs, model, named in (([*sorted(folder.glob("*.wav"))][::-1], model_a, "inputs"),
                                 ([folder, tmp_path / "extra.wav"], model_a, "inputs"),
                                 ([folder], model_b, "model weights")):
        code = main(["predict", *map(str, inputs), "--model", str(model), *common, "--output", str(output),
                     "--resume"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and f"a different {named}" in err, err
        assert output.read_bytes() == finished and not parts.exists()
    # ... the same inputs and options leave it as it is.
    assert main(["predict", str(folder), "--model", str(model_a), *common, "--output", str(output), "--resume"]) == 0
    assert output.read_bytes() == finished and not parts.exists()
    # predict_files refuses the same way.
    with pytest.raises(InputError, match="a different top-k"):
        predict_files([folder], model_a, top_k=1, batch_size=2, output=output, resume=True)


def test_results_do_not_depend_on_batch_neighbours_workers_or_resume(tmp_path, monkeypatch):
    """Every forward runs on a full batch (a short one is padded with zero windows), so a window's scores are the
    same bytes whichever windows share its batch and wherever it sits: the output of a fixed --batch-size and thread
    count is byte-identical with 0 or 2 workers, and after an interruption and --resume."""
    torch.manual_seed(0)
    model = HTSATForSoundEventDetection(tiny_config(num_labels=3)).eval()
    extractor = HTSATFeatureExtractor.from_config(model.config)
    rng = np.random.default_rng(0)
    windows = [torch.from_numpy(extractor(rng.standard_normal(extractor.max_length_samples).astype(np.float32) * 0.1,
                                          sampling_rate=RATE, return_tensors="np")["input_features"][0])
               for _ in range(6)]
    settings = resolve_settings(model, batch_size=4)
    engine = InferenceEngine(model, extractor, settings)
    alone = engine._forward(windows[0][None])
    for position in range(4):
        rows = [windows[1 + (position + k) % 5] for k in range(4)]
        rows[position] = windows[0]
        frames, clip = engine._forward(torch.stack(rows))
        assert frames[position].tobytes() == alone[0][0].tobytes() and clip[position].tobytes() == alone[1][0].tobytes()
    folder = tmp_path / "clips"
    folder.mkdir()
    for k, seconds in enumerate((13.0, 3.0, 21.5, 0.8, 7.0, 10.0, 2.0)):
        soundfile.write(folder / f"c{k}.wav", tone(seconds, RATE, 250.0 + 60 * k) + 0.01 * rng.standard_normal(
            int(seconds * RATE)).astype(np.float32), RATE)
    items = collect_inputs([folder], keyed_by_name=False)
    outputs = []
    for workers in (0, 2):
        output = tmp_path / f"w{workers}.jsonl"
        write_predictions(InferenceEngine(model, extractor, settings, num_workers=workers), items, output,
                          progress=False)
        outputs.append(output.read_bytes())
    resumed = tmp_path / "resumed.jsonl"
    with killed_after(monkeypatch, 3):
        write_predictions(InferenceEngine(model, extractor, settings), items, resumed, progress=False)
    write_predictions(InferenceEngine(model, extractor, settings), items, resumed, resume=True, progress=False)
    outputs.append(resumed.read_bytes())
    assert outputs[0].count(b"\n") == len(items) and outputs[1] == outputs[0] and outputs[2] == outputs[0]


def test_no_workers_and_workers_write_the_same_bytes(tmp_path, monkeypatch):
    """A DataLoader worker computes the log-mel on one thread; the main process (0 workers) does too, so the output
    is the same bytes with 0 or 1 workers. On the main process's threads the log-mel rounded differently (up to
    3e-6 dB), which changed the 6th decimal of some scores (0.398674 vs 0.398675) and let a --resume with another
    worker setting mix the two. The model still runs on the caller's threads."""
    model, extractor = load_predictor(save_model(tmp_path / "model"))
    items = collect_inputs([make_detection_folder(tmp_path / "scenes", num_files=4, seconds=14.0) / "audio"])
    settings = resolve_settings(model, batch_size=2)
    forward, forward_threads = InferenceEngine._forward, []

    def recording(self, features):
        forward_threads.append(torch.get_num_threads())
        return forward(self, features)

    monkeypatch.setattr(InferenceEngine, "_forward", recording)
    threads = torch.get_num_threads()
    caller_threads = max(threads, 2)  # on one thread both round alike: the difference needs the main's to be more
    torch.set_num_threads(caller_threads)
    outputs = []
    try:
        for workers in (0, 1):
            output = tmp_path / f"w{workers}.jsonl"
            write_predictions(InferenceEngine(model, extractor, settings, num_workers=workers), items, output,
                              progress=False)
            outputs.append(output.read_bytes())
        assert torch.get_num_threads() == caller_threads
    finally:
        torch.set_num_threads(threads)
    assert set(forward_threads) == {caller_threads}
    assert outputs[0].count(b"\n") == len(items) == 4 and outputs[1] == outputs[0]


def test_the_model_runs_with_its_weights_packed_for_the_run(tmp_path, scenes, monkeypatch):
    """Every forward of a run sees the model inside `frozen_weights` (linear weights reordered for oneDNN once);
    the packs are dropped when the run ends, and the results are `predict_file`'s (test_events_equal_predict_file)."""
    model, extractor = load_predictor(save_model(tmp_path / "model"))
    layer = model.htsat.encoder.stages[0].blocks[0].mlp.fc1
    forward, frozen_at_forward = InferenceEngine._forward, []

    def recording(self, features):
        frozen_at_forward.append(layer in fast_path._frozen_layers)
        return forward(self, features)

    monkeypatch.setattr(InferenceEngine, "_forward", recording)
    engine = InferenceEngine(model, extractor, resolve_settings(model, batch_size=2))
    results = list(engine.run(collect_inputs([scenes])))
    assert len(results) == len(collect_inputs([scenes])) and all(result.error is None for result in results)
    assert frozen_at_forward and all(frozen_at_forward)
    assert layer not in fast_path._frozen_layers


def test_a_broken_link_in_a_folder_is_reported_not_dropped(tmp_path, capsys):
    model_dir = save_model(tmp_path / "model")
    folder = tmp_path / "sp"
    folder.mkdir()
    soundfile.write(folder / "good.wav", tone(2.0, RATE), RATE)
    (folder / "broken.wav").symlink_to(folder / "gone.wav")
    (folder / "._good.wav").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata: skipped, not an error
    output = tmp_path / "out.jsonl"
    capsys.readouterr()
    code = main(["predict", str(folder), "--model", str(model_dir), "--no-progress", "--output", str(output)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and f"{folder / 'broken.wav'}: no such file" in err
    assert [json.loads(line)["file"] for line in output.read_text().splitlines()] == [str(folder / "good.wav")]
