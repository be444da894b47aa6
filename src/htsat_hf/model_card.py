"""Model cards for saved HTS-AT models, and publishing a model folder on the Hugging Face Hub.

`make_model_card` reads a model folder (`config.json`, `preprocessor_config.json`, the weights) and builds a
`huggingface_hub.ModelCard`: Hub metadata (pipeline tag, `library_name: transformers`, tags, datasets, base model,
license, and a `model-index` with evaluation results), usage snippets that run as written (with this package, and
with `trust_remote_code=True` without it), the front-end settings a user must respect (sampling rate, clip length),
the label list and the citation. `save_model_card` writes it as the folder's `README.md`.

Publishing a model
------------------

A folder written by `save_pretrained` (or `htsat-hf convert`, or `average_checkpoints`) while `htsat_hf` is imported
holds everything the Hub needs: `config.json` (with an `auto_map` to the code files), `model.safetensors`,
`preprocessor_config.json` and the code files (`configuration_htsat.py`, `modeling_htsat.py`,
`feature_extraction_htsat.py` and the package modules they import, `CODE_FILES`), so that the model also loads with
`trust_remote_code=True` where `htsat_hf` is not installed. To publish it:

1. log in once: `hf auth login` (or set `HF_TOKEN`);
2. write the card: `htsat-hf card MODEL_DIR --repo-id user/name --dataset ... --metrics-json eval_results.json`
   (or `save_model_card(...)`);
3. upload: `push_model(MODEL_DIR, "user/name")`, which creates the repository if needed and uploads the folder in
   one commit (it writes a card first when the folder has none, and refuses folders that lack a required file).

The transformers route works too, file group by file group: `model.push_to_hub("user/name")`,
`feature_extractor.push_to_hub("user/name")`, `make_model_card(MODEL_DIR, repo_id="user/name").push_to_hub(
"user/name")`; `push_to_hub` uploads the code files along with the model when `htsat_hf` is imported.
"""

import json
import math
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import huggingface_hub
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import SafetensorError, safe_open
from transformers.dynamic_module_utils import get_relative_import_files

from .configuration_htsat import HTSATConfig
from .errors import InputError, error_line
from .loading import WEIGHT_FILES
from .sed.windows import grid_step_seconds

TASKS = ("audio-classification", "sound-event-detection")
TAGS = ["htsat", "audio", "audio-classification", "sound-event-detection"]
# The code trust_remote_code loads: the modules the auto_map names and every module they import relatively, which
# save_pretrained copies beside the model (transformers' own reading of the imports).
_AUTO_MAP_MODULES = ("configuration_htsat.py", "modeling_htsat.py", "feature_extraction_htsat.py")
CODE_FILES = tuple(
    sorted(
        set(_AUTO_MAP_MODULES)
        | {
            Path(imported).name
            for module in _AUTO_MAP_MODULES
            for imported in get_relative_import_files(str(Path(__file__).with_name(module)))
        }
    )
)
# A model folder the Hub can serve: weights, config, feature extractor, and the code.
REQUIRED_FILES = ("config.json", "preprocessor_config.json", *CODE_FILES)
# Files a training run leaves in an output folder that do not belong in a published model.
UPLOAD_IGNORE_PATTERNS = [
    "checkpoint-*",
    "checkpoint-*/*",
    "runs/*",
    "__pycache__/*",
    "*.pyc",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state*.pth",
    "training_args.bin",
    "trainer_state.json",
]
# Trainer's `eval_results.json` mixes metrics with bookkeeping; these keys are not model quality.
_BOOKKEEPING = {"loss", "runtime", "samples_per_second", "steps_per_second", "epoch", "samples"}
_METRIC_PREFIXES = ("eval_", "test_", "predict_")
# Model-index types the Hub knows, and display names, for the metrics this package computes.
_KNOWN_METRICS = {
    "map": ("map", "mAP"),
    "mauc": ("roc_auc", "mAUC"),
    "d_prime": ("d_prime", "d-prime"),
    "accuracy": ("accuracy", "Accuracy"),
    "top5_accuracy": ("top_5_accuracy", "Top-5 accuracy"),
    "f1": ("f1", "F1"),
}
COLLAPSE_LABELS_OVER = 20
CITATION = """@inproceedings{chen2022hts,
  title     = {HTS-AT: A Hierarchical Token-Semantic Audio Transformer for Sound Classification and Detection},
  author    = {Chen, Ke and Du, Xingjian and Zhu, Bilei and Ma, Zejun and Berg-Kirkpatrick, Taylor and Dubnov, Shlomo},
  booktitle = {IEEE International Conference on Acoustics, Speech and Signal Processing (ICASSP)},
  year      = {2022}
}"""


def normalize_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Evaluation results as `{metric: value}`: `eval_`/`test_`/`predict_` prefixes removed, Trainer bookkeeping
    (loss, runtime, throughput, epoch, sample counts) dropped, values converted to float.

    Raises:
        InputError: a value that is not a finite number.
    """
    cleaned = {}
    for key, value in metrics.items():
        name = key
        for prefix in _METRIC_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        if name in _BOOKKEEPING:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"metric {key!r} must be a finite number, got {value!r}")
        cleaned[name] = float(value)
    return cleaned


def read_metrics_json(path: str | PathLike) -> dict[str, float]:
    """`{metric: value}` from a JSON object such as Trainer's `eval_results.json`, see [`normalize_metrics`].

    Raises:
        InputError: naming the file: unreadable, not JSON, not an object, or a value that is not a finite number.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read metrics from {path}: {error_line(error)}") from None
    if not isinstance(document, dict):
        raise InputError(f"{path} must hold a JSON object of metric names and values")
    return normalize_metrics(document)


def _eval_results(
    metrics: Mapping[str, float], task: str, dataset_type: str, dataset_name: str, dataset_split: str | None
) -> list[EvalResult]:
    results = []
    for name, value in metrics.items():
        metric_type, metric_name = _KNOWN_METRICS.get(name.lower(), (name.lower(), name))
        results.append(
            EvalResult(
                task_type=task,
                task_name=task.replace("-", " ").capitalize(),
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split=dataset_split,
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=value,
            )
        )
    return results


def _count_parameters(model_dir: Path) -> int | None:
    """Number of stored weights, read from the safetensors headers (nothing is loaded); None without weights.

    Raises:
        InputError: a weights file that is truncated or not safetensors, naming it.
    """
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    elif (model_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        return None
    total = 0
    for name in files:
        try:
            with safe_open(str(model_dir / name), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118  (safe_open handles are not iterable)
                    # BatchNorm's num_batches_tracked is a counter, not a weight.
                    if not key.endswith("num_batches_tracked"):
                        total += math.prod(handle.get_slice(key).get_shape())
        except (SafetensorError, OSError) as error:
            raise InputError(
                f"{model_dir / name}: cannot read the weights, the file is truncated or not a safetensors file "
                f"({error_line(error)})"
            ) from None
    return total


def _read_extractor_settings(model_dir: Path) -> dict:
    path = model_dir / "preprocessor_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not JSON ({error_line(error)})") from None


def _python_block(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


def usage_snippets(repo_id: str, sampling_rate: int, top_k: int) -> dict[str, str]:
    """The card's runnable examples, `{title: python code}`. Each builds its own audio (a tone at the model's
    rate), so it runs as written; comments show the file-path form (decoded by the `ffmpeg` program)."""
    tone = (
        "# 5 s of a 440 Hz tone; audio given as a dict at another rate is resampled to the model's\n"
        f"t = np.arange(5 * {sampling_rate}) / {sampling_rate}\n"
        f'audio = {{"raw": (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), "sampling_rate": {sampling_rate}}}'
    )
    with_package = f"""
import numpy as np
import htsat_hf  # registers HTS-AT with transformers' Auto classes and pipelines
from transformers import pipeline

classifier = pipeline("audio-classification", model="{repo_id}")
{tone}
print(classifier(audio, top_k={top_k}))
# or a file (decoded by ffmpeg): classifier("recording.wav", top_k={top_k})
"""
    remote_code = f"""
import numpy as np
from transformers import pipeline

# Without htsat_hf installed: the model's own code files are loaded from the repository.
classifier = pipeline("audio-classification", model="{repo_id}", trust_remote_code=True)
{tone}
print(classifier(audio, top_k={top_k}))
"""
    detection = f"""
import numpy as np
import htsat_hf  # registers the "sound-event-detection" pipeline
from transformers import pipeline

detector = pipeline("sound-event-detection", model="{repo_id}")
# Audio of any length: 25 s here, scored in overlapping windows of the model's clip length.
t = np.arange(25 * {sampling_rate}) / {sampling_rate}
audio = {{"raw": (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), "sampling_rate": {sampling_rate}}}
for event in detector(audio, threshold=0.5, median_filter_seconds=0.45):
    print(f"{{event['onset']:6.2f}} {{event['offset']:6.2f}}  {{event['label']}}  {{event['score']:.2f}}")
"""
    return {
        "With the `htsat_hf` package": with_package,
        "With `trust_remote_code=True` (no package needed)": remote_code,
        "Sound event detection (timestamps)": detection,
    }


def _labels_section(labels: list[str]) -> str:
    items = "\n".join(f"{index}. {label}" for index, label in enumerate(labels))
    if len(labels) > COLLAPSE_LABELS_OVER:
        return f"<details>\n<summary>{len(labels)} labels (click to expand)</summary>\n\n{items}\n\n</details>"
    return items


def _results_table(results: list[EvalResult]) -> str:
    rows = ["| dataset | split | metric | value |", "| --- | --- | --- | --- |"]
    rows += [
        f"| {r.dataset_name} | {r.dataset_split or ''} | {r.metric_name or r.metric_type} | {r.metric_value:.4g} |"
        for r in results
    ]
    return "\n".join(rows)


def make_model_card(
    model_dir: str | PathLike,
    base_model: str | None = None,
    datasets: str | Sequence[str] | None = None,
    license: str | None = "mit",
    metrics: Mapping[str, float] | None = None,
    dataset_name: str | None = None,
    dataset_type: str | None = None,
    dataset_split: str | None = None,
    task: str = "audio-classification",
    repo_id: str | None = None,
    model_name: str | None = None,
    origin: str | None = None,
) -> ModelCard:
    """Build the model card of a saved HTS-AT model folder.

    Args:
        model_dir: folder with `config.json` (and usually `preprocessor_config.json` and the weights).
        base_model: Hub id of the model this one was fine-tuned from, if any.
        datasets: Hub dataset id(s) the model was trained on.
        license: license identifier for the metadata; `None` when it is not known (a converted model whose source
            declares none): the metadata then has no license and the card says it must be checked.
        metrics: `{metric: value}` from an evaluation (e.g. Trainer's `eval_results.json`; `eval_` prefixes and
            bookkeeping keys are dropped, see [`normalize_metrics`]); they become the card's `model-index`.
        dataset_type, dataset_name, dataset_split: the evaluation dataset for the `model-index` (Hub id, display
            name, split); default to the first of `datasets`. Required when `metrics` are given without `datasets`.
        task: `"audio-classification"` or `"sound-event-detection"`: the task of the evaluation results and the
            order of the usage examples. The Hub pipeline tag is `audio-classification` either way (the Hub has no
            detection task; the tags say it).
        repo_id: the Hub id the snippets load (`user/name`); defaults to the folder's name.
        model_name: the card's title and model-index name; defaults to the last part of `repo_id`.
        origin: Markdown placed after the introduction saying where the weights come from (for example the source
            of a conversion, see `convert_clap`); it replaces the "Fine-tuned from" line.

    Returns:
        a `huggingface_hub.ModelCard` whose `data` holds the metadata.
    """
    if task not in TASKS:
        raise InputError(f"task must be one of {TASKS}, got {task!r}")
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: not a saved model folder (no config.json)")
    try:
        config = HTSATConfig.from_pretrained(model_dir)
    except OSError as error:
        raise InputError(f"{model_dir / 'config.json'}: cannot be read ({error_line(error)})") from None
    extractor = _read_extractor_settings(model_dir)
    repo_id = repo_id or model_dir.resolve().name
    model_name = model_name or repo_id.split("/")[-1]
    datasets = [datasets] if isinstance(datasets, str) else list(datasets or [])

    eval_results = None
    if metrics:
        dataset_type = dataset_type or (datasets[0] if datasets else None)
        if dataset_type is None:
            raise InputError("metrics need an evaluation dataset: pass dataset_type (a Hub id) or datasets")
        eval_results = _eval_results(
            normalize_metrics(metrics), task, dataset_type, dataset_name or dataset_type, dataset_split
        )

    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=datasets or None,
        license=license,
        library_name="transformers",
        pipeline_tag="audio-classification",
        tags=list(TAGS),
        eval_results=eval_results,
    )

    labels = [config.id2label[i] for i in range(config.num_labels)]
    multi_label = config.problem_type == "multi_label_classification"
    max_seconds = float(extractor.get("max_length_seconds", 10.0))
    samples = round(max_seconds * config.sampling_rate)
    frames = 1 + samples // config.hop_length
    step_ms = grid_step_seconds(samples, config.hop_length, config.num_time_steps, config.sampling_rate) * 1e3
    parameters = _count_parameters(model_dir)
    scores = "independent sigmoid scores (multi-label)" if multi_label else "softmax scores (one class per clip)"

    intro = [
        f"# {model_name}",
        "",
        (
            f"An [HTS-AT](https://arxiv.org/abs/2202.00874) (Hierarchical Token-Semantic Audio Transformer) audio "
            f"classifier and sound event detector with {config.num_labels} classes and {scores}, for Hugging Face "
            "transformers with the `htsat_hf` package (or its bundled code, `trust_remote_code=True`)."
        ),
    ]
    if origin:
        intro += ["", origin]
    elif base_model:
        intro.append(f"Fine-tuned from [{base_model}](https://huggingface.co/{base_model}).")
    if datasets:
        links = ", ".join(f"[{d}](https://huggingface.co/datasets/{d})" for d in datasets)
        intro.append(f"Training data: {links}.")

    details = [
        "## Model details",
        "",
        "| | |",
        "| --- | --- |",
        (
            f"| input | mono audio at **{config.sampling_rate} Hz** (other rates must be resampled; the pipelines do "
            'it for `{"raw": ..., "sampling_rate": ...}` inputs) |'
        ),
        (
            f"| clip length | {max_seconds:g} s ({frames} frames of {config.num_mel_bins} log-mel bins, hop "
            f"{config.hop_length}); shorter clips are padded with {extractor.get('pad_mode', 'zeros')}, longer "
            "audio is scored in windows |"
        ),
        (
            f"| outputs | clip logits ({config.num_labels}); frame logits on a {config.num_time_steps}-step grid "
            f"({step_ms:.1f} ms per step for a full clip) |"
        ),
        f"| problem type | `{config.problem_type}` |",
        (
            f"| backbone | Swin transformer, embed dim {config.embed_dim}, depths {config.depths}, heads "
            f"{config.num_heads}, window {config.window_size}, "
            f"{'token-semantic' if config.use_token_semantic_head else 'linear'} head |"
        ),
    ]
    if parameters is not None:
        details.append(f"| parameters | {parameters:,} |")

    ordered = list(usage_snippets(repo_id, config.sampling_rate, min(5, config.num_labels)).items())
    if task == "sound-event-detection":
        ordered = ordered[-1:] + ordered[:-1]
    usage = ["## Usage", ""]
    for title, code in ordered:
        usage += [f"### {title}", "", _python_block(code), ""]
    usage += [
        "From the command line (with `htsat_hf` installed), tags and events for files of any length:",
        "",
        "```bash",
        f"htsat-hf predict recording.wav --model {repo_id} --top-k 5 --threshold 0.5 --format table",
        "```",
    ]

    sections = ["\n".join(intro), "\n".join(details), "\n".join(usage)]
    if eval_results:
        sections.append("## Evaluation results\n\n" + _results_table(eval_results))
    sections.append(f"## Labels\n\n{_labels_section(labels)}")
    if license is None:
        sections.append(
            "## License\n\nNot known: no license was given for these weights. Check the license of the weights' "
            "source before using or publishing this model."
        )
    sections.append(f"## Citation\n\n```bibtex\n{CITATION}\n```")
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"
    return ModelCard(content)


def save_model_card(model_dir: str | PathLike, **kwargs) -> Path:
    """Write [`make_model_card`]'s card as `model_dir/README.md` (replacing an existing one); returns its path."""
    card = make_model_card(model_dir, **kwargs)
    path = Path(model_dir) / "README.md"
    card.save(path)
    return path


def check_publishable(model_dir: str | PathLike) -> None:
    """Raise `InputError` naming every file the Hub copy would miss (see `REQUIRED_FILES`)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: no such folder")
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        missing.append("model.safetensors")
    if missing:
        hint = ""
        if any(name.endswith(".py") for name in missing):
            hint = (
                "; the code files are written by save_pretrained when htsat_hf is imported (they make "
                "trust_remote_code=True work): re-save the model with `import htsat_hf` first"
            )
        raise InputError(f"{model_dir} cannot be published, it lacks {', '.join(missing)}{hint}")


def push_model(
    model_dir: str | PathLike,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload HTS-AT model",
    revision: str | None = None,
    create_pr: bool = False,
    card_kwargs: Mapping | None = None,
):
    """Publish a saved model folder on the Hugging Face Hub (see the module docstring for the whole procedure).

    Checks that the folder is complete ([`check_publishable`]), writes `README.md` with [`save_model_card`] (with
    `repo_id` and `card_kwargs`) when the folder has none, creates the repository if it does not exist
    (`huggingface_hub.create_repo(..., exist_ok=True)`) and uploads the folder in one commit
    (`huggingface_hub.upload_folder`), leaving out training leftovers (`UPLOAD_IGNORE_PATTERNS`).

    Args:
        model_dir: folder written by `save_pretrained` / `htsat-hf convert` while `htsat_hf` was imported.
        repo_id: `user/name` or `org/name` on the Hub.
        private: visibility of a newly created repository (the Hub's default when None).
        token: Hub token; the logged-in one (`hf auth login`, `HF_TOKEN`) when None.
        commit_message, revision, create_pr: passed to `upload_folder`.
        card_kwargs: arguments of [`make_model_card`] for a card written here (`datasets`, `metrics`, ...).

    Returns:
        `upload_folder`'s `CommitInfo`.
    """
    model_dir = Path(model_dir)
    check_publishable(model_dir)
    if not (model_dir / "README.md").is_file():
        save_model_card(model_dir, **{"repo_id": repo_id, **dict(card_kwargs or {})})
    # Looked up on the module at call time, so that tests (and users) can substitute them.
    huggingface_hub.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    return huggingface_hub.upload_folder(
        repo_id=repo_id,
        folder_path=str(model_dir),
        repo_type="model",
        commit_message=commit_message,
        token=token,
        revision=revision,
        create_pr=create_pr,
        ignore_patterns=UPLOAD_IGNORE_PATTERNS,
    )


__all__ = [
    "check_publishable",
    "make_model_card",
    "normalize_metrics",
    "push_model",
    "read_metrics_json",
    "save_model_card",
    "usage_snippets",
]
