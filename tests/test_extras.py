"""Each entry point runs with what its documented extra installs.

For every entry point and the extra(s) its docs name, the entry point runs in a subprocess in which importing a
top-level module of a distribution outside the requirement closure of `install_requires + those extras` (as setup.py
declares them) fails as if it were not installed. It must work (exit 0 on a tiny task built here), or fail with one
clear line that names the extra to install; an ImportError traceback means setup.py's extras are wrong.

The closure is computed from the installed distributions' metadata (`importlib.metadata.requires`), and modules are
mapped to distributions with `importlib.metadata.packages_distributions()`.
"""

import importlib.metadata
import json
import os
import re
import runpy
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import setuptools
import torch
from conftest import REPO_ROOT, tiny_config
from packaging.requirements import Requirement

from htsat_hf import HTSATFeatureExtractor, HTSATForAudioClassification, HTSATForSoundEventDetection
from htsat_hf.synthetic import make_classification_folder, make_detection_folder

LABELS = ["tone", "chirp", "bursts"]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def setup_requirements() -> tuple[list[str], dict[str, list[str]]]:
    """`install_requires` and `extras_require` as setup.py declares them (setup.py run with `setup()` captured)."""
    captured = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
        runpy.run_path(str(REPO_ROOT / "setup.py"), run_name="__main__")
    return list(captured["install_requires"]), dict(captured["extras_require"])


def requirement_closure(requirements: list[str]) -> set[str]:
    """Normalised names of the distributions the requirements install, transitively (installed ones only)."""
    found: set[str] = set()
    seen: set[tuple[str, tuple[str, ...]]] = set()
    pending = [(Requirement(r), "") for r in requirements]
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = normalise(requirement.name)
        key = (name, tuple(sorted(requirement.extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: nothing of it can be imported anyway
        found.add(name)
        for text in requires:
            child = Requirement(text)
            markers = [""] + sorted(requirement.extras)
            for chosen in markers:
                if child.marker is None or child.marker.evaluate({"extra": chosen}):
                    pending.append((child, chosen))
                    break
    return found



def blocked_modules(extras: list[str]) -> list[str]:
    """Top-level modules that belong only to distributions outside the closure of the core plus `extras`."""
    install_requires, extras_require = setup_requirements()
    requirements = list(install_requires) + [r for extra in extras for r in extras_require[extra]]
    allowed = requirement_closure(requirements) | {"htsat-hf"}
    blocked = []
    for module, distributions in importlib.metadata.packages_distributions().items():
        if not any(normalise(d) in allowed for d in distributions):
            blocked.append(module)
    return sorted(blocked)


SITECUSTOMIZE = '''
import importlib.abc, importlib.util, json, os, sys

_BLOCKED = frozenset(json.loads(os.environ["HTSAT_TEST_BLOCKED_MODULES"]))
_EXTRAS = os.environ["HTSAT_TEST_EXTRAS"]


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed by htsat-hf{_EXTRAS})", name=name)
        return None


_find_spec = importlib.util.find_spec


def find_spec(name, package=None):  # what transformers and datasets ask before they import an optional module
    if name.partition(".")[0] in _BLOCKED:
        return None
    return _find_spec(name, package)


importlib.util.find_spec = find_spec
sys.meta_path.insert(0, _Blocker())
'''


def run_with_extras(tmp_path, extras: list[str], argv: list[str]) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(site), str(REPO_ROOT / "src")]),
        HTSAT_TEST_BLOCKED_MODULES=json.dumps(blocked_modules(extras)),
        HTSAT_TEST_EXTRAS=f"[{','.join(extras)}]" if extras else "",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_CACHE=str(tmp_path / "datasets-cache"),
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
    )
    return subprocess.run([sys.executable, *map(str, argv)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)


def assert_works_or_names_the_extra(result, extras):
    """Exit 0; or a clean failure whose one error line says which extra to install (never an import traceback)."""
    if result.returncode == 0:
        return
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    assert lines and "pip install" in lines[-1] and "htsat-hf[" in lines[-1], result.stderr[-4000:]


def test_the_blocker_blocks_what_the_extra_does_not_bring(tmp_path):
    """The harness itself: with the core alone, datasets is blocked and torch is not."""
    blocked = blocked_modules([])
    assert "datasets" in blocked and "accelerate" in blocked and "sed_scores_eval" in blocked
    assert "torch" not in blocked and "transformers" not in blocked and "htsat_hf" not in blocked
    result = run_with_extras(tmp_path, [], ["-c", "import htsat_hf\ntry:\n import datasets\nexcept ImportError:\n"
                                                  " print('blocked')"])
    assert result.returncode == 0 and result.stdout.strip() == "blocked", result.stderr[-3000:]


# --------------------------------------------------------------------------------------------------------------------
# Tiny tasks
# --------------------------------------------------------------------------------------------------------------------


def write_wav(path: Path, seconds=1.0, rate=32000):
    samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(samples.tobytes())
    return path


def save_tiny(directory: Path, model_class=HTSATForAudioClassification, **overrides) -> Path:
    torch.manual_seed(0)
    config = tiny_config(num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                         label2id={label: i for i, label in enumerate(LABELS)}, **overrides)
    model_class(config).save_pretrained(directory)
    HTSATFeatureExtractor.from_config(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_detection_folder(tmp_path_factory.mktemp("scenes"), num_files=2, seconds=4.0, classes=LABELS,
                                 events_per_file=1, seed=5)


HTSAT_HF = ["-c", "import sys\nfrom htsat_hf.cli import main\nsys.exit(main())"]


def test_predict_with_the_core_install(tmp_path, tiny_model):
    clip = write_wav(tmp_path / "clip.wav")
    result = run_with_extras(tmp_path, [], [*HTSAT_HF, "predict", clip, "--model", tiny_model, "--format", "json"])
    assert_works_or_names_the_extra(result, [])
    assert result.returncode == 0, result.stderr[-3000:]


def test_convert_with_the_core_install(tmp_path):
    shared = REPO_ROOT.parent / "shared" / "reference" / "tiny-esc50.ckpt"
    if shared.is_file():
        argv = [*HTSAT_HF, "convert", shared, tmp_path / "out", "--sample-rate", 32000, "--hop-length", 320,
                "--problem-type", "single_label_classification", "--pad-mode", "repeat"]
        result = run_with_extras(tmp_path, [], argv)
        assert result.returncode == 0, result.stderr[-3000:]
    else:  # no original checkpoint here: the command must still import and reach its own check of the file
        checkpoint = tmp_path / "text.ckpt"
        checkpoint.write_text("not a checkpoint")
        result = run_with_extras(tmp_path, [], [*HTSAT_HF, "convert", checkpoint, tmp_path / "out",
                                                "--sample-rate", 32000, "--hop-length", 320])
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.strip().startswith(f"htsat-hf convert: error: {checkpoint}: cannot be read")


def test_export_onnx_with_the_onnx_extra(tmp_path, tiny_model):
    result = run_with_extras(tmp_path, ["onnx"], [*HTSAT_HF, "export-onnx", tiny_model, tmp_path / "model.onnx"])
    assert_works_or_names_the_extra(result, ["onnx"])
    assert result.returncode == 0 and (tmp_path / "model.onnx").is_file(), result.stderr[-3000:]


def test_run_sed_detection_with_the_audio_and_sed_extras(tmp_path, scenes):
    model = save_tiny(tmp_path / "sed-model", HTSATForSoundEventDetection)
    result = run_with_extras(tmp_path, ["audio", "sed"], [
        REPO_ROOT / "run_sed.py", "--model_name_or_path", model, "--inputs", scenes / "audio",
        "--ground_truth", scenes / "annotations.tsv", "--durations", scenes / "durations.tsv",
        "--output_dir", tmp_path / "out", "--report_to", "none", "--disable_tqdm", "true", "--max_plots", 1,
    ])
    assert_works_or_names_the_extra(result, ["audio", "sed"])
    assert result.returncode == 0 and (tmp_path / "out" / "events.tsv").is_file(), result.stderr[-3000:]


def test_run_sed_score_only_with_the_sed_extra(tmp_path, scenes):
    predictions = tmp_path / "events.tsv"
    annotations = (scenes / "annotations.tsv").read_text().splitlines()
    predictions.write_text("\n".join(annotations) + "\n")  # a perfect detector
    result = run_with_extras(tmp_path, ["sed"], [
        REPO_ROOT / "run_sed.py", "--score_only", "--predictions", predictions,
        "--ground_truth", scenes / "annotations.tsv", "--durations", scenes / "durations.tsv",
        "--output_dir", tmp_path / "out", "--report_to", "none",
    ])
    assert_works_or_names_the_extra(result, ["sed"])
    assert result.returncode == 0 and (tmp_path / "out" / "metrics.json").is_file(), result.stderr[-3000:]


def test_run_audio_classification_with_the_audio_and_train_extras(tmp_path):
    folder = make_classification_folder(tmp_path / "data", LABELS, clips_per_class=2, seconds=1.0, seed=0)
    result = run_with_extras(tmp_path, ["audio", "train"], [
        REPO_ROOT / "run_audio_classification.py", "--train_dir", folder, "--eval_dir", folder, "--do_train",
        "--do_eval", "--max_steps", 1, "--per_device_train_batch_size", 2, "--output_dir", tmp_path / "out",
        "--config_overrides", "embed_dim=16,depths=[2,2,2,2],num_heads=[1,2,4,8]", "--max_length_seconds", 1,
        "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--save_strategy", "no",
        "--dataloader_num_workers", 0,
    ])
    assert_works_or_names_the_extra(result, ["audio", "train"])
    assert result.returncode == 0 and (tmp_path / "out" / "all_results.json").is_file(), result.stderr[-3000:]
