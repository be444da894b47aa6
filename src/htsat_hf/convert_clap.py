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

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import ModelCard
from transformers import ClapAudioConfig, ClapAudioModel, ClapConfig, ClapFeatureExtractor, ClapModel, PretrainedConfig

from .configuration_htsat import HTSATConfig
from .errors import InputError, error_line
from .feature_extraction_htsat import HTSATFeatureExtractor
from .loading import check_model_source, check_output_dir
from .model_card import save_model_card
from .modeling_htsat import HTSATForAudioClassification, HTSATModel, relative_position_index, tokens_to_time_grid

HEADS = ("token-semantic", "linear")
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
    """

    output_dir: Path
    source: str
    config: HTSATConfig
    license: str | None
    checks: dict[str, float] = field(default_factory=dict)

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
    try:
        model = model_class.from_pretrained(str(source), use_safetensors=True, dtype=torch.float32).eval()
    except (OSError, ValueError) as error:  # unreadable or missing files, tensors that do not fit the config
        raise InputError(f"{source}: cannot load the CLAP model's weights ({error_line(error)})") from None
    if isinstance(model, ClapModel):
        return model.audio_model, model
    return model, None


def load_clap_feature_extractor(source: str | PathLike) -> ClapFeatureExtractor:
    """The `ClapFeatureExtractor` saved with a CLAP model (its `preprocessor_config.json`).

    Raises:
        InputError: naming `source`, when there is none: the front end (mel range, padding) cannot be guessed, as
            `ClapFeatureExtractor`'s own defaults (f_min 0 Hz) differ from what LAION's models were trained with.
    """
    local = Path(source)
    if local.is_dir() and not (local / "preprocessor_config.json").is_file():
        raise InputError(
            f"{source}: has no preprocessor_config.json, so the CLAP front end it was trained with is unknown; save "
            "the model's ClapFeatureExtractor there, or name the folder or Hub id that has it (feature_extractor=..., "
            "--feature-extractor)"
        )
    try:
        return ClapFeatureExtractor.from_pretrained(str(source))
    except OSError as error:
        raise InputError(f"{source}: cannot read the CLAP feature extractor ({error_line(error)})") from None


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
    if head not in HEADS:
        raise InputError(f"head must be one of {HEADS}, got {head!r}")
    if front_end["feature_size"] != audio_config.num_mel_bins:
        raise InputError(f"the CLAP feature extractor gives {front_end['feature_size']} mel bins but the audio tower "
                         f"reads {audio_config.num_mel_bins}")
    if labels is not None:
        labels = list(labels)
        if num_labels is not None and num_labels != len(labels):
            raise InputError(f"num_labels {num_labels} differs from the {len(labels)} labels given")
        if not labels or len(set(labels)) != len(labels):
            raise InputError("labels must be a non-empty list of distinct names")
        label_kwargs = {"id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)}}
    else:
        count = audio_config.num_classes if num_labels is None else num_labels
        if count < 1:
            raise InputError(f"num_labels must be at least 1, got {count}")
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
) -> ClapConversionReport:
    """Convert the audio tower of a transformers CLAP model into an HTS-AT model folder.

    Writes `config.json`, `model.safetensors` (an [`HTSATForAudioClassification`]: the CLAP backbone and a new,
    untrained head; it loads as [`HTSATForSoundEventDetection`] too), `preprocessor_config.json` (an
    [`HTSATFeatureExtractor`] with CLAP's front end), the model's code files and a `README.md` model card.

    Args:
        source: folder or Hub id of an unfused `ClapModel` or `ClapAudioModel` (safetensors weights), e.g.
            `laion/clap-htsat-unfused`.
        output_dir: the folder to write (created; files of the same names are replaced).
        head: `"token-semantic"` (HTS-AT's head, freshly initialised) or `"linear"`.
        labels: class names of the head; else `num_labels` classes `LABEL_i` (default: the tower's `num_classes`).
            Fine-tuning scripts replace the head when the data's labels differ.
        problem_type: `"multi_label_classification"` or `"single_label_classification"`.
        feature_extractor: folder or Hub id holding the source's `preprocessor_config.json` when `source` has none.
        base_model: Hub id of the source for the card's metadata (default: `source` when it is not a local path).

    Returns:
        a [`ClapConversionReport`] with the parity measured.

    Raises:
        InputError: before anything is written, one line naming the source, option or folder: an output folder that
            cannot be written, a source that is not a convertible CLAP model (fused, another model type, no
            safetensors), no or an unsupported feature extractor, bad labels, or a converted model that does not
            reproduce the source (tolerances `BACKBONE_TOLERANCE`, `FRONT_END_TOLERANCE_DB`).
    """
    output_dir = check_output_dir(output_dir)
    source = str(source)
    clap_tower, _ = load_clap_audio_tower(source)
    extractor_source = source if feature_extractor is None else str(feature_extractor)
    clap_extractor = load_clap_feature_extractor(extractor_source)
    front_end = feature_extractor_settings(clap_extractor, extractor_source)
    try:
        config = htsat_config_from_clap(clap_tower.config, front_end, head, labels, num_labels, problem_type)
        extractor = HTSATFeatureExtractor.from_config(
            config,
            max_length_seconds=front_end["max_length_seconds"],
            pad_mode=front_end["pad_mode"],
            precision=front_end["precision"],
        )
    except InputError as error:
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
    frames = 1 + extractor.max_length_samples // config.hop_length
    probe = torch.randn(2, frames, config.num_mel_bins, generator=generator) * 20 - 40
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

    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    extractor.save_pretrained(output_dir)
    reloaded = HTSATForAudioClassification.from_pretrained(output_dir).eval()
    HTSATFeatureExtractor.from_pretrained(output_dir).check_matches_config(reloaded.config)
    with torch.no_grad():
        difference = float((reloaded(probe).logits - model(probe).logits).abs().max())
    if difference > 1e-5:
        raise InputError(f"{output_dir}: the saved model's logits differ from the converted one's by {difference:.3g}")
    checks["saved vs converted logits"] = difference

    license = read_source_license(source)
    if base_model is None and not Path(source).exists():
        base_model = source
    save_model_card(
        output_dir,
        base_model=base_model,
        license=license,
        origin=_card_origin(source, license, config, extractor),
    )
    return ClapConversionReport(output_dir=output_dir, source=source, config=config, license=license, checks=checks)


def _card_origin(source: str, license: str | None, config: HTSATConfig, extractor: HTSATFeatureExtractor) -> str:
    name = source if Path(source).exists() else f"[{source}](https://huggingface.co/{source})"
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
    "clap_zero_shot_logits",
    "convert_clap",
    "convert_clap_state_dict",
    "feature_extractor_settings",
    "front_end_difference",
    "htsat_config_from_clap",
    "load_clap_audio_tower",
    "load_clap_feature_extractor",
    "read_clap_config",
    "read_source_license",
]
