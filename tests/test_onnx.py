"""ONNX export: onnxruntime against PyTorch on the reference vectors' inputs (converted original checkpoints) and
against the original implementation's stored outputs, dynamic batch and frame axes, exporter choice and failure
reporting."""

import importlib
import json
import os

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import htsat_hf
from htsat_hf.errors import InputError
from htsat_hf import HTSATFeatureExtractor, HTSATForAudioClassification
from htsat_hf import onnx_export
from htsat_hf.convert_htsat_original_checkpoint import convert_checkpoint
from htsat_hf.onnx_export import OnnxExportError, export_onnx, run_onnx, verify_onnx

from conftest import REFERENCE_CASES, require_shared, tiny_config

ATOL = 1e-4


def require_module(name: str):
    """Import an optional export dependency; skip this module without it locally, fail under CI (like
    `require_shared`)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise
        pytest.skip(f"{name} is not installed (pip install onnx onnxruntime onnxscript)", allow_module_level=True)


onnx = require_module("onnx")
require_module("onnxruntime")
require_module("onnxscript")  # the dynamo exporter's ONNX translation


def randomise_batch_norm(model):
    """Non-trivial BatchNorm statistics: an export that dropped or froze them wrongly would show."""
    norm = model.htsat.feature_norm
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn_like(norm.running_mean) * 5 - 30)
        norm.running_var.copy_(torch.rand_like(norm.running_var) * 50 + 10)
    return model


def log_mel_like(batch, frames, seed):
    return (np.random.default_rng(seed).standard_normal((batch, frames, 64)) * 10 - 35).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Reference checkpoints: convert, export once per case (detection: frame and clip logits), compare.
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=REFERENCE_CASES)
def reference_export(request, tmp_path_factory):
    case = request.param
    checkpoint = require_shared(f"reference/{case}.ckpt")
    meta = json.loads(require_shared(f"reference/{case}.json").read_text())
    expected = load_file(require_shared(f"reference/{case}.expected.safetensors"))
    model_dir = tmp_path_factory.mktemp(case)
    problem_type = "single_label_classification" if meta["loss_type"] == "clip_ce" else "multi_label_classification"
    convert_checkpoint(checkpoint, model_dir, meta["sample_rate"], meta["hop_size"], problem_type=problem_type)
    # The tests below compare on the reference inputs; export_onnx's own check on random features is redundant.
    result = export_onnx(model_dir, model_dir / "model.onnx", task="detection", verify=False)
    return case, meta, expected, model_dir, result


def test_reference_parity_onnxruntime_vs_pytorch(reference_export):
    case, meta, expected, model_dir, result = reference_export
    assert result.exporter == "dynamo" and result.opset == 18
    extractor = HTSATFeatureExtractor.from_pretrained(model_dir)
    session = onnx_export.onnx_session(result.path)
    model = onnx_export.load_model_for_export(model_dir, "detection")
    num_labels = meta["classes_num"]
    for index, batch in enumerate(meta["batches"]):
        waveform = expected[f"{batch}.waveform"]
        features = extractor(waveform, sampling_rate=meta["sample_rate"], padding="max_length", return_tensors="np")[
            "input_features"
        ]
        assert features.shape == (waveform.shape[0], 1001, 64)
        # The stored batch; for the first one also dynamic batch sizes 1 and 3 on the same inputs.
        inputs_list = [features]
        if index == 0:
            inputs_list += [features[:1], np.concatenate([features, features])[:3]]
        for inputs in inputs_list:
            diff = verify_onnx(session, model, input_features=inputs)
            print(f"{case}/{batch} batch {inputs.shape[0]}: onnxruntime vs PyTorch max abs diff {diff:.3g}")
            assert diff <= ATOL, f"{case}/{batch} batch {inputs.shape[0]}: {diff:.3g}"
            outputs = run_onnx(session, inputs)
            assert outputs["frame_logits"].shape == (inputs.shape[0], 32, num_labels)
            assert outputs["clip_logits"].shape == (inputs.shape[0], num_labels)


def test_reference_onnx_reproduces_the_original_outputs(reference_export):
    """Each clip at its own length (the dynamic frame axis; short clips are stretched inside the graph), compared
    with what the original implementation computed from the same waveform."""
    case, meta, expected, model_dir, result = reference_export
    extractor = HTSATFeatureExtractor.from_pretrained(model_dir)
    for batch in meta["batches"]:
        features = extractor(
            expected[f"{batch}.waveform"], sampling_rate=meta["sample_rate"], padding="longest", return_tensors="np"
        )["input_features"]
        outputs = run_onnx(result.path, features)
        clip = outputs["clip_logits"]
        if meta["loss_type"] != "clip_ce":  # clip_ce stores raw logits, clip_bce probabilities
            clip = 1 / (1 + np.exp(-clip))
        np.testing.assert_allclose(
            clip, expected[f"{batch}.clipwise_output"], rtol=0, atol=ATOL, err_msg=f"{case}/{batch}"
        )
        frames = 1 / (1 + np.exp(-outputs["frame_logits"]))
        # The original repeats each of the 32 steps 32 times.
        np.testing.assert_allclose(
            frames, expected[f"{batch}.framewise_output"][:, ::32], rtol=0, atol=ATOL, err_msg=f"{case}/{batch}"
        )


# ----------------------------------------------------------------------------------------------------------------
# Export options on a tiny random model
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_classifier():
    torch.manual_seed(1)
    labels = ["dog", "cat", "siren"]
    config = tiny_config(num_labels=3, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    return randomise_batch_norm(HTSATForAudioClassification(config)).eval()


def test_classifier_export_from_memory_has_dynamic_axes_and_metadata(tiny_classifier, tmp_path):
    result = export_onnx(tiny_classifier, tmp_path / "sub" / "classifier.onnx", task="classification")
    assert result.path.is_file() and not list(tmp_path.glob("sub/*.data"))  # weights inside the one file
    assert result.exporter == "dynamo" and result.max_abs_diff <= ATOL
    assert result.input_shape == ("batch", "frames", 64) and result.output_names == ("logits",)
    # The caller's model is untouched (the exporter's copy switched to eager attention).
    assert tiny_classifier.config._attn_implementation == "sdpa" and not tiny_classifier.training

    model = onnx.load(str(result.path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_param and dims[2].dim_value == 64
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert json.loads(metadata["id2label"]) == {"0": "dog", "1": "cat", "2": "siren"}
    assert metadata["sampling_rate"] == "32000" and metadata["problem_type"] == "multi_label_classification"

    for batch, frames in ((1, 1001), (3, 1001), (2, 401)):
        features = log_mel_like(batch, frames, seed=batch)
        logits = run_onnx(result.path, features)["logits"]
        with torch.no_grad():
            reference = tiny_classifier(torch.from_numpy(features)).logits.numpy()
        assert logits.shape == (batch, 3)
        np.testing.assert_allclose(logits, reference, rtol=0, atol=ATOL)


def test_verify_reports_a_model_that_differs(tiny_classifier, tmp_path):
    result = export_onnx(tiny_classifier, tmp_path / "classifier.onnx", exporter="torchscript")
    other = HTSATForAudioClassification(tiny_classifier.config).eval()
    other.load_state_dict(tiny_classifier.state_dict())
    with torch.no_grad():
        other.head.conv.bias.add_(0.5)
    assert verify_onnx(result.path, tiny_classifier) <= ATOL
    assert verify_onnx(result.path, other) == pytest.approx(0.5, abs=1e-3)
    # export_onnx's own check refuses what exceeds its tolerance (float32 rounding exceeds a zero tolerance).
    with pytest.raises(OnnxExportError, match="differs from PyTorch's by"):
        export_onnx(tiny_classifier, tmp_path / "strict.onnx", exporter="torchscript", atol=1e-12, rtol=0.0)


def test_torchscript_exporter_fixed_frames(tiny_classifier, tmp_path):
    result = export_onnx(tiny_classifier, tmp_path / "ts.onnx", task="detection", opset=17)
    assert result.exporter == "torchscript" and result.opset == 17  # opset 17 is TorchScript's to produce
    assert result.input_shape == ("batch", 1001, 64)
    assert result.output_names == ("frame_logits", "clip_logits") and result.max_abs_diff <= ATOL


def test_auto_falls_back_to_torchscript_and_failures_are_reported(tiny_classifier, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated dynamo failure")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    result = export_onnx(tiny_classifier, tmp_path / "auto.onnx", exporter="auto")
    assert result.exporter == "torchscript" and result.max_abs_diff <= ATOL
    with pytest.raises(OnnxExportError, match="simulated dynamo failure"):
        export_onnx(tiny_classifier, tmp_path / "dynamo.onnx", exporter="dynamo")


def test_export_refuses_bad_arguments(tiny_classifier, tmp_path):
    with pytest.raises(ValueError, match="task"):
        export_onnx(tiny_classifier, tmp_path / "x.onnx", task="segmentation")
    with pytest.raises(InputError, match="nothing-here: no such model folder"):
        export_onnx(tmp_path / "nothing-here", tmp_path / "x.onnx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        export_onnx(tmp_path / "empty", tmp_path / "x.onnx")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match="is a file"):
        export_onnx(tiny_classifier, blocker / "model.onnx")
    with pytest.raises(TypeError, match="no classification head"):
        export_onnx(htsat_hf.HTSATModel(tiny_classifier.config), tmp_path / "x.onnx")


# ----------------------------------------------------------------------------------------------------------------
# An existing file: refused, or replaced only by a complete, verified export
# ----------------------------------------------------------------------------------------------------------------


def test_an_existing_file_is_refused_and_replaced_only_once_verified(tiny_classifier, tmp_path):
    output = tmp_path / "classifier.onnx"
    output.write_bytes(b"an earlier, good export")
    with pytest.raises(InputError, match="the file exists; write to a new path, or replace it with overwrite=True"):
        export_onnx(tiny_classifier, output, exporter="torchscript")
    assert output.read_bytes() == b"an earlier, good export"
    # A failed verification leaves the old file as it was, and no partial file beside it.
    with pytest.raises(OnnxExportError, match=f"{output}: onnxruntime's logits differs .* the file was not written"):
        export_onnx(tiny_classifier, output, exporter="torchscript", atol=1e-12, rtol=0.0, overwrite=True)
    assert output.read_bytes() == b"an earlier, good export"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["classifier.onnx"]

    result = export_onnx(tiny_classifier, output, exporter="torchscript", overwrite=True)
    assert result.path == output and result.max_abs_diff <= ATOL
    assert verify_onnx(output, tiny_classifier) <= ATOL
    assert sorted(path.name for path in tmp_path.iterdir()) == ["classifier.onnx"]


def test_a_failed_export_into_a_new_folder_leaves_nothing(tiny_classifier, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated exporter failure")

    monkeypatch.setattr(onnx_export, "_export_torchscript", broken)
    with pytest.raises(OnnxExportError, match="simulated exporter failure"):
        export_onnx(tiny_classifier, tmp_path / "new" / "sub" / "model.onnx", exporter="torchscript")
    assert list(tmp_path.iterdir()) == []


def test_the_output_may_not_be_one_of_the_model_s_files(tiny_classifier, tmp_path):
    model_dir = tmp_path / "model"
    tiny_classifier.save_pretrained(model_dir)
    HTSATFeatureExtractor.from_config(tiny_classifier.config).save_pretrained(model_dir)
    for name in ("model.safetensors", "config.json", "preprocessor_config.json"):
        before = (model_dir / name).read_bytes()
        with pytest.raises(InputError, match=f"is the model's own file .*{name}; write the ONNX file to another path"):
            export_onnx(model_dir, model_dir / name, exporter="torchscript", overwrite=True)
        assert (model_dir / name).read_bytes() == before
    # Through another spelling of the same file too.
    with pytest.raises(InputError, match="is the model's own file"):
        export_onnx(model_dir, model_dir / ".." / "model" / "model.safetensors", exporter="torchscript", overwrite=True)
    with pytest.raises(InputError, match="is a folder"):
        export_onnx(model_dir, model_dir, overwrite=True)
    # A new file inside the model folder is fine (the reference tests export to MODEL_DIR/model.onnx).
    assert export_onnx(model_dir, model_dir / "model.onnx", exporter="torchscript", verify=False).path.is_file()
