"""Model cards (Hub metadata that validates and round-trips, usage snippets that run as written), the offline
equivalent of push_to_hub + from_pretrained (local code and trust_remote_code in a process that cannot import
htsat_hf), and push_model with the Hub API mocked."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import filter_repo_objects

import htsat_hf
from htsat_hf import HTSATFeatureExtractor, HTSATForAudioClassification
from htsat_hf.errors import InputError
from htsat_hf.model_card import (
    REQUIRED_FILES,
    UPLOAD_IGNORE_PATTERNS,
    make_model_card,
    normalize_metrics,
    push_model,
    read_metrics_json,
    save_model_card,
)

from conftest import tiny_config

REPO_ID = "tester/htsat-tiny"
LABELS = ["dog", "cat", "siren"]
SRC_DIR = Path(htsat_hf.__file__).resolve().parents[1]


def save_tiny_model(directory: Path, labels=LABELS, seed=0, **overrides) -> HTSATForAudioClassification:
    torch.manual_seed(seed)
    config = tiny_config(
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        **overrides,
    )
    model = HTSATForAudioClassification(config).eval()
    with torch.no_grad():  # BatchNorm statistics that a lost buffer would change
        model.htsat.feature_norm.running_mean.uniform_(-40, -20)
        model.htsat.feature_norm.running_var.uniform_(10, 60)
        # The first class always present, so the detection example surely prints events.
        model.head.conv.bias[0] += 3.0
    model.save_pretrained(directory)
    HTSATFeatureExtractor.from_config(config).save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("htsat-tiny")
    save_tiny_model(directory)
    return directory


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


# ----------------------------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------------------------


def test_card_metadata(model_dir):
    card = make_model_card(
        model_dir,
        base_model="someone/htsat-audioset",
        datasets=["ashraq/esc50"],
        metrics={
            "eval_accuracy": 0.91,
            "eval_top5_accuracy": 0.99,
            "eval_loss": 0.3,
            "eval_runtime": 2.0,
            "epoch": 3.0,
        },
        dataset_name="ESC-50",
        dataset_split="test",
        repo_id=REPO_ID,
    )
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "audio-classification" and data["library_name"] == "transformers"
    assert {"htsat", "audio", "sound-event-detection"} <= set(data["tags"])
    assert data["datasets"] == ["ashraq/esc50"] and data["base_model"] == "someone/htsat-audioset"
    assert data["license"] == "mit"
    (entry,) = data["model-index"]
    assert entry["name"] == "htsat-tiny"
    (result,) = entry["results"]
    assert result["task"]["type"] == "audio-classification"
    assert result["dataset"] == {"name": "ESC-50", "type": "ashraq/esc50", "split": "test"}
    metrics = {m["type"]: m["value"] for m in result["metrics"]}
    assert metrics == {"accuracy": 0.91, "top_5_accuracy": 0.99}  # loss, runtime and epoch are not model quality

    # The metadata survives a round trip through ModelCardData and through the YAML of a saved README.
    assert ModelCardData(**data).to_dict() == data
    path = model_dir / "card-roundtrip.md"
    card.save(path)
    loaded = ModelCard.load(path)
    assert loaded.data.to_dict() == data
    assert [(r.metric_type, r.metric_value) for r in loaded.data.eval_results] == [
        ("accuracy", 0.91),
        ("top_5_accuracy", 0.99),
    ]
    # The body names the input requirements and the labels.
    assert "32000 Hz" in loaded.text and all(f". {label}" in loaded.text for label in LABELS)
    assert "<details>" not in loaded.text


def test_card_without_metrics_has_no_model_index(model_dir):
    data = make_model_card(model_dir).data.to_dict()
    assert "model-index" not in data and "datasets" not in data and "base_model" not in data
    assert data["license"] == "mit"


def test_long_label_lists_are_collapsed(tmp_path):
    labels = [f"class {i}" for i in range(40)]
    save_tiny_model(tmp_path, labels=labels)
    text = make_model_card(tmp_path).text
    details = text[text.index("<details>") : text.index("</details>")]
    assert "40 labels" in details and all(f"{i}. class {i}\n" in details for i in range(40))


def test_metrics_inputs(tmp_path, model_dir):
    assert normalize_metrics({"eval_mAP": 0.47, "test_mAUC": 0.97, "eval_samples_per_second": 9.0}) == {
        "mAP": 0.47,
        "mAUC": 0.97,
    }
    with pytest.raises(ValueError, match="eval_mAP"):
        normalize_metrics({"eval_mAP": "high"})
    (tmp_path / "eval_results.json").write_text(json.dumps({"eval_mAP": 0.47, "epoch": 1.0}))
    assert read_metrics_json(tmp_path / "eval_results.json") == {"mAP": 0.47}
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        read_metrics_json(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="dataset"):
        make_model_card(model_dir, metrics={"mAP": 0.47})
    with pytest.raises(InputError, match=f"{tmp_path}: not a saved model folder \\(no config.json\\)"):
        make_model_card(tmp_path)
    with pytest.raises(ValueError, match="task"):
        make_model_card(model_dir, task="speech-recognition")


def test_save_model_card_writes_readme(tmp_path):
    save_tiny_model(tmp_path)
    path = save_model_card(tmp_path, datasets="agkphysics/AudioSet", metrics={"mAP": 0.5}, repo_id=REPO_ID)
    assert path == tmp_path / "README.md"
    card = ModelCard.load(path)
    (result,) = card.data.eval_results
    assert result.metric_type == "map" and result.dataset_type == "agkphysics/AudioSet"


# ----------------------------------------------------------------------------------------------------------------
# The usage snippets run as written (repo id replaced by the local folder)
# ----------------------------------------------------------------------------------------------------------------


def test_usage_snippets_run(model_dir):
    text = make_model_card(model_dir, repo_id=REPO_ID).text
    blocks = python_blocks(text)
    assert len(blocks) == 3 and all(REPO_ID in block for block in blocks)
    assert "trust_remote_code=True" in blocks[1] and "import htsat_hf" not in blocks[1]
    # The first (with htsat_hf) and third (sound-event detection, 25 s) run here; the remote-code one runs in a
    # process without htsat_hf, in test_offline_round_trip_with_and_without_the_package.
    for block in (blocks[0], blocks[2]):
        code = block.replace(REPO_ID, str(model_dir))
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            # Running the card's code is what this test is for.
            exec(compile(code, "<model card snippet>", "exec"), {"__name__": "__card__"})  # noqa: S102
        printed = stdout.getvalue()
        if "audio-classification" in block:
            assert printed.count("'label'") == 3 and all(label in printed for label in LABELS)
        else:  # events printed as onset offset label score, with times inside the 25 s signal
            assert "dog" in printed
            for line in printed.strip().splitlines():
                onset, offset, label, score = line.split()
                assert 0 <= float(onset) < float(offset) <= 25.0 and label in LABELS and 0.5 < float(score) <= 1


def test_detection_card_puts_the_detection_example_first(model_dir):
    blocks = python_blocks(make_model_card(model_dir, task="sound-event-detection").text)
    assert 'pipeline("sound-event-detection"' in blocks[0]


# ----------------------------------------------------------------------------------------------------------------
# Offline push/load round trip
# ----------------------------------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys
    src = sys.argv[1]
    # No route to htsat_hf: neither the source folder on sys.path nor the editable install's import hook.
    sys.path[:] = [p for p in sys.path if not p.startswith(src)]

    class BlockHtsat(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "htsat_hf" or name.startswith("htsat_hf."):
                raise ImportError("htsat_hf is blocked in this process")
            return None

    sys.meta_path.insert(0, BlockHtsat())
    try:
        import htsat_hf  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("htsat_hf was importable")

    import numpy as np
    import torch
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    model_dir, waveform_path, logits_path, snippet_path = sys.argv[2:6]
    extractor = AutoFeatureExtractor.from_pretrained(model_dir, trust_remote_code=True)
    model = AutoModelForAudioClassification.from_pretrained(model_dir, trust_remote_code=True).eval()
    waveform = np.load(waveform_path)
    features = extractor(waveform, sampling_rate=extractor.sampling_rate, return_tensors="pt")["input_features"]
    with torch.no_grad():
        np.save(logits_path, model(features).logits.numpy())
    exec(compile(open(snippet_path).read(), "<remote-code snippet>", "exec"), {"__name__": "__card__"})
    loaded = sorted(name for name in sys.modules if "htsat" in name)
    print(json.dumps({"model_class": type(model).__module__, "extractor_class": type(extractor).__module__,
                      "htsat_modules": loaded}))
    """
)


def test_required_files_include_the_modules_the_code_imports():
    # The feature extractor reads audio through audio.py and raises errors.py's InputError: save_pretrained copies
    # both beside the model, and a published folder without them would not load with trust_remote_code=True.
    assert {"audio.py", "errors.py", "feature_extraction_htsat.py", "modeling_htsat.py"} <= set(REQUIRED_FILES)
    assert {"config.json", "preprocessor_config.json"} <= set(REQUIRED_FILES)


def test_card_of_a_folder_with_truncated_weights_names_the_file(tmp_path):
    model_dir = tmp_path / "truncated"
    save_tiny_model(model_dir)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(InputError, match=f"{weights}: cannot read the weights, the file is truncated"):
        make_model_card(model_dir)


def test_offline_round_trip_with_and_without_the_package(tmp_path):
    model_dir = tmp_path / "published"
    model = save_tiny_model(model_dir, seed=3)
    save_model_card(model_dir, repo_id=REPO_ID)
    # What push_to_hub would upload: card, config, weights, feature extractor, and the code for remote loading.
    assert {"README.md", "model.safetensors", *REQUIRED_FILES} <= {p.name for p in model_dir.iterdir()}

    rng = np.random.default_rng(0)
    waveform = (0.1 * rng.standard_normal((2, 32000 * 4))).astype(np.float32)
    np.save(tmp_path / "waveform.npy", waveform)
    features = HTSATFeatureExtractor.from_pretrained(model_dir)(waveform, sampling_rate=32000, return_tensors="pt")
    with torch.no_grad():
        expected = model(features["input_features"]).logits.numpy()
        local = HTSATForAudioClassification.from_pretrained(model_dir).eval()
        np.testing.assert_allclose(local(features["input_features"]).logits.numpy(), expected, rtol=0, atol=1e-6)

    snippet = python_blocks(ModelCard.load(model_dir / "README.md").text)[1].replace(REPO_ID, str(model_dir))
    (tmp_path / "snippet.py").write_text(snippet)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),  # the remote code is copied here, not into ~/.cache
        "PYTHONPATH": "",
    }
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(SRC_DIR),
            str(model_dir),
            str(tmp_path / "waveform.npy"),
            str(tmp_path / "logits.npy"),
            str(tmp_path / "snippet.py"),
        ],
        check=False,  # the return code is asserted below, with the child's stderr as the message
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    lines = child.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["model_class"].startswith("transformers_modules.")
    assert report["extractor_class"].startswith("transformers_modules.")
    assert not [name for name in report["htsat_modules"] if name.startswith("htsat_hf")]
    # The card's remote-code snippet printed the pipeline's top-3 with our labels.
    assert all(label in "\n".join(lines[:-1]) for label in LABELS)
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# push_model with the Hub API mocked
# ----------------------------------------------------------------------------------------------------------------


def test_push_model_uploads_the_complete_folder(tmp_path):
    model_dir = tmp_path / "to-push"
    save_tiny_model(model_dir)
    (model_dir / "checkpoint-10").mkdir()
    (model_dir / "checkpoint-10" / "optimizer.pt").write_bytes(b"x")
    (model_dir / "training_args.bin").write_bytes(b"x")
    uploaded = {}

    def fake_upload_folder(**kwargs):
        folder = Path(kwargs["folder_path"])
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        uploaded["files"] = set(filter_repo_objects(files, ignore_patterns=kwargs["ignore_patterns"]))
        uploaded["card"] = (folder / "README.md").read_text()
        uploaded.update(kwargs)
        return "commit-info"

    with (
        mock.patch("huggingface_hub.create_repo") as create_repo,
        mock.patch("huggingface_hub.upload_folder", side_effect=fake_upload_folder) as upload_folder,
    ):
        result = push_model(model_dir, REPO_ID, private=True, card_kwargs={"datasets": ["ashraq/esc50"]})

    assert result == "commit-info"
    create_repo.assert_called_once_with(REPO_ID, token=None, private=True, repo_type="model", exist_ok=True)
    upload_folder.assert_called_once()
    assert uploaded["repo_id"] == REPO_ID and Path(uploaded["folder_path"]) == model_dir
    assert {"README.md", "model.safetensors", *REQUIRED_FILES} <= uploaded["files"]
    assert not {"training_args.bin", "checkpoint-10/optimizer.pt"} & uploaded["files"]
    assert f'model="{REPO_ID}"' in uploaded["card"] and "ashraq/esc50" in uploaded["card"]
    assert "checkpoint-*" in UPLOAD_IGNORE_PATTERNS


def test_push_model_keeps_an_existing_card_and_refuses_incomplete_folders(tmp_path):
    model_dir = tmp_path / "to-push"
    save_tiny_model(model_dir)
    (model_dir / "README.md").write_text("---\nlicense: apache-2.0\n---\nhand written\n")
    with mock.patch("huggingface_hub.create_repo"), mock.patch("huggingface_hub.upload_folder") as upload_folder:
        push_model(model_dir, REPO_ID)
    upload_folder.assert_called_once()
    assert (model_dir / "README.md").read_text().endswith("hand written\n")

    (model_dir / "modeling_htsat.py").unlink()
    with (
        mock.patch("huggingface_hub.create_repo") as create_repo,
        mock.patch("huggingface_hub.upload_folder") as upload_folder,
        pytest.raises(InputError, match="modeling_htsat.py.*trust_remote_code"),
    ):
        push_model(model_dir, REPO_ID)
    create_repo.assert_not_called()
    upload_folder.assert_not_called()
