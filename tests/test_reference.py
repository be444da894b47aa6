"""The converter and the model against vectors produced by the original HTS-AT implementation (../shared/reference).

Each case is converted once with the command line, then loaded through the Auto classes; the log-mel, clip, frame
and latent outputs must match the original's within the tolerances of ../shared/reference/README.md.
"""

import csv
import json
import os

import pytest
import torch
from safetensors.torch import load_file

import htsat_hf  # noqa: F401  (registers the Auto classes)
from htsat_hf import (
    HTSATFeatureExtractor,
    HTSATForAudioClassification,
    HTSATForSoundEventDetection,
    HTSATModel,
    cpu_fast_path,
)
from htsat_hf.cli import main as cli_main
from htsat_hf.convert_htsat_original_checkpoint import (
    CheckpointError,
    convert_checkpoint,
    load_original_state_dict,
    read_label_file,
)

from conftest import REFERENCE_CASES, require_shared

FRAMES_PER_STEP = 32


def case_settings(case):
    settings = json.loads(require_shared(f"reference/{case}.json").read_text())
    return settings


def convert_args(case, checkpoint, output_dir):
    settings = case_settings(case)
    # n_fft 1024, 64 mel bins, 50..14000 Hz are the CLI's defaults (test_converted_directory checks the case agrees).
    args = ["convert", str(checkpoint), str(output_dir), "--sample-rate", str(settings["sample_rate"]),
            "--hop-length", str(settings["hop_size"])]
    if settings["loss_type"] == "clip_ce":
        args += ["--problem-type", "single_label_classification"]
    return args


class Converted:
    """One converted case: its settings, the original's outputs, and the converted model loaded four ways."""

    def __init__(self, case, directory):
        from transformers import (
            AutoFeatureExtractor,
            AutoModel,
            AutoModelForAudioClassification,
            AutoModelForAudioFrameClassification,
        )

        self.case = case
        self.directory = directory
        self.settings = case_settings(case)
        self.checkpoint = require_shared(f"reference/{case}.ckpt")
        self.expected = load_file(require_shared(f"reference/{case}.expected.safetensors"))
        self.batches = sorted({key.split(".")[0] for key in self.expected})
        # Every loop below compares each batch: an empty or partial vector file must fail, not pass vacuously.
        assert self.batches and self.batches == sorted(self.settings["batches"]), (case, self.batches)
        self.extractor = AutoFeatureExtractor.from_pretrained(directory)
        self.classifier = AutoModelForAudioClassification.from_pretrained(directory).eval()
        self.detector = AutoModelForAudioFrameClassification.from_pretrained(directory).eval()
        self.backbone = AutoModel.from_pretrained(directory).eval()
        self._features = {}
        self._outputs = {}

    def features(self, batch):
        if batch not in self._features:
            waveforms = self.expected[f"{batch}.waveform"]
            self._features[batch] = self.extractor(
                waveforms.numpy(), sampling_rate=self.settings["sample_rate"], padding="longest", return_tensors="pt"
            )
        return self._features[batch]

    def outputs(self, model_name, batch, fast_path=True):
        """Each model runs once per batch and path (the CPU fast path or the reference forwards); the tests share
        its outputs."""
        key = (model_name, batch, fast_path)
        if key not in self._outputs:
            with torch.no_grad(), cpu_fast_path(fast_path):
                self._outputs[key] = getattr(self, model_name)(**self.features(batch))
        return self._outputs[key]


@pytest.fixture(scope="module", params=REFERENCE_CASES)
def converted(request, tmp_path_factory):
    case = request.param
    checkpoint = require_shared(f"reference/{case}.ckpt")
    output_dir = tmp_path_factory.mktemp(case)
    assert cli_main(convert_args(case, checkpoint, output_dir)) == 0
    return Converted(case, output_dir)


def test_converted_directory(converted):
    names = {p.name for p in converted.directory.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= names
    settings, config = converted.settings, converted.classifier.config
    assert config.model_type == "htsat"
    assert config.num_labels == settings["classes_num"]
    assert (config.sampling_rate, config.hop_length, config.n_fft) == (
        settings["sample_rate"], settings["hop_size"], settings["window_size"]
    )
    assert (config.num_mel_bins, config.f_min, config.f_max) == (settings["mel_bins"], settings["fmin"], settings["fmax"])
    assert config.embed_dim == settings["htsat_dim"] and config.depths == settings["htsat_depth"]
    assert config.num_heads == settings["htsat_num_head"] and config.window_size == settings["htsat_window_size"]
    assert config.spec_size == settings["htsat_spec_size"] and config.patch_size == settings["htsat_patch_size"]
    assert config.use_token_semantic_head == settings["enable_tscam"]
    expected_problem = (
        "single_label_classification" if settings["loss_type"] == "clip_ce" else "multi_label_classification"
    )
    assert config.problem_type == expected_problem
    assert isinstance(converted.extractor, HTSATFeatureExtractor)
    assert converted.extractor.sampling_rate == settings["sample_rate"]
    assert converted.extractor.hop_length == settings["hop_size"]
    assert isinstance(converted.classifier, HTSATForAudioClassification)
    assert isinstance(converted.detector, HTSATForSoundEventDetection)
    assert isinstance(converted.backbone, HTSATModel)


def test_log_mel_matches_original(converted):
    for batch in converted.batches:
        features = converted.features(batch)["input_features"]
        expected = converted.expected[f"{batch}.logmel"]
        assert features.shape == expected.shape, batch
        assert (features - expected).abs().max() <= 1e-3, batch


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "reference-path"])
def test_clip_output_matches_original(converted, fast_path):
    for batch in converted.batches:
        logits = converted.outputs("classifier", batch, fast_path).logits
        # The original's clipwise_output: sigmoid of the mean logits (clip_bce), raw mean logits (clip_ce).
        output = logits if converted.settings["loss_type"] == "clip_ce" else logits.sigmoid()
        expected = converted.expected[f"{batch}.clipwise_output"]
        assert output.shape == expected.shape, batch
        assert (output - expected).abs().max() <= 1e-4, batch


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "reference-path"])
def test_frame_output_matches_original(converted, fast_path):
    for batch in converted.batches:
        out = converted.outputs("detector", batch, fast_path)
        assert out.logits.shape[1] == converted.detector.config.num_time_steps == 32
        frames = out.logits.sigmoid().repeat_interleave(FRAMES_PER_STEP, dim=1)
        expected = converted.expected[f"{batch}.framewise_output"]
        assert frames.shape == expected.shape, batch
        assert (frames - expected).abs().max() <= 1e-4, batch
        # The detector's clip logits are the classifier's.
        clip = converted.outputs("classifier", batch, fast_path).logits
        torch.testing.assert_close(out.clip_logits, clip, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "reference-path"])
def test_latent_output_matches_original(converted, fast_path):
    for batch in converted.batches:
        key = f"{batch}.latent_output"
        if not converted.settings["enable_tscam"]:
            assert key not in converted.expected
            continue
        pooled = converted.outputs("backbone", batch, fast_path).pooler_output
        expected = converted.expected[key]
        assert pooled.shape == expected.shape, batch
        assert (pooled - expected).abs().max() <= 1e-4, batch


def test_batch_norm_running_statistics_are_kept(converted):
    original = torch.load(converted.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    norm = converted.classifier.htsat.feature_norm
    for name in ("running_mean", "running_var", "weight", "bias"):
        torch.testing.assert_close(getattr(norm, name), original[f"sed_model.bn0.{name}"].float(), rtol=0, atol=0)
    assert int(norm.num_batches_tracked) == int(original["sed_model.bn0.num_batches_tracked"])
    # Not the defaults of a fresh BatchNorm (the test vectors carry real statistics).
    assert not torch.allclose(norm.running_mean, torch.zeros_like(norm.running_mean))
    assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))


# ----------------------------------------------------------------------------------------------------------------
# Other checkpoint layouts
# ----------------------------------------------------------------------------------------------------------------


def reference_logits(directory, features):
    model = HTSATForAudioClassification.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(features).logits


@pytest.fixture(scope="module")
def audioset_lightning(tmp_path_factory):
    """tiny-audioset converted from its Lightning file, with features for its 10 s batch."""
    case = "tiny-audioset"
    checkpoint = require_shared(f"reference/{case}.ckpt")
    directory = tmp_path_factory.mktemp("audioset-lightning")
    assert cli_main(convert_args(case, checkpoint, directory)) == 0
    expected = load_file(require_shared(f"reference/{case}.expected.safetensors"))
    waveform = expected["clip10s.waveform"][:1].numpy()  # one clip is enough to compare two conversions
    features = HTSATFeatureExtractor()(waveform, sampling_rate=32000, return_tensors="pt")["input_features"]
    return checkpoint, directory, features, expected, reference_logits(directory, features)


@pytest.mark.parametrize("layout", ["weight-averaged", "bare-state-dict"])
def test_other_checkpoint_layouts_convert_identically(layout, audioset_lightning, tmp_path):
    checkpoint, lightning_dir, features, expected, lightning_logits = audioset_lightning
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    path = tmp_path / f"{layout}.ckpt"
    if layout == "weight-averaged":  # every tensor in float32, integer buffers included
        torch.save({"state_dict": {k: v.float() for k, v in state.items()}}, path)
    else:
        torch.save(state, path)
    out = tmp_path / "converted"
    assert cli_main(convert_args("tiny-audioset", path, out)) == 0
    logits = reference_logits(out, features)
    torch.testing.assert_close(logits, lightning_logits, rtol=0, atol=0)
    assert (logits.sigmoid() - expected["clip10s.clipwise_output"][:1]).abs().max() <= 1e-4
    model = HTSATForAudioClassification.from_pretrained(out)
    assert model.htsat.feature_norm.num_batches_tracked.dtype == torch.long
    torch.testing.assert_close(
        model.htsat.feature_norm.running_var, state["sed_model.bn0.running_var"].float(), rtol=0, atol=0
    )


def test_label_file_with_527_classes(tmp_path):
    labels_csv = require_shared("audioset/class_labels_indices.csv")
    with labels_csv.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 527
    id2label = read_label_file(labels_csv, 527)
    assert len(id2label) == 527
    for row in rows:
        assert id2label[int(row["index"])] == row["display_name"]
    with pytest.raises(CheckpointError, match="527 labels") as error:
        read_label_file(labels_csv, 12)
    assert "12 classes" in str(error.value)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name\n0,a\n")
    with pytest.raises(CheckpointError, match="display_name"):
        read_label_file(bad, 1)


def test_cli_labels_on_a_527_class_checkpoint(tmp_path):
    """A 527-class model in the original layout (the tiny backbone with a 527-class token-semantic head) converts with
    AudioSet's label file, and the names reach config.id2label."""
    labels_csv = require_shared("audioset/class_labels_indices.csv")
    state = torch.load(require_shared("reference/tiny-audioset.ckpt"), map_location="cpu", weights_only=True)
    state = state["state_dict"]
    generator = torch.Generator().manual_seed(0)
    width = state["sed_model.tscam_conv.weight"].shape[1]
    state["sed_model.tscam_conv.weight"] = torch.randn(527, width, 2, 3, generator=generator) * 0.02
    state["sed_model.tscam_conv.bias"] = torch.zeros(527)
    state["sed_model.head.weight"] = torch.randn(527, 527, generator=generator) * 0.02
    state["sed_model.head.bias"] = torch.zeros(527)
    path = tmp_path / "audioset527.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    out = tmp_path / "converted"
    code = cli_main(["convert", str(path), str(out), "--sample-rate", "32000", "--hop-length", "320",
                     "--labels", str(labels_csv)])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    with labels_csv.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(config["id2label"]) == 527
    assert all(config["id2label"][row["index"]] == row["display_name"] for row in rows)
    assert config["label2id"][rows[0]["display_name"]] == 0
    model = HTSATForAudioClassification.from_pretrained(out)
    assert model.config.num_labels == 527 and model.config.id2label[0] == rows[0]["display_name"]
    torch.testing.assert_close(model.head.conv.weight, state["sed_model.tscam_conv.weight"], rtol=0, atol=0)
    # A label file whose count does not match the checkpoint's classes is refused, with exit code 2.
    code = cli_main(["convert", str(require_shared("reference/tiny-audioset.ckpt")), str(tmp_path / "x"),
                     "--sample-rate", "32000", "--hop-length", "320", "--labels", str(labels_csv)])
    assert code == 2


# ----------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------


def test_wrong_sample_rate_is_caught_by_the_mel_filters(tmp_path, capsys):
    checkpoint = require_shared("reference/tiny-audioset.ckpt")
    with pytest.raises(CheckpointError, match="mel filters"):
        convert_checkpoint(checkpoint, tmp_path / "a", sampling_rate=16000, hop_length=320)
    code = cli_main(["convert", str(checkpoint), str(tmp_path / "b"), "--sample-rate", "16000", "--hop-length", "320"])
    assert code == 2
    err = capsys.readouterr().err
    assert "mel filters" in err and "16000" in err
    assert not (tmp_path / "b" / "model.safetensors").exists()
    # A wrong fmax too.
    with pytest.raises(CheckpointError, match="mel filters"):
        convert_checkpoint(checkpoint, tmp_path / "c", sampling_rate=32000, hop_length=320, f_max=16000.0)


def test_random_bytes_are_not_a_checkpoint(tmp_path, capsys):
    path = tmp_path / "noise.ckpt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="cannot be read as a PyTorch checkpoint") as error:
        load_original_state_dict(path)
    assert str(path) in str(error.value)
    assert cli_main(["convert", str(path), str(tmp_path / "out"), "--sample-rate", "32000", "--hop-length", "320"]) == 2
    assert "noise.ckpt" in capsys.readouterr().err


def test_unrelated_torch_file_names_what_is_missing(tmp_path, capsys):
    path = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not an HTS-AT checkpoint") as error:
        load_original_state_dict(path)
    message = str(error.value)
    for missing in ("bn0.running_mean", "patch_embed.proj.weight", "tscam_conv.weight or head.weight"):
        assert missing in message
    assert "encoder.weight" in message  # what was found instead
    assert cli_main(["convert", str(path), str(tmp_path / "out"), "--sample-rate", "32000", "--hop-length", "320"]) == 2
    assert "bn0.running_mean" in capsys.readouterr().err


def test_other_non_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_original_state_dict(tmp_path / "absent.ckpt")
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="no state_dict"):
        load_original_state_dict(path)
    path = tmp_path / "empty.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="no state_dict"):
        load_original_state_dict(path)


class _SystemCall:
    """Unpickling this would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _OpenFile:
    """Unpickling this would create a file through builtins.open."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


class _Eval:
    """Unpickling this would evaluate Python code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_SystemCall, _OpenFile, _Eval])
def test_malicious_pickle_is_not_executed(payload, tmp_path):
    source = torch.load(require_shared("reference/tiny-audioset.ckpt"), map_location="cpu", weights_only=True)
    marker = tmp_path / "pwned"
    checkpoint = dict(source)
    checkpoint["callbacks"] = {"ModelCheckpoint": payload(marker)}
    checkpoint["hyper_parameters"] = payload(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(checkpoint, path)
    assert not marker.exists()

    tensors = load_original_state_dict(path)
    assert not marker.exists(), "loading the checkpoint executed pickled code"
    original = {k.removeprefix("sed_model."): v for k, v in source["state_dict"].items()}
    assert tensors.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(tensors[key], value), key

    if payload is _SystemCall:  # the whole conversion too (once: it costs a few forward passes)
        out = tmp_path / "converted"
        assert cli_main(convert_args("tiny-audioset", path, out)) == 0
        assert not marker.exists(), "converting the checkpoint executed pickled code"
        assert (out / "model.safetensors").exists()

    # The payload is live: an unrestricted load does run it (so the checks above can fail).
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists()


def test_lightning_metadata_of_unknown_classes_is_tolerated(tmp_path):
    """Real Lightning files carry hyper-parameters as objects of arbitrary classes (AttributeDict, Namespace)."""
    import argparse

    source = torch.load(require_shared("reference/tiny-audioset.ckpt"), map_location="cpu", weights_only=True)
    checkpoint = dict(source, hyper_parameters=argparse.Namespace(lr=1e-3, layers=[2, 2]))
    path = tmp_path / "lightning.ckpt"
    torch.save(checkpoint, path)
    tensors = load_original_state_dict(path)
    assert torch.equal(tensors["bn0.running_mean"], source["state_dict"]["sed_model.bn0.running_mean"])
