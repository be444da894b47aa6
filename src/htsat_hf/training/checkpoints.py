"""Combining several trained HTS-AT models: weight averaging into one model, and prediction ensembles.

The public AudioSet checkpoint of the paper is a weight average of the best checkpoints of one run; its 0.487 mAP
ensemble averages the probabilities of 6 models (the original's `esm_test`), each with the 10-copy time-shift
augmentation of [`time_shift_tta`].
"""

from collections.abc import Iterable, Iterator, Mapping, Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from .. import modeling_htsat
from ..audio import load_waveform
from ..configuration_htsat import HTSATConfig
from ..errors import InputError, error_line
from ..loading import (
    check_model_source,
    check_new_output_dir,
    check_output_dir,
    load_feature_extractor,
    load_model,
    staged_output_dir,
)
from ..modeling_htsat import HTSATForAudioClassification, HTSATPreTrainedModel
from .metrics import audio_tagging_scores, classification_accuracy
from .tta import time_shift_tta

# Config fields that must agree for weights or predictions to be combined: the front end, the network's structure
# and the meaning of its outputs. Training-only settings (dropout, SpecAugment, initialisation) may differ.
COMPATIBILITY_KEYS = (
    "sampling_rate",
    "hop_length",
    "n_fft",
    "num_mel_bins",
    "f_min",
    "f_max",
    "spec_size",
    "patch_size",
    "embed_dim",
    "depths",
    "num_heads",
    "window_size",
    "mlp_ratio",
    "qkv_bias",
    "hidden_act",
    "layer_norm_eps",
    "batch_norm_eps",
    "use_token_semantic_head",
    "id2label",
    "problem_type",
)


def check_compatible(model_dirs: Sequence[str | PathLike]) -> list[HTSATConfig]:
    """Load the configs of saved models and refuse models that cannot be combined.

    Returns:
        the configs, in the order of `model_dirs`.

    Raises:
        InputError: when `model_dirs` is empty, a folder is not a saved model (see `loading.check_model_source`), or
            a model differs from the first in one of `COMPATIBILITY_KEYS` (the message names every differing field
            with both values).
    """
    if not model_dirs:
        raise InputError("model_dirs is empty: give at least one saved model folder")
    configs = []
    for model_dir in model_dirs:
        check_model_source(model_dir)
        try:
            configs.append(HTSATConfig.from_pretrained(model_dir))
        except OSError as error:
            raise InputError(f"{model_dir}: cannot read config.json ({error_line(error)})") from None
    first = configs[0]
    for model_dir, config in zip(model_dirs[1:], configs[1:]):
        differences = [
            f"{key}: {getattr(first, key)!r} vs {getattr(config, key)!r}"
            for key in COMPATIBILITY_KEYS
            if getattr(first, key) != getattr(config, key)
        ]
        if differences:
            raise InputError(
                f"cannot combine {model_dir} with {model_dirs[0]}: their architectures or label sets differ ("
                + "; ".join(differences)
                + ")"
            )
    return configs


def average_checkpoints(
    model_dirs: Sequence[str | PathLike], output_dir: str | PathLike, overwrite: bool = False
) -> HTSATPreTrainedModel:
    """Average the weights of saved models of one architecture into one model, saved to `output_dir`.

    Every floating-point parameter and buffer (BatchNorm running statistics included) becomes the mean over the
    models, computed in float64 and stored in the first model's dtype. Integer buffers (`num_batches_tracked`) are
    taken from the first model, as are the config (with its class and `auto_map`) and the feature extractor (built
    from the config when the first folder has none). Each folder's extractor is checked against its config.

    Args:
        model_dirs: local folders written by `save_pretrained` (for example `Trainer` checkpoints), each once (the same
            folder twice, also through a symlink or `..`, is refused: it would silently weigh that model double).
        output_dir: where to save the averaged model: a new or empty folder, or one replaced as a whole with
            `overwrite`. It may not be, contain or lie inside one of `model_dirs` (`htsat-hf average run/checkpoint-*
            --output run` would mix the average into the training run's folder). It is written as a staging folder
            beside it and takes its place only when complete: an error or Ctrl-C leaves an existing one as it was.
        overwrite: replace an existing non-empty `output_dir` (its old files are deleted once the new folder is
            complete).

    Returns:
        the averaged model, in eval mode.

    Raises:
        InputError: before any loading, for an output folder that cannot be written (`loading.check_output_dir`),
            that is one of `model_dirs`, contains or lies inside one, or that is not empty (without `overwrite`); a
            model folder that does not exist (no Hub lookup) or is given twice;
            for models of different architectures or label sets (see [`check_compatible`]), a feature extractor
            that differs from its config, unreadable weights (see `loading.load_model`), or weights that differ in
            names or shapes.
    """
    output_dir = check_output_dir(output_dir)
    overwritten = [str(d) for d in model_dirs if Path(d).resolve() == output_dir.resolve()]
    if overwritten:
        raise InputError(f"{output_dir}: the output folder is one of the models to average ({overwritten[0]}); "
                         "write the average to a new folder")
    check_new_output_dir(output_dir, inputs=model_dirs, overwrite=overwrite)
    for model_dir in model_dirs:  # local folders only: a typo is not looked up on the Hub
        if not Path(model_dir).exists():
            raise InputError(f"{model_dir}: no such model folder")
    configs = check_compatible(model_dirs)
    extractors = [load_feature_extractor(model_dir, config) for model_dir, config in zip(model_dirs, configs)]
    seen: dict[Path, str] = {}
    for model_dir in model_dirs:  # after each folder's own checks: a broken folder given twice is named as broken
        resolved = Path(model_dir).resolve()
        if resolved in seen:
            raise InputError(f"{model_dir}: the same model folder as {seen[resolved]}, given twice; each model is "
                             "averaged once (give it once)")
        seen[resolved] = str(model_dir)
    architecture = (configs[0].architectures or ["HTSATForAudioClassification"])[0]
    model_class = getattr(modeling_htsat, architecture, None)
    if not (isinstance(model_class, type) and issubclass(model_class, HTSATPreTrainedModel)):
        raise InputError(f"{model_dirs[0]} holds a {architecture}, not an HTS-AT model class of this package")

    averaged = load_model(model_class, model_dirs[0])
    reference = averaged.state_dict()
    sums = {name: tensor.double() for name, tensor in reference.items() if tensor.is_floating_point()}
    for model_dir in model_dirs[1:]:
        state = load_model(model_class, model_dir).state_dict()
        mismatched = sorted(
            set(state) ^ set(reference)
            | {name for name in set(state) & set(reference) if state[name].shape != reference[name].shape}
        )
        if mismatched:
            raise InputError(
                f"the weights of {model_dir} do not match those of {model_dirs[0]} (differing names or shapes: "
                f"{', '.join(mismatched[:10])}{' ...' if len(mismatched) > 10 else ''})"
            )
        for name in sums:
            sums[name] += state[name].double()
    averaged.load_state_dict(
        {**reference, **{name: (total / len(model_dirs)).to(reference[name].dtype) for name, total in sums.items()}}
    )
    averaged.eval()

    with staged_output_dir(output_dir) as staging:
        averaged.save_pretrained(staging)
        extractors[0].save_pretrained(staging)
    return averaged


def ensemble_predict(
    model_dirs: Sequence[str | PathLike],
    dataset: Iterable[Mapping],
    audio_column: str = "audio",
    batch_size: int = 8,
    shifts: int = 1,
    step_samples: int = 100,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Clip probabilities averaged over several models (and, with `shifts > 1`, over time-shifted copies).

    All models are held in memory together, so the audio is decoded once. Each model reads the audio through its
    own saved feature extractor.

    Args:
        model_dirs: folders of saved HTS-AT models with their feature extractors, all compatible (see
            [`check_compatible`]; the label sets must be equal).
        dataset: examples in a fixed order (a `datasets.Dataset`, a list of dicts, ...), each with
            `example[audio_column]` in any form `audio.load_waveform` takes: a `{"array", "sampling_rate"}` dict
            (resampled to the models' rate), a torchcodec `AudioDecoder` (`datasets`' `Audio` feature), a
            `{"path", "bytes"}` dict, a path.
        audio_column: the audio field of each example.
        batch_size: clips per forward pass.
        shifts, step_samples: time-shift augmentation per model, see [`time_shift_tta`]; the original's AudioSet
            ensemble uses `shifts=10`, its other evaluations `shifts=1`.
        device: where to run the models (default: the CPU).

    Returns:
        `(num_examples, num_labels)` float32 probabilities (sigmoid for multi-label models, softmax otherwise).

    Raises:
        InputError: see [`check_compatible`] and `loading.load_model`; audio that cannot be read (naming the
            example or file), or an empty dataset.
    """
    probabilities, _ = _ensemble_pass(model_dirs, dataset, audio_column, None, batch_size, shifts, step_samples, device)
    return probabilities


def ensemble_evaluate(
    model_dirs: Sequence[str | PathLike],
    dataset: Iterable[Mapping],
    label_column: str = "label",
    audio_column: str = "audio",
    batch_size: int = 8,
    shifts: int = 1,
    step_samples: int = 100,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Metrics of the ensemble's probabilities (see [`ensemble_predict`] for the arguments).

    `example[label_column]` is a multi-hot vector of `num_labels` values for multi-label models, scored with
    `{"mAP", "mAUC", "d_prime"}`, or a class id for single-label models, scored with `{"accuracy", "top5_accuracy"}`
    (see `htsat_hf.training.metrics`).
    """
    probabilities, labels = _ensemble_pass(
        model_dirs, dataset, audio_column, label_column, batch_size, shifts, step_samples, device
    )
    if labels.ndim == 2:
        return audio_tagging_scores(probabilities, labels)
    return classification_accuracy(probabilities, labels)


def _ensemble_pass(model_dirs, dataset, audio_column, label_column, batch_size, shifts, step_samples, device):
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    configs = check_compatible(model_dirs)
    device = torch.device("cpu" if device is None else device)
    models = [load_model(HTSATForAudioClassification, model_dir).to(device).eval() for model_dir in model_dirs]
    extractors = [load_feature_extractor(model_dir, config) for model_dir, config in zip(model_dirs, configs)]
    sampling_rate = configs[0].sampling_rate

    probabilities, labels = [], []
    for waveforms, batch_labels in _batches(dataset, audio_column, label_column, batch_size, sampling_rate):
        if label_column is not None:
            # Checked before the forward passes, so that a wrong label column fails at once, not after a long pass.
            labels.append(_check_labels(batch_labels, label_column, configs[0]))
        batch = sum(
            time_shift_tta(model, waveforms, extractor, sampling_rate, shifts, step_samples)
            for model, extractor in zip(models, extractors)
        )
        probabilities.append((batch / len(models)).numpy())
    if not probabilities:
        raise InputError("the dataset is empty")
    return np.concatenate(probabilities), (np.concatenate(labels) if label_column is not None else None)


def _check_labels(batch_labels: list, label_column: str, config: HTSATConfig) -> np.ndarray:
    labels = np.asarray(batch_labels)
    multi_label = config.problem_type == "multi_label_classification"
    expected = (len(batch_labels), config.num_labels) if multi_label else (len(batch_labels),)
    if labels.shape != expected or (not multi_label and not np.issubdtype(labels.dtype, np.integer)):
        kind = f"multi-hot vectors of {config.num_labels} values" if multi_label else "integer class ids"
        raise InputError(
            f"the models are {config.problem_type} models, so '{label_column}' must hold {kind}; got an array of "
            f"shape {labels.shape} and dtype {labels.dtype} for a batch of {len(batch_labels)} examples"
        )
    return labels


def _batches(
    dataset: Iterable[Mapping], audio_column: str, label_column: str | None, batch_size: int, sampling_rate: int
) -> Iterator[tuple[list[np.ndarray], list]]:
    """`(waveforms at sampling_rate, labels)` for consecutive groups of `batch_size` examples."""
    waveforms, labels = [], []
    for index, example in enumerate(dataset):
        waveforms.append(load_waveform(example[audio_column], sampling_rate, name=f"example {index}"))
        if label_column is not None:
            labels.append(example[label_column])
        if len(waveforms) == batch_size:
            yield waveforms, labels
            waveforms, labels = [], []
    if waveforms:
        yield waveforms, labels


__all__ = ["COMPATIBILITY_KEYS", "average_checkpoints", "check_compatible", "ensemble_evaluate", "ensemble_predict"]
