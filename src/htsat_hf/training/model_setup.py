"""Building the model to train: from a saved model (re-initialising the classifier for a new label set), from a
config with overrides (training from scratch), and initialising the backbone from ImageNet Swin-T weights. Problems
with what the user named (a missing folder, a bad override, an unreadable checkpoint) are `InputError`s naming it."""

import json
import logging
import re
from pathlib import Path

import torch

from ..configuration_htsat import HTSATConfig
from ..convert_htsat_original_checkpoint import _RENAMES
from ..errors import InputError, error_line
from ..modeling_htsat import HTSATForAudioClassification, HTSATPreTrainedModel
from ..loading import check_model_source, load_model

logger = logging.getLogger(__name__)


def parse_config_overrides(overrides: str | None) -> dict:
    """`"embed_dim=16,depths=[2,2,2,2],drop_path_rate=0.0"` to a dict. Values are read as JSON (numbers, booleans,
    lists) and fall back to plain strings; commas inside brackets do not split.

    Raises:
        InputError: an item that is not `key=value`.
    """
    if not overrides:
        return {}
    result = {}
    for item in re.split(r",(?![^\[]*\])", overrides):
        if not item.strip():
            continue
        if "=" not in item:
            raise InputError(f"config override {item!r} is not key=value")
        key, value = (part.strip() for part in item.split("=", 1))
        try:
            result[key] = json.loads(value.replace("True", "true").replace("False", "false"))
        except json.JSONDecodeError:
            result[key] = value
    return result


# Keys that `save_pretrained` writes beside the config's own fields, accepted in a config file and dropped.
_SAVED_METADATA = {"auto_map", "architectures", "transformers_version", "model_type", "_name_or_path", "num_labels"}


def read_config_values(config_name: str) -> dict:
    """The fields of an `HTSATConfig` named by `--config_name`, as transformers' example scripts take it: a
    `config.json` file (e.g. written by `HTSATConfig.save_pretrained`), a folder holding one, or a Hub id (read with
    `HTSATConfig.from_pretrained`).

    Raises:
        InputError: a missing or unreadable file, a folder without `config.json`, a config of another model type, or
            a Hub id that cannot be reached (offline) or found, naming it.
    """
    path = Path(config_name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{config_name}: the folder holds no config.json")
        path = path / "config.json"
    if path.is_file():
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{path}: cannot read the config ({error_line(error)})") from None
        if not isinstance(values, dict):
            raise InputError(f"{path}: a config file holds a JSON object of HTSATConfig fields")
        model_type = values.get("model_type", HTSATConfig.model_type)
        if model_type != HTSATConfig.model_type:
            raise InputError(f"{path}: is a {model_type!r} config, not an HTS-AT ({HTSATConfig.model_type!r}) one")
        return values
    if config_name.endswith(".json") or path.is_absolute() or config_name.startswith((".", "~")) or (
        config_name.count("/") > 1
    ):
        raise InputError(f"{config_name}: no such config file or folder")
    try:
        config = HTSATConfig.from_pretrained(config_name)
    except InputError:
        raise
    except Exception as error:  # OSError offline or for an unknown id, ValueError for another model type
        raise InputError(f"{config_name}: cannot load the config from the Hub ({error_line(error)})") from None
    return config.to_dict()


def build_config(config_name: str | None, overrides: str | None, label_names: list[str], problem_type: str):
    """An `HTSATConfig` from `config_name` (see `read_config_values`; the defaults if None) with overrides and the
    task's labels (which replace any labels of the config).

    Raises:
        InputError: an unreadable or non-JSON config file, unknown fields, or values HTSATConfig refuses.
    """
    values = {}
    if config_name:
        values = read_config_values(config_name)
        values = {key: value for key, value in values.items() if key not in _SAVED_METADATA}
    values.update(parse_config_overrides(overrides))
    unknown = set(values) - set(HTSATConfig().to_dict()) - {"num_labels"}
    if unknown:
        raise InputError(f"unknown HTSATConfig fields: {sorted(unknown)}")
    values.update(
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        problem_type=problem_type,
    )
    values.pop("num_labels", None)
    try:
        return HTSATConfig(**values)
    except (TypeError, ValueError) as error:  # int("abc") and friends, besides HTSATConfig's own InputErrors
        raise InputError(f"config: {error_line(error)}") from None


def load_for_labels(
    model_name_or_path: str,
    label_names: list[str],
    problem_type: str,
    model_class=HTSATForAudioClassification,
    **kwargs,
) -> HTSATPreTrainedModel:
    """A saved model set up for `label_names`: unchanged when the label set is the model's, otherwise with its
    classifier re-initialised (logged), as when fine-tuning the AudioSet model on ESC-50.

    Raises:
        InputError: see `loading.load_model` (a missing folder, unreadable weights, ...).
    """
    check_model_source(model_name_or_path)
    try:
        config = HTSATConfig.from_pretrained(model_name_or_path, **kwargs)
    except OSError as error:
        raise InputError(f"{model_name_or_path}: cannot read the model's config ({error_line(error)})") from None
    same_labels = [config.id2label[i] for i in range(config.num_labels)] == list(label_names)
    if same_labels:
        return load_model(model_class, model_name_or_path, problem_type=problem_type, **kwargs)
    logger.warning(
        "re-initialising the classifier of %s: its %d labels (%s...) differ from the task's %d labels (%s...)",
        model_name_or_path, config.num_labels, ", ".join(list(config.id2label.values())[:3]), len(label_names),
        ", ".join(label_names[:3]),
    )
    model = load_model(
        model_class,
        model_name_or_path,
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        problem_type=problem_type,
        ignore_mismatched_sizes=True,
        **kwargs,
    )
    # Same-sized heads load without a size mismatch, so re-initialise explicitly whatever the sizes; loaded
    # parameters carry transformers' "already initialised" flag, which the init functions respect.
    for parameter in model.head.parameters():
        parameter._is_hf_initialized = False
    model.head.apply(model._init_weights)
    return model


def load_swin_weights(model: HTSATPreTrainedModel, checkpoint: str | Path) -> dict[str, list[str]]:
    """Initialise the backbone from an ImageNet Swin checkpoint (window 8, 256 px, as the paper's best AudioSet
    model), e.g. the official `swin_tiny_patch4_window8_256` file or timm's: the RGB patch embedding is averaged
    over channels; tensors of another shape (a different window size or width) are left as initialised.

    Returns:
        `{"loaded": [...], "skipped": [...], "missing": [...]}` names in this model; also logged.

    Raises:
        InputError: a file that is missing or cannot be read as a PyTorch checkpoint of tensors.
    """
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for a file that is not a checkpoint
        raise InputError(
            f"{checkpoint}: cannot be read as a Swin checkpoint ({type(error).__name__}: {error_line(error)})"
        ) from None
    state = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else None
    if not isinstance(state, dict):
        raise InputError(f"{checkpoint}: holds no state dict of tensors")
    targets = dict(model.named_parameters())
    prefix = f"{model.base_model_prefix}." if hasattr(model, model.base_model_prefix) else ""
    loaded, skipped = [], []
    with torch.no_grad():
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                continue  # training metadata stored beside the weights
            key = key.removeprefix("model.").removeprefix("backbone.")
            if key == "patch_embed.proj.weight" and value.shape[1] == 3:
                value = value.mean(dim=1, keepdim=True)
            name = next((re.sub(p, r, key) for p, r in _RENAMES if re.fullmatch(p, key) and not key.startswith("bn0")), None)
            if name is None:
                skipped.append(f"{key} {tuple(value.shape)}")
                continue
            name = prefix + name.removeprefix("htsat.")
            if name in targets and targets[name].shape == value.shape:
                targets[name].copy_(value)
                loaded.append(name)
            else:
                skipped.append(f"{key} {tuple(value.shape)}")
    missing = [n for n in targets if n not in loaded]
    logger.warning(
        "Swin initialisation from %s: %d tensors loaded, %d skipped (shape or name mismatch): %s; %d model tensors "
        "not in the checkpoint: %s", checkpoint, len(loaded), len(skipped), skipped[:5], len(missing), missing[:8],
    )
    return {"loaded": loaded, "skipped": skipped, "missing": missing}


__all__ = ["build_config", "read_config_values", "load_for_labels", "load_swin_weights", "parse_config_overrides"]
