"""Start an HTS-AT model from the audio tower of a LAION-CLAP model in transformers' format.

The most downloaded HTS-AT weights are the audio towers of LAION's CLAP models (`laion/clap-htsat-unfused` and
others), saved as transformers' `ClapModel` / `ClapAudioModel`. Their backbone is HTS-AT's
Swin over the same folded 64-bin log-mel, trained contrastively at 48 kHz; transformers dropped the token-semantic
head. [`convert_clap`] turns one into an HTS-AT model folder:

- the backbone weights, renamed (and the separate query/key/value projections fused into HTS-AT's `qkv`), with a
  freshly initialised head (token-semantic, or linear on request) to fine-tune;
- an [`HTSATFeatureExtractor`] that reproduces `ClapFeatureExtractor`'s unfused (`truncation="rand_trunc"`) features:
  the source's rate, hop, FFT size, Slaney mel filters and range, dB conversion, clip length and padding;
- a model card naming the source model and the license its card declares (none is invented).

Before writing, the converter runs the source tower and the converted backbone on the same features and the two
front ends on the same waveform, and refuses the result if they differ (see [`backbone_differences`]).

Mapping of the outputs (both models see `(batch, frames, mel_bins)` features; CLAP's `ClapAudioModel` takes them with
a channel axis, `(batch, 1, frames, mel_bins)`):

- CLAP's `last_hidden_state` `(batch, hidden, rows, steps)` (the final token grid regrouped into chronological time
  steps) is `tokens_to_time_grid(htsat.last_hidden_state, config.freq_ratio)` of HTS-AT's row-major
  `(batch, tokens, hidden)`;
- CLAP's `pooler_output` (the mean of the final tokens) is HTS-AT's `pooler_output`.

Not converted: the fused variant (`enable_fusion=True`, e.g. `laion/clap-htsat-fused`), whose attentional feature
fusion of three local crops of long clips has no counterpart in HTS-AT (refused with one line); CLAP's projection
head and text tower (the contrastive embedding space), which a classifier does not use.
"""

import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import ModelCard
from transformers import ClapAudioConfig, ClapAudioModel, ClapConfig, ClapFeatureExtractor, ClapModel, PretrainedConfig
from transformers.utils import logging as transformers_logging

from .configuration_htsat import HTSATConfig
from .errors import InputError, error_line
from .feature_extraction_htsat import HTSATFeatureExtractor
from .loading import (
    WEIGHT_FILES,
    check_model_source,
    check_new_output_dir,
    save_checked_model,
    staged_output_dir,
)
from .model_card import save_model_card
from .modeling_htsat import HTSATForAudioClassification, HTSATModel, relative_position_index, tokens_to_time_grid

logger = logging.getLogger(__name__)

HEADS = ("token-semantic", "linear")
PROBLEM_TYPES = ("multi_label_classification", "single_label_classification")
# The rate LAION's CLAP models were trained at (their preprocessor_config.json); another one converts with a warning.
LAION_SAMPLING_RATE = 48000
# Buffers a checkpoint may lack because transformers recomputes them exactly when loading (the position index of a
# window, the text tower's position and token-type ids): anything else missing would be filled with fresh values.
_RECOMPUTED_BUFFERS = re.compile(r"(relative_position_index|position_ids|token_type_ids)$")
# ClapFeatureExtractor's padding of short clips -> HTSATFeatureExtractor's pad_mode (the same operation).
CLAP_PADDING_TO_PAD_MODE = {"repeatpad": "repeatpad", "repeat": "repeat", "pad": "zeros"}
# The parity the converter demands before it writes anything (the tests demand 1e-5 on the same features).
BACKBONE_TOLERANCE = 1e-4
FRONT_END_TOLERANCE_DB = 1e-3

# CLAP audio-tower name (without `audio_encoder.`) -> HTS-AT name; query/key/value are fused separately.
_RENAMES = [
    (r"batch_norm\.(.+)", r"htsat.feature_norm.\1"),
    (r"patch_embed\.proj\.(.+)", r"htsat.patch_embed.projection.\1"),
    (r"patch_embed\.norm\.(.+)", r"htsat.patch_embed.norm.\1"),
    (
        r"layers\.(\d+)\.blocks\.(\d+)\.(layernorm_before|layernorm_after)\.(.+)",
        r"htsat.encoder.stages.\1.blocks.\2.\3.\4",
    ),
    (
        r"layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.relative_position_bias_table",
        r"htsat.encoder.stages.\1.blocks.\2.attention.relative_position_bias_table",
    ),
    (
        r"layers\.(\d+)\.blocks\.(\d+)\.attention\.output\.dense\.(.+)",
        r"htsat.encoder.stages.\1.blocks.\2.attention.proj.\3",
    ),
    (r"layers\.(\d+)\.blocks\.(\d+)\.intermediate\.dense\.(.+)", r"htsat.encoder.stages.\1.blocks.\2.mlp.fc1.\3"),
    (r"layers\.(\d+)\.blocks\.(\d+)\.output\.dense\.(.+)", r"htsat.encoder.stages.\1.blocks.\2.mlp.fc2.\3"),
    (r"layers\.(\d+)\.downsample\.(norm|reduction)\.(.+)", r"htsat.encoder.stages.\1.downsample.\2.\3"),
    (r"norm\.(.+)", r"htsat.layernorm.\1"),
]
_QKV = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)")
# Recomputed by HTS-AT (and checked equal to the recomputation before they are dropped).
_RELATIVE_POSITION_INDEX = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.relative_position_index")


@dataclass
class ClapConversionReport:
    """What [`convert_clap`] wrote and measured.

    Attributes:
        output_dir: the model folder written.
        source: the CLAP model converted (folder or Hub id).
        config: the written [`HTSATConfig`].
        license: the license the source's card declares, or `None` when it declares none that could be read.
        checks: `{check: largest absolute difference}` between the source and the converted model (see
            [`backbone_differences`], [`front_end_difference`]) and between the saved and the converted model.
        warnings: one-line warnings about the source's front end (see [`front_end_warnings`]), also logged.
    """

    output_dir: Path
    source: str
    config: HTSATConfig
    license: str | None
    checks: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        head = "token-semantic" if self.config.use_token_semantic_head else "linear"
        lines = [
            f"wrote {self.output_dir}: the audio tower of {self.source} (embed {self.config.embed_dim}, depths "
            f"{self.config.depths}, {self.config.sampling_rate} Hz) with a new {head} head for "
            f"{self.config.num_labels} classes (untrained: fine-tune it)",
            f"license: {self.license}" if self.license else (
                "license: not declared in the source's card (the model card says so): check it before use"
            ),
        ]
        lines += [f"check {name}: max abs difference {value:.3g}" for name, value in self.checks.items()]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Reading the source
# --------------------------------------------------------------------------------------------------------------------


def read_clap_config(source: str | PathLike) -> ClapConfig | ClapAudioConfig:
    """The saved config of a `ClapModel` or `ClapAudioModel` (folder or Hub id), read without loading weights.

    Raises:
        InputError: naming `source`: no such folder or Hub model, a folder that is not a saved model or holds only
            pickled weights (see `loading.check_model_source`), or a model of another type.
    """
    check_model_source(source)
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(str(source))
    except (OSError, ValueError) as error:
        raise InputError(f"{source}: cannot read the model's config ({error_line(error)})") from None
    model_type = config_dict.get("model_type")
    config_class = {ClapConfig.model_type: ClapConfig, ClapAudioConfig.model_type: ClapAudioConfig}.get(model_type)
    if config_class is None:
        kind = f"a {model_type!r} model" if model_type else "a model without a model_type"
        raise InputError(
            f"{source}: is {kind}, not a transformers CLAP model (ClapModel or ClapAudioModel, e.g. "
            "laion/clap-htsat-unfused)"
        )
    try:
        return config_class.from_dict(config_dict)
    except (TypeError, ValueError) as error:  # transformers' config classes validate their fields
        raise InputError(f"{source}: invalid {config_class.__name__} ({error_line(error)})") from None


def check_convertible(audio_config: ClapAudioConfig, source: str) -> None:
    """Refuse an audio tower HTS-AT cannot reproduce exactly, naming the setting.

    Raises:
        InputError: the fused variant (`enable_fusion`), an overlapping or non-square patch embedding, more than one
            input channel, no patch LayerNorm, unflattened patch tokens, or a LayerNorm epsilon other than 1e-5 (CLAP
            fixes it at 1e-5 in its patch-merging and final norms, HTS-AT uses one value everywhere).
    """
    if audio_config.enable_fusion:
        raise InputError(
            f"{source}: is a fused CLAP model (enable_fusion=True, fusion_type={audio_config.fusion_type!r}); its "
            "attentional feature fusion of long clips has no HTS-AT counterpart: convert an unfused model such as "
            "laion/clap-htsat-unfused"
        )
    patch_size, patch_stride = _pair(audio_config.patch_size), _pair(audio_config.patch_stride)
    problems = []
    if patch_size != patch_stride or patch_size[0] != patch_size[1]:
        problems.append(f"patch_size {audio_config.patch_size} and patch_stride {audio_config.patch_stride} (HTS-AT "
                        "needs square, non-overlapping patches)")
    if not isinstance(audio_config.spec_size, int):
        problems.append(f"spec_size {audio_config.spec_size} (HTS-AT needs one square size)")
    if audio_config.patch_embed_input_channels != 1:
        problems.append(f"patch_embed_input_channels {audio_config.patch_embed_input_channels} (HTS-AT reads 1)")
    if not audio_config.enable_patch_layer_norm or not audio_config.flatten_patch_embeds:
        problems.append("enable_patch_layer_norm / flatten_patch_embeds off (HTS-AT always has both)")
    if audio_config.layer_norm_eps != 1e-5:
        problems.append(f"layer_norm_eps {audio_config.layer_norm_eps} (CLAP's other norms use 1e-5)")
    if isinstance(audio_config.spec_size, int) and not problems:
        # HTS-AT shrinks the attention window of a stage smaller than the window (as Swin does) and sizes its bias
        # table to match; CLAP keeps the configured table, so the two cannot hold the same tensors.
        last_grid = audio_config.spec_size // patch_size[0] // 2 ** (len(audio_config.depths) - 1)
        if last_grid < audio_config.window_size:
            problems.append(
                f"spec_size {audio_config.spec_size} (with patch_size {patch_size[0]} and {len(audio_config.depths)} "
                f"stages the last stage's token grid is {last_grid}x{last_grid}, smaller than window_size "
                f"{audio_config.window_size})"
            )
    if problems:
        raise InputError(f"{source}: this CLAP audio tower cannot be converted exactly: {'; '.join(problems)}")


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def load_clap_audio_tower(source: str | PathLike) -> tuple[ClapAudioModel, ClapModel | None]:
    """The audio tower of a saved `ClapModel` or `ClapAudioModel`, in eval mode, float32, from `model.safetensors`.

    Returns:
        `(audio_tower, clap_model)`: `clap_model` is the whole `ClapModel` (text tower and projections included)
        when the source is one, else `None`.

    Raises:
        InputError: see [`read_clap_config`] and [`check_convertible`]; weights that cannot be loaded.
    """
    config = read_clap_config(source)
    audio_config = config.audio_config if isinstance(config, ClapConfig) else config
    check_convertible(audio_config, str(source))
    model_class = ClapModel if isinstance(config, ClapConfig) else ClapAudioModel
    weights = _weights_name(source)
    try:
        # Mismatched shapes come back in the loading info (refused below) instead of as a multi-line RuntimeError.
        with _quiet_transformers():
            model, info = model_class.from_pretrained(
                str(source), use_safetensors=True, dtype=torch.float32, output_loading_info=True,
                ignore_mismatched_sizes=True,
            )
    except (OSError, ValueError, RuntimeError) as error:  # unreadable or missing files, state-dict load errors
        raise InputError(f"{weights}: cannot load the CLAP model's weights ({error_line(error)})") from None
    check_loading_info(info, weights)
    model.eval()
    if isinstance(model, ClapModel):
        return model.audio_model, model
    return model, None


def _weights_name(source: str | PathLike) -> str:
    """What an error about the weights names: the local weights file, or the Hub id."""
    local = Path(source)
    if local.is_dir():
        return str(next((local / name for name in WEIGHT_FILES if (local / name).is_file()), local))
    return str(source)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' logging (the multi-line LOAD REPORT table, progress bars) and Python warnings while
    loading: what they report is refused as one line of our own (see [`check_loading_info`],
    [`load_clap_feature_extractor`])."""
    verbosity = transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


def check_loading_info(info: dict, weights: str) -> None:
    """Refuse a load that filled or dropped tensors: `from_pretrained` gives tensors missing from the checkpoint fresh
    values and ignores extra ones, and a parity check against such a model would pass.

    Args:
        info: `from_pretrained(..., output_loading_info=True)`'s loading info.
        weights: the weights file (or Hub id) the error names.

    Raises:
        InputError: naming `weights` and the first keys: tensors missing (other than buffers transformers recomputes
            exactly, `_RECOMPUTED_BUFFERS`), unexpected, or of another shape than the config's.
    """
    mismatched = sorted(info.get("mismatched_keys") or ())
    missing = sorted(key for key in info.get("missing_keys") or () if not _RECOMPUTED_BUFFERS.search(key))
    unexpected = sorted(info.get("unexpected_keys") or ())
    problems = []
    if mismatched:
        shapes = [f"{key} {tuple(saved)} (the config needs {tuple(needed)})" for key, saved, needed in mismatched]
        problems.append(f"{len(mismatched)} tensors of the wrong shape: {'; '.join(shapes[:3])}")
    if missing:
        problems.append(f"{len(missing)} tensors missing: {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors the config does not have: {', '.join(unexpected[:5])}")
    if problems:
        raise InputError(f"{weights}: does not match the model's config.json: {'; '.join(problems)}")


def load_clap_feature_extractor(
    source: str | PathLike, named_by_option: bool = False
) -> ClapFeatureExtractor:
    """The `ClapFeatureExtractor` saved with a CLAP model (its `preprocessor_config.json`).

    Args:
        source: folder or Hub id holding it.
        named_by_option: `source` was named by `feature_extractor` (`--feature-extractor`), not the model's own
            folder: the error for a missing file then does not suggest that option.

    Raises:
        InputError: naming the folder or file: none saved (the front end cannot be guessed, as `ClapFeatureExtractor`'s
            own defaults, f_min 0 Hz, differ from what LAION's models were trained with), a file instead of a folder,
            a config that is not a `ClapFeatureExtractor`'s (for example an HTS-AT model's), or invalid values.
    """
    local = Path(source)
    saved = local / "preprocessor_config.json"
    if local.exists() and not local.is_dir():
        raise InputError(f"{source}: is a file, not a folder holding a preprocessor_config.json")
    if not local.exists() and named_by_option:
        check_model_source(source)  # not a folder: then it must be a Hub id ("no such model folder" otherwise)
    if local.is_dir() and not saved.is_file():
        advice = (
            "name the folder or Hub id of the source CLAP model's own preprocessor_config.json"
            if named_by_option else
            "copy the source CLAP model's own preprocessor_config.json there, or name the folder or Hub id that "
            "has it (feature_extractor=..., --feature-extractor)"
        )
        raise InputError(f"{source}: has no preprocessor_config.json, so the CLAP front end is unknown; {advice}")
    where = saved if local.is_dir() else f"{source} (preprocessor_config.json)"
    try:
        with _quiet_transformers():
            settings, _ = ClapFeatureExtractor.get_feature_extractor_dict(str(source))
    except (OSError, ValueError) as error:  # unreadable or invalid JSON, nothing of that name on the Hub
        raise InputError(f"{where}: cannot read the CLAP feature extractor ({error_line(error)})") from None
    kind = settings.get("feature_extractor_type")
    if kind != ClapFeatureExtractor.__name__:
        raise InputError(
            f"{where}: is {'a ' + repr(kind) if kind else 'a config without feature_extractor_type'}, not a "
            "ClapFeatureExtractor's; name the source CLAP model's own preprocessor_config.json"
        )
    f_min, f_max = settings.get("frequency_min", 0), settings.get("frequency_max", 14000)
    sampling_rate = settings.get("sampling_rate", LAION_SAMPLING_RATE)
    if not all(isinstance(value, int | float) for value in (f_min, f_max, sampling_rate)):
        raise InputError(f"{where}: frequency_min, frequency_max and sampling_rate must be numbers, got {f_min!r}, "
                         f"{f_max!r}, {sampling_rate!r}")
    if not 0 <= f_min < f_max <= sampling_rate / 2:
        raise InputError(
            f"{where}: needs 0 <= frequency_min < frequency_max <= sampling_rate / 2 (Nyquist), got frequency_min "
            f"{f_min:g}, frequency_max {f_max:g}, sampling_rate {sampling_rate:g}"
        )
    try:
        with _quiet_transformers():  # transformers warns, in several lines, about mel filters checked below
            extractor = ClapFeatureExtractor.from_dict(settings)
    except (TypeError, ValueError, ZeroDivisionError) as error:  # values ClapFeatureExtractor's __init__ refuses
        raise InputError(f"{where}: invalid ClapFeatureExtractor settings ({error_line(error)})") from None
    empty = np.flatnonzero(~np.asarray(extractor.mel_filters_slaney).any(axis=0))
    if empty.size:
        raise InputError(
            f"{where}: {empty.size} of the {extractor.feature_size} mel filters are all zero (first: bin {empty[0]}): "
            f"fft_window_size {extractor.fft_window_size} at {extractor.sampling_rate} Hz is too coarse for "
            f"{extractor.feature_size} bins between {extractor.frequency_min:g} and {extractor.frequency_max:g} Hz"
        )
    return extractor


def read_source_license(source: str | PathLike) -> str | None:
    """The `license` of the source's model card (`README.md` metadata of the folder or Hub repository), or `None`
    when it has no card, no license entry, or the card cannot be fetched (offline). Never guessed."""
    local = Path(source)
    try:
        if local.is_dir():
            readme = local / "README.md"
            if not readme.is_file():
                return None
            card = ModelCard.load(readme, ignore_metadata_errors=True)
        else:
            card = ModelCard.load(str(source), ignore_metadata_errors=True)
    except (OSError, ValueError):  # no card on the Hub, no network, unreadable file
        return None
    license = card.data.license
    if license == "other" and card.data.license_name:  # the Hub's form for licenses without an SPDX id
        return f"other ({card.data.license_name})"
    return license if isinstance(license, str) and license else None


# --------------------------------------------------------------------------------------------------------------------
# Config, front end and weights
# --------------------------------------------------------------------------------------------------------------------


def feature_extractor_settings(
    clap_extractor: ClapFeatureExtractor, source: str = "the CLAP feature extractor"
) -> dict:
    """`HTSATFeatureExtractor` arguments that reproduce `clap_extractor`'s unfused features.

    `ClapFeatureExtractor` with `truncation="rand_trunc"` (the only input an unfused tower reads: `"fusion"` stacks
    four mel copies made with HTK filters, which only the fused patch embedding accepts) computes
    `10 * log10(max(mel_slaney(|STFT|^2), 1e-10))` with a periodic Hann window of `fft_window_size`, centred frames
    and reflect padding, in float64 (transformers' `audio_utils.spectrogram` with `log_mel="dB"`, see
    `ClapFeatureExtractor._np_extract_fbank_features`): the HTS-AT front end, at CLAP's settings. Short clips are
    padded by `padding` (`repeatpad`: tiled a whole number of times, then zeros; `repeat`: tiled; `pad`: zeros).

    Returns:
        `{"feature_size", "sampling_rate", "hop_length", "n_fft", "f_min", "f_max", "max_length_seconds",
        "pad_mode", "precision"}`; `precision` is `"float64"`, as CLAP computes (float32 differs by up to about
        0.05 dB in mel bins far below a frame's loudest).

    Raises:
        InputError: naming `source`: a `top_db` clipping (HTS-AT's front end has none) or an unknown padding.
    """
    if clap_extractor.top_db is not None:
        raise InputError(f"{source}: top_db={clap_extractor.top_db} clips the dB range per clip, which the HTS-AT "
                         "front end does not do")
    if clap_extractor.padding not in CLAP_PADDING_TO_PAD_MODE:
        raise InputError(
            f"{source}: padding {clap_extractor.padding!r} is not one of {sorted(CLAP_PADDING_TO_PAD_MODE)}"
        )
    return dict(
        feature_size=int(clap_extractor.feature_size),
        sampling_rate=int(clap_extractor.sampling_rate),
        hop_length=int(clap_extractor.hop_length),
        n_fft=int(clap_extractor.fft_window_size),
        f_min=float(clap_extractor.frequency_min),
        f_max=float(clap_extractor.frequency_max),
        max_length_seconds=float(clap_extractor.max_length_s),
        pad_mode=CLAP_PADDING_TO_PAD_MODE[clap_extractor.padding],
        precision="float64",
    )


def front_end_warnings(front_end: dict, source: str = "the CLAP feature extractor") -> list[str]:
    """One-line warnings about a front end that converts exactly but is probably not the one the weights were trained
    with: a rate other than LAION's 48 kHz, or f_min 0 Hz (`ClapFeatureExtractor()`'s default; LAION's models use
    50 Hz)."""
    found = []
    if front_end["sampling_rate"] != LAION_SAMPLING_RATE:
        found.append(f"{source}: sampling_rate {front_end['sampling_rate']} differs from the {LAION_SAMPLING_RATE} Hz "
                     "LAION's CLAP models were trained at; converted as given")
    if front_end["f_min"] == 0:
        found.append(f"{source}: frequency_min is 0 Hz, ClapFeatureExtractor's default; LAION's CLAP models were "
                     "trained with 50 Hz: check that this is the source model's own preprocessor_config.json")
    return found


def check_frames_fit(
    audio_config: ClapAudioConfig, front_end: dict, source: str = "the CLAP feature extractor"
) -> None:
    """Refuse a clip length and hop that give more frames than the tower reads (CLAP's `reshape_mel2img` would raise;
    both models stretch shorter spectrograms up to `spec_size * freq_ratio` frames, none shrinks a longer one).

    Raises:
        InputError: naming `source` and the values.
    """
    freq_ratio = audio_config.spec_size // audio_config.num_mel_bins
    limit = audio_config.spec_size * freq_ratio
    samples = round(front_end["max_length_seconds"] * front_end["sampling_rate"])
    frames = 1 + samples // front_end["hop_length"]
    if frames > limit:
        raise InputError(
            f"{source}: a {front_end['max_length_seconds']:g} s clip at {front_end['sampling_rate']} Hz with "
            f"hop_length {front_end['hop_length']} gives {frames} frames, more than the {limit} the audio tower reads "
            f"(spec_size {audio_config.spec_size} x freq_ratio {freq_ratio})"
        )


def check_options(
    head: str = "token-semantic",
    labels: Sequence[str] | None = None,
    num_labels: int | None = None,
    problem_type: str = "multi_label_classification",
) -> None:
    """Check [`convert_clap`]'s options on their own, before anything is loaded.

    Raises:
        InputError: naming the option: an unknown head or problem type, labels that are empty or repeated, labels
            and a different `num_labels`, `num_labels` below 1.
    """
    if head not in HEADS:
        raise InputError(f"head must be one of {HEADS}, got {head!r}")
    if problem_type not in PROBLEM_TYPES:
        raise InputError(f"problem_type must be one of {PROBLEM_TYPES}, got {problem_type!r}")
    if labels is not None:
        labels = list(labels)
        if not labels or len(set(labels)) != len(labels):
            raise InputError("labels must be a non-empty list of distinct names")
        if num_labels is not None and num_labels != len(labels):
            raise InputError(f"num_labels {num_labels} differs from the {len(labels)} labels given")
    elif num_labels is not None and num_labels < 1:
        raise InputError(f"num_labels must be at least 1, got {num_labels}")


def htsat_config_from_clap(
    audio_config: ClapAudioConfig,
    front_end: dict,
    head: str = "token-semantic",
    labels: Sequence[str] | None = None,
    num_labels: int | None = None,
    problem_type: str = "multi_label_classification",
) -> HTSATConfig:
    """The [`HTSATConfig`] of a converted CLAP audio tower.

    Architecture and front end come from the source; the training-only settings (dropout, stochastic depth,
    SpecAugment) are HTS-AT's recipe: they do not change inference, and transformers' CLAP config does not record
    LAION's training values.

    Args:
        audio_config: the source's `ClapAudioConfig`.
        front_end: [`feature_extractor_settings`] of the source's feature extractor.
        head: `"token-semantic"` (HTS-AT's head, frame and clip outputs) or `"linear"`.
        labels: class names of the new head; `num_labels` (default: the tower's `num_classes`, 527) without them.
        problem_type: `"multi_label_classification"` (sigmoid) or `"single_label_classification"` (softmax).

    Raises:
        InputError: an unknown head, labels and a different `num_labels`, a feature extractor whose mel bins differ
            from the tower's, or values HTS-AT refuses.
    """
    check_options(head, labels, num_labels, problem_type)
    if front_end["feature_size"] != audio_config.num_mel_bins:
        raise InputError(f"the CLAP feature extractor gives {front_end['feature_size']} mel bins but the audio tower "
                         f"reads {audio_config.num_mel_bins}")
    if labels is not None:
        labels = list(labels)
        label_kwargs = {"id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)}}
    else:
        count = audio_config.num_classes if num_labels is None else num_labels
        label_kwargs = {"num_labels": int(count)}
    return HTSATConfig(
        sampling_rate=front_end["sampling_rate"],
        hop_length=front_end["hop_length"],
        n_fft=front_end["n_fft"],
        num_mel_bins=audio_config.num_mel_bins,
        f_min=front_end["f_min"],
        f_max=front_end["f_max"],
        spec_size=audio_config.spec_size,
        patch_size=_pair(audio_config.patch_size)[0],
        embed_dim=audio_config.patch_embeds_hidden_size,
        depths=list(audio_config.depths),
        num_heads=list(audio_config.num_attention_heads),
        window_size=audio_config.window_size,
        mlp_ratio=audio_config.mlp_ratio,
        qkv_bias=audio_config.qkv_bias,
        hidden_act=audio_config.hidden_act,
        layer_norm_eps=audio_config.layer_norm_eps,
        use_token_semantic_head=head == "token-semantic",
        problem_type=problem_type,
        **label_kwargs,
    )


def convert_clap_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLAP audio tower's tensors (`ClapAudioModel.state_dict()`, names starting `audio_encoder.`) under
    [`HTSATModel`]'s names inside an HTS-AT classifier (`htsat.`...), float32.

    Query, key and value projections become one `qkv` projection (rows in that order, as HTS-AT splits them);
    `relative_position_index` buffers are dropped (HTS-AT recomputes them) after checking that they equal the
    recomputation.

    Raises:
        InputError: a tensor name a CLAP audio tower does not have (for example fusion layers), or a block with only
            some of query/key/value.
    """
    converted, unknown, qkv = {}, [], {}
    for key, value in state.items():
        name = key.removeprefix("audio_encoder.")
        if (match := _QKV.fullmatch(name)) is not None:
            stage, block, part, kind = match.groups()
            qkv.setdefault((stage, block, kind), {})[part] = value.float()
            continue
        if (match := _RELATIVE_POSITION_INDEX.fullmatch(name)) is not None:
            side = int(round(value.shape[0] ** 0.5))
            if not torch.equal(value.long(), relative_position_index(side)):
                raise InputError(f"{key}: differs from the relative position index HTS-AT computes for a {side}x{side} "
                                 "window")
            continue
        new_name = next((re.sub(p, r, name) for p, r in _RENAMES if re.fullmatch(p, name)), None)
        if new_name is None:
            unknown.append(key)
            continue
        converted[new_name] = value.long() if new_name.endswith("num_batches_tracked") else value.float()
    if unknown:
        raise InputError(f"tensors without an HTS-AT counterpart: {', '.join(unknown[:8])}")
    for (stage, block, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise InputError(
                f"block layers.{stage}.blocks.{block} has {sorted(parts)} {kind}s, not query, key and value"
            )
        name = f"htsat.encoder.stages.{stage}.blocks.{block}.attention.qkv.{kind}"
        converted[name] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return converted


# --------------------------------------------------------------------------------------------------------------------
# Parity checks
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def backbone_differences(
    clap_tower: ClapAudioModel, htsat: HTSATModel, input_features: torch.Tensor
) -> dict[str, float]:
    """Run both backbones on the same log-mel features and return the largest absolute differences.

    Args:
        clap_tower: the source `ClapAudioModel`, in eval mode.
        htsat: the converted [`HTSATModel`], in eval mode.
        input_features: `(batch, frames, mel_bins)` float32 features (HTS-AT's layout; CLAP gets them as
            `(batch, 1, frames, mel_bins)`).

    Returns:
        `{"last hidden state": ..., "pooled output": ...}`, comparing CLAP's `(batch, hidden, rows, steps)`
        `last_hidden_state` with `tokens_to_time_grid(htsat.last_hidden_state, freq_ratio)`, and the pooled outputs.
    """
    clap = clap_tower(input_features=input_features.unsqueeze(1))
    ours = htsat(input_features)
    grid = tokens_to_time_grid(ours.last_hidden_state, htsat.config.freq_ratio)
    return {
        "last hidden state": float((grid - clap.last_hidden_state).abs().max()),
        "pooled output": float((ours.pooler_output - clap.pooler_output).abs().max()),
    }


@torch.no_grad()
def clap_zero_shot_logits(
    clap_model: ClapModel,
    htsat: HTSATModel,
    input_features: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Zero-shot tagging scores of text prompts with CLAP's text tower and the converted audio tower: CLAP's
    `logits_per_audio` (`ClapModel.forward`), with the audio embedding computed by the HTS-AT backbone.

    `scores = exp(logit_scale_a) * normalize(audio_projection(pooled audio)) @ normalize(text_projection(text)).T`.
    It shows that the converted tower is CLAP's tower; a backbone fine-tuned on another task leaves CLAP's embedding
    space, and its scores then mean nothing.

    Args:
        clap_model: the source `ClapModel` (text tower, projections, logit scale), in eval mode.
        htsat: the converted [`HTSATModel`] (or the backbone of a converted classifier, `model.htsat`), in eval mode.
        input_features: `(batch, frames, mel_bins)` from the converted model's [`HTSATFeatureExtractor`].
        input_ids, attention_mask: `(prompts, tokens)` from the source's tokenizer (`AutoTokenizer.from_pretrained(
            source)`, e.g. `tokenizer(["a dog barking", "rain"], padding=True, return_tensors="pt")`).

    Returns:
        `(batch, prompts)` logits; `softmax(dim=-1)` gives CLAP's label probabilities.
    """
    audio = clap_model.audio_projection(htsat(input_features).pooler_output)
    audio = audio / audio.norm(p=2, dim=-1, keepdim=True)
    text = clap_model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output  # normalised
    return torch.matmul(audio, text.t()) * clap_model.logit_scale_a.exp()


def front_end_difference(
    clap_extractor: ClapFeatureExtractor, extractor: HTSATFeatureExtractor, waveforms: Sequence[np.ndarray]
) -> float:
    """Largest absolute difference in dB between `ClapFeatureExtractor`'s unfused features (`truncation=
    "rand_trunc"`, its own padding) and `extractor`'s, on clips of at most the clip length (longer clips are cropped
    at random by CLAP: crop them first to compare)."""
    largest = 0.0
    for waveform in waveforms:
        clap = clap_extractor(
            waveform, sampling_rate=clap_extractor.sampling_rate, truncation="rand_trunc", return_tensors="np"
        )["input_features"][0, 0]
        ours = extractor(waveform, sampling_rate=extractor.sampling_rate, return_tensors="np")["input_features"][0]
        if clap.shape != ours.shape:
            raise InputError(f"front ends give {clap.shape} and {ours.shape} features for the same clip")
        largest = max(largest, float(np.abs(clap - ours).max()))
    return largest


# --------------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------------


def convert_clap(
    source: str | PathLike,
    output_dir: str | PathLike,
    head: str = "token-semantic",
    labels: Sequence[str] | None = None,
    num_labels: int | None = None,
    problem_type: str = "multi_label_classification",
    feature_extractor: str | PathLike | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
) -> ClapConversionReport:
    """Convert the audio tower of a transformers CLAP model into an HTS-AT model folder.

    Writes `config.json`, `model.safetensors` (an [`HTSATForAudioClassification`]: the CLAP backbone and a new,
    untrained head; it loads as [`HTSATForSoundEventDetection`] too), `preprocessor_config.json` (an
    [`HTSATFeatureExtractor`] with CLAP's front end), the model's code files and a `README.md` model card. They are
    written into a staging folder next to `output_dir`, which takes its place only once everything is written and
    the saved model reloaded and checked: an error or Ctrl-C leaves no partial folder.

    Args:
        source: folder or Hub id of an unfused `ClapModel` or `ClapAudioModel` (safetensors weights), e.g.
            `laion/clap-htsat-unfused`.
        output_dir: the folder to write: new or empty, or replaced as a whole with `overwrite`. It may not be,
            contain or lie inside `source` or `feature_extractor`.
        head: `"token-semantic"` (HTS-AT's head, freshly initialised) or `"linear"`.
        labels: class names of the head; else `num_labels` classes `LABEL_i` (default: the tower's `num_classes`).
            Fine-tuning scripts replace the head when the data's labels differ.
        problem_type: `"multi_label_classification"` or `"single_label_classification"`.
        feature_extractor: folder or Hub id holding the source's `preprocessor_config.json`; used instead of the
            source's own when given (required when the source has none).
        base_model: Hub id of the source, for the card's metadata and text (default: `source` when it is not a local
            path).
        overwrite: replace an existing non-empty `output_dir` (it is deleted once the new folder is complete).

    Returns:
        a [`ClapConversionReport`] with the parity measured and the warnings (also logged): a sampling rate other
        than 48 kHz, f_min 0 Hz.

    Raises:
        InputError: before anything is written, one line naming the source, option, file or folder: an output folder
            that cannot be written, is not empty, or overlaps an input; a source that is not a convertible CLAP model
            (fused, another model type, no safetensors, tensors missing, extra or of the wrong shape); no or an
            unsupported feature extractor (another type, frequencies out of order or above Nyquist, empty mel
            filters, more frames than the tower reads); bad labels; or a converted model that does not reproduce the
            source (tolerances `BACKBONE_TOLERANCE`, `FRONT_END_TOLERANCE_DB`).
    """
    # Options and the output folder first: a typo or a clash fails at once, before the model loads.
    check_options(head, labels, num_labels, problem_type)
    output_dir = check_new_output_dir(output_dir, inputs=(source, feature_extractor), overwrite=overwrite)
    source = str(source)
    clap_tower, _ = load_clap_audio_tower(source)
    extractor_source = source if feature_extractor is None else str(feature_extractor)
    clap_extractor = load_clap_feature_extractor(extractor_source, named_by_option=feature_extractor is not None)
    where = _extractor_file(extractor_source)
    front_end = feature_extractor_settings(clap_extractor, where)
    check_frames_fit(clap_tower.config, front_end, where)
    warned = front_end_warnings(front_end, where)
    for warning in warned:
        logger.warning("%s", warning)
    try:
        config = htsat_config_from_clap(clap_tower.config, front_end, head, labels, num_labels, problem_type)
        extractor = HTSATFeatureExtractor.from_config(
            config,
            max_length_seconds=front_end["max_length_seconds"],
            pad_mode=front_end["pad_mode"],
            precision=front_end["precision"],
        )
    except InputError as error:  # the options are checked above: what is left comes from the source's settings
        raise InputError(f"{source}: {error}") from None

    model = HTSATForAudioClassification(config)
    try:
        converted = convert_clap_state_dict(clap_tower.state_dict())
    except InputError as error:
        raise InputError(f"{source}: {error}") from None
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (needs {tuple(expected[k].shape)})" for k, v in converted.items()
             if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise InputError(f"{source}: tensors of the wrong shape: {'; '.join(wrong[:5])}")
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [key for key in missing if not key.startswith("head.")]
    if missing or unexpected:
        raise InputError(f"{source}: the audio tower does not fit HTS-AT: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}")
    model.eval()

    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(2, extractor.max_length_frames, config.num_mel_bins, generator=generator) * 20 - 40
    differences = backbone_differences(clap_tower, model.htsat, probe)
    checks = {f"backbone {name} vs CLAP": value for name, value in differences.items()}
    rng = np.random.default_rng(0)
    waves = [
        (0.1 * rng.standard_normal(extractor.max_length_samples)).astype(np.float32),
        (0.1 * rng.standard_normal(extractor.max_length_samples // 3)).astype(np.float32),
    ]
    checks["log-mel vs ClapFeatureExtractor (dB)"] = front_end_difference(clap_extractor, extractor, waves)
    for name, value in checks.items():
        tolerance = FRONT_END_TOLERANCE_DB if name.startswith("log-mel") else BACKBONE_TOLERANCE
        if not value <= tolerance:
            raise InputError(f"{source}: the converted model does not reproduce CLAP: {name} differs by {value:.3g} "
                             f"(tolerance {tolerance:g})")

    license = read_source_license(source)
    if base_model is None and not Path(source).exists():
        base_model = source
    with staged_output_dir(output_dir) as staging:
        with _quiet_transformers():  # progress bars of saving and loading
            checks["saved vs converted logits"] = save_checked_model(staging, model, extractor, probe, output_dir)
        save_model_card(
            staging,
            base_model=base_model,
            license=license,
            origin=_card_origin(source, license, config, extractor, base_model),
            repo_id=output_dir.resolve().name,  # the snippets and title name the folder, not the staging folder
        )
    return ClapConversionReport(
        output_dir=output_dir, source=source, config=config, license=license, checks=checks, warnings=warned
    )


def _extractor_file(source: str) -> str:
    """What an error or warning about the front end names: the local `preprocessor_config.json`, or the Hub id."""
    local = Path(source)
    return str(local / "preprocessor_config.json") if local.is_dir() else f"{source} (preprocessor_config.json)"


def _card_origin(
    source: str, license: str | None, config: HTSATConfig, extractor: HTSATFeatureExtractor, base_model: str | None
) -> str:
    # The card is published: name the Hub model (as the metadata does) rather than a local copy's path.
    name = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else source
    head = "token-semantic" if config.use_token_semantic_head else "linear"
    lines = [
        f"The backbone is the audio tower of the CLAP model {name} (LAION-CLAP, Wu et al., ICASSP 2023), converted "
        f"with `htsat-hf convert-clap`: it gives the same embeddings as the source's `ClapAudioModel` (within 1e-4, "
        f"checked at conversion), and the feature extractor gives the source's unfused `ClapFeatureExtractor` "
        f"features ({config.sampling_rate} Hz, hop {config.hop_length}, {config.f_min:g}-{config.f_max:g} Hz mel "
        f"range, short clips padded by `{extractor.pad_mode}`).",
        "",
        f"**The {head} classification head is freshly initialised and untrained: its scores mean nothing until "
        "the model is fine-tuned** (see `docs/clap.md` in htsat_hf).",
        "",
        f"License: `{license}`, as declared by the source model's card." if license else (
            f"**License: the source's card declares none that the converter could read.** Check the license of {name} "
            "(and of its training data) before using or publishing this model."
        ),
    ]
    return "\n".join(lines)


__all__ = [
    "ClapConversionReport",
    "backbone_differences",
    "check_convertible",
    "check_frames_fit",
    "check_loading_info",
    "check_options",
    "clap_zero_shot_logits",
    "convert_clap",
    "convert_clap_state_dict",
    "feature_extractor_settings",
    "front_end_difference",
    "front_end_warnings",
    "htsat_config_from_clap",
    "load_clap_audio_tower",
    "load_clap_feature_extractor",
    "read_clap_config",
    "read_source_license",
]
