"""A model saved by this package loads with trust_remote_code=True in a Python that cannot import htsat_hf."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

import htsat_hf  # noqa: F401
from htsat_hf import HTSATFeatureExtractor, HTSATForAudioClassification, HTSATForSoundEventDetection, HTSATModel

from conftest import REPO_ROOT, tiny_config

SRC_DIR = str(REPO_ROOT / "src")

CHILD = textwrap.dedent(
    r"""
    import importlib.abc
    import os
    import sys

    src_dir, model_dir, out_dir = sys.argv[1:4]

    # The editable install puts the repository's src on sys.path (a .pth file): take it off, and make any import of
    # htsat_hf fail loudly, so that only the code saved beside the model can serve.
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != os.path.realpath(src_dir)]
    assert not any(os.path.realpath(p or ".") == os.path.realpath(src_dir) for p in sys.path)


    class BlockHtsatHf(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "htsat_hf" or name.startswith("htsat_hf."):
                raise ImportError(f"{name} must not be imported in this process")
            return None


    sys.meta_path.insert(0, BlockHtsatHf())
    try:
        import htsat_hf  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("htsat_hf is still importable")

    import numpy as np
    import torch
    from transformers import (
        AutoConfig,
        AutoFeatureExtractor,
        AutoModel,
        AutoModelForAudioClassification,
        AutoModelForAudioFrameClassification,
    )

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    extractor = AutoFeatureExtractor.from_pretrained(model_dir, trust_remote_code=True)
    classifier = AutoModelForAudioClassification.from_pretrained(model_dir, trust_remote_code=True).eval()
    detector = AutoModelForAudioFrameClassification.from_pretrained(model_dir, trust_remote_code=True).eval()
    backbone = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()

    waveforms = np.load(os.path.join(out_dir, "waveforms.npy"))
    features = extractor(list(waveforms), sampling_rate=config.sampling_rate, return_tensors="pt")["input_features"]
    with torch.no_grad():
        np.save(os.path.join(out_dir, "child_features.npy"), features.numpy())
        np.save(os.path.join(out_dir, "child_logits.npy"), classifier(features).logits.numpy())
        sed = detector(features)
        np.save(os.path.join(out_dir, "child_frame_logits.npy"), sed.logits.numpy())
        np.save(os.path.join(out_dir, "child_clip_logits.npy"), sed.clip_logits.numpy())
        np.save(os.path.join(out_dir, "child_pooled.npy"), backbone(features).pooler_output.numpy())

    assert "htsat_hf" not in sys.modules, sorted(m for m in sys.modules if "htsat" in m)
    import json

    report = {
        "config": type(config).__module__ + "." + type(config).__name__,
        "extractor": type(extractor).__module__ + "." + type(extractor).__name__,
        "classifier": type(classifier).__module__ + "." + type(classifier).__name__,
        "detector": type(detector).__module__ + "." + type(detector).__name__,
        "backbone": type(backbone).__module__ + "." + type(backbone).__name__,
        "num_labels": config.num_labels,
        "problem_type": config.problem_type,
        "pad_mode": extractor.pad_mode,
        "htsat_modules": sorted(m for m in sys.modules if m.startswith("htsat_hf")),
    }
    with open(os.path.join(out_dir, "report.json"), "w") as handle:
        json.dump(report, handle)
    """
)


def test_saved_model_loads_with_remote_code_without_the_package(tmp_path):
    model_dir, out_dir = tmp_path / "model", tmp_path / "out"
    out_dir.mkdir()
    config = tiny_config(problem_type="single_label_classification", id2label={i: f"class{i}" for i in range(5)})
    model = HTSATForAudioClassification(config).eval()
    with torch.no_grad():
        model.htsat.feature_norm.running_mean.fill_(-30.0)
        model.htsat.feature_norm.running_var.fill_(40.0)
    model.save_pretrained(model_dir)
    extractor = HTSATFeatureExtractor.from_config(config, pad_mode="repeat")
    extractor.save_pretrained(model_dir)
    saved = json.loads((model_dir / "config.json").read_text())
    assert {"AutoConfig", "AutoModel", "AutoModelForAudioClassification", "AutoModelForAudioFrameClassification"} <= set(
        saved["auto_map"]
    )
    assert (model_dir / "modeling_htsat.py").exists() and (model_dir / "configuration_htsat.py").exists()
    assert (model_dir / "feature_extraction_htsat.py").exists()

    rng = np.random.default_rng(0)
    waveforms = (rng.standard_normal((2, 32000 * 3)) * 0.1).astype(np.float32)
    np.save(out_dir / "waveforms.npy", waveforms)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"),
               HF_MODULES_CACHE=str(tmp_path / "hf-modules"), OMP_NUM_THREADS="1")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    completed = subprocess.run(
        [sys.executable, str(script), SRC_DIR, str(model_dir), str(out_dir)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]

    report = json.loads((out_dir / "report.json").read_text())
    assert report["htsat_modules"] == []
    for key in ("config", "extractor", "classifier", "detector", "backbone"):
        assert not report[key].startswith("htsat_hf"), report[key]
        assert report[key].startswith("transformers_modules."), report[key]
    assert report["classifier"].endswith(".HTSATForAudioClassification")
    assert report["detector"].endswith(".HTSATForSoundEventDetection")
    assert report["backbone"].endswith(".HTSATModel")
    assert report["extractor"].endswith(".HTSATFeatureExtractor")
    assert report["num_labels"] == 5 and report["problem_type"] == "single_label_classification"
    assert report["pad_mode"] == "repeat"

    features = extractor(list(waveforms), sampling_rate=32000, return_tensors="pt")["input_features"]
    np.testing.assert_allclose(np.load(out_dir / "child_features.npy"), features.numpy(), rtol=0, atol=1e-5)
    detector = HTSATForSoundEventDetection.from_pretrained(model_dir).eval()
    backbone = HTSATModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(features).logits.numpy()
        sed = detector(features)
        pooled = backbone(features).pooler_output.numpy()
    np.testing.assert_allclose(np.load(out_dir / "child_logits.npy"), logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.load(out_dir / "child_frame_logits.npy"), sed.logits.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.load(out_dir / "child_clip_logits.npy"), sed.clip_logits.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.load(out_dir / "child_pooled.npy"), pooled, rtol=0, atol=1e-5)
    assert Path(SRC_DIR, "htsat_hf").is_dir()  # the check above really had a package to hide
