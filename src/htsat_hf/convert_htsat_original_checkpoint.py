"""Convert the original HTS-AT checkpoints (PyTorch Lightning `.ckpt` or weight-averaged) into this package's format.

`convert_checkpoint` reads the file without `pytorch_lightning` and without running pickled code, infers the
architecture from the tensors, renames them, drops what the model recomputes, checks the result against what the
checkpoint itself records (its frozen STFT kernels, mel filters, attention masks and relative position indices), and
saves `config.json`, `model.safetensors` and `preprocessor_config.json`. Every problem with the file, the flags or the
output folder is a [`CheckpointError`] (an `InputError`) naming the file, flag or tensor, raised before anything is
written. The output folder must be new or empty (or is replaced as a whole with `overwrite=True`), and appears only
once complete (`loading.staged_output_dir`).
"""

import csv
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .configuration_htsat import HTSATConfig
from .errors import InputError, error_line
from .loading import check_new_output_dir, save_checked_model, staged_output_dir
from .feature_extraction_htsat import HTSATFeatureExtractor, htsat_mel_filters
from .modeling_htsat import HTSATForAudioClassification

ORIGINAL_PREFIXES = ("sed_model.", "module.", "model.")
REQUIRED_KEYS = ("bn0.running_mean", "patch_embed.proj.weight", "layers.0.blocks.0.attn.qkv.weight", "norm.weight")
# Dimensions of the tensors `infer_architecture` reads shapes from (patterns over original names).
_ARCHITECTURE_RANKS = (
    (r"bn0\.running_mean", 1),
    (r"patch_embed\.proj\.weight", 4),
    (r"layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table", 2),
    (r"layers\.\d+\.blocks\.\d+\.mlp\.fc1\.weight", 2),
    (r"layers\.\d+\.blocks\.\d+\.attn_mask", 3),
    (r"tscam_conv\.weight", 4),
    (r"head\.weight", 2),
    (r"spectrogram_extractor\.stft\.conv_real\.weight", 3),
)

# Original name pattern -> name in this package; `{head}` entries depend on the head type.
_RENAMES = [
    (r"bn0\.(.+)", r"htsat.feature_norm.\1"),
    (r"patch_embed\.proj\.(.+)", r"htsat.patch_embed.projection.\1"),
    (r"patch_embed\.norm\.(.+)", r"htsat.patch_embed.norm.\1"),
    (r"layers\.(\d+)\.blocks\.(\d+)\.norm1\.(.+)", r"htsat.encoder.stages.\1.blocks.\2.layernorm_before.\3"),
    (r"layers\.(\d+)\.blocks\.(\d+)\.norm2\.(.+)", r"htsat.encoder.stages.\1.blocks.\2.layernorm_after.\3"),
    (r"layers\.(\d+)\.blocks\.(\d+)\.attn\.(qkv|proj)\.(.+)", r"htsat.encoder.stages.\1.blocks.\2.attention.\3.\4"),
    (
        r"layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table",
        r"htsat.encoder.stages.\1.blocks.\2.attention.relative_position_bias_table",
    ),
    (r"layers\.(\d+)\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(.+)", r"htsat.encoder.stages.\1.blocks.\2.mlp.\3.\4"),
    (r"layers\.(\d+)\.downsample\.(norm|reduction)\.(.+)", r"htsat.encoder.stages.\1.downsample.\2.\3"),
    (r"norm\.(.+)", r"htsat.layernorm.\1"),
    (r"tscam_conv\.(.+)", r"head.conv.\1"),
]
_LINEAR_HEAD_RENAME = (r"head\.(.+)", r"head.linear.\1")
# Tensors the model recomputes (front end, masks, indices) or never uses (the token-semantic model's `head`).
_RECOMPUTED = re.compile(
    r"(spectrogram_extractor\..*|logmel_extractor\..*|.*\.attn_mask|.*\.relative_position_index)$"
)


class CheckpointError(InputError):
    """The file is not a readable HTS-AT checkpoint, or does not fit the given front end; the message names the
    file (or flag, or tensor) and what is wrong."""


# --------------------------------------------------------------------------------------------------------------------
# Reading without executing pickled code
# --------------------------------------------------------------------------------------------------------------------


class _Opaque:
    """Stand-in for any object of a class the restricted reader does not allow: it records nothing and runs nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


def _allowed_global(module: str, name: str) -> bool:
    if module == "collections" and name == "OrderedDict":
        return True
    if module == "torch._utils" and name.startswith("_rebuild_"):
        return True
    if module == "torch" and (name.endswith("Storage") or name in ("Size", "device") or hasattr(torch, name) and
                              isinstance(getattr(torch, name), torch.dtype)):
        return True
    return module == "torch.serialization" and name == "_get_layout" or module == "builtins" and name in (
        "set", "frozenset", "slice", "complex"
    )


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors and plain containers; every other class becomes an inert `_Opaque` (no code is run)."""

    def find_class(self, module, name):
        if _allowed_global(module, name):
            return super().find_class(module, name)
        return _Opaque


class _RestrictedPickleModule:
    Unpickler = _RestrictedUnpickler
    __name__ = "htsat_restricted_pickle"

    @staticmethod
    def load(file, **kwargs):
        return _RestrictedUnpickler(file, **kwargs).load()


def _read_checkpoint(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # Lightning metadata of some class weights_only refuses: read again with everything but tensors inert.
    except Exception as error:  # text read as pickle opcodes fails in many ways (KeyError, EOFError, ...)
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({_describe(error)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    except Exception as error:  # any failure here means the file is not a checkpoint we can read
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({_describe(error)})") from None


def _describe(error: Exception) -> str:
    message = error_line(error)
    return message if message == type(error).__name__ else f"{type(error).__name__}: {message}"


def load_original_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model tensors of an original HTS-AT checkpoint, with the `sed_model.` prefix removed.

    Accepts the Lightning format (`{"state_dict": ..., "epoch": ..., ...}`), the weight-averaged format
    (`{"state_dict": ...}` with every tensor in float32) and a bare state dict. Never imports `pytorch_lightning`
    and never executes code from the file.

    Raises:
        CheckpointError: the file is missing, unreadable, or lacks tensors every HTS-AT model has.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file (give the .ckpt file inside it)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    checkpoint = _read_checkpoint(path)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: holds no state_dict of tensors (found {type(checkpoint).__name__})")
    tensors = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in ORIGINAL_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        tensors[key] = value
    missing = [key for key in REQUIRED_KEYS if key not in tensors]
    has_head = "tscam_conv.weight" in tensors or "head.weight" in tensors
    if missing or not has_head:
        missing += [] if has_head else ["tscam_conv.weight or head.weight"]
        raise CheckpointError(
            f"{path}: not an HTS-AT checkpoint: missing {', '.join(missing)} "
            f"(found {len(tensors)} tensors, e.g. {', '.join(list(tensors)[:3]) or 'none'})"
        )
    return tensors


# --------------------------------------------------------------------------------------------------------------------
# Architecture inference and renaming
# --------------------------------------------------------------------------------------------------------------------


def infer_architecture(state: dict[str, torch.Tensor]) -> dict:
    """HTSATConfig arguments readable from the tensors: widths, depths, heads, window, classes, head type.

    Raises:
        CheckpointError: a tensor it reads has the wrong number of dimensions (naming it and its shape), or a
            stage lacks its tensors.
    """
    for key, value in state.items():
        rank = next((rank for pattern, rank in _ARCHITECTURE_RANKS if re.fullmatch(pattern, key)), None)
        if rank is not None and value.dim() != rank:
            raise CheckpointError(
                f"tensor {key} has shape {tuple(value.shape)}, but an HTS-AT checkpoint's has {rank} dimensions"
            )
    stages = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))), default=-1)
    for stage in range(stages):
        for name in ("attn.relative_position_bias_table", "mlp.fc1.weight"):
            if f"layers.{stage}.blocks.0.{name}" not in state:
                raise CheckpointError(f"not an HTS-AT checkpoint: missing tensor layers.{stage}.blocks.0.{name}")
    depths = []
    while any(k.startswith(f"layers.{len(depths)}.blocks.") for k in state):
        stage = len(depths)
        depths.append(len({int(m.group(1)) for k in state if (m := re.match(rf"layers\.{stage}\.blocks\.(\d+)\.", k))}))
    num_heads = [state[f"layers.{stage}.blocks.0.attn.relative_position_bias_table"].shape[1] for stage in range(len(depths))]
    table_rows = state["layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
    window_size = (_exact_sqrt(table_rows, "relative_position_bias_table rows") + 1) // 2
    projection = state["patch_embed.proj.weight"]
    embed_dim, patch_size = projection.shape[0], projection.shape[-1]
    token_semantic = "tscam_conv.weight" in state
    num_labels = (state["tscam_conv.weight"] if token_semantic else state["head.weight"]).shape[0]
    fc1 = state["layers.0.blocks.0.mlp.fc1.weight"]
    arch = dict(
        embed_dim=int(embed_dim),
        patch_size=int(patch_size),
        depths=depths,
        num_heads=[int(h) for h in num_heads],
        window_size=int(window_size),
        mlp_ratio=fc1.shape[0] / fc1.shape[1],
        qkv_bias="layers.0.blocks.0.attn.qkv.bias" in state,
        num_mel_bins=int(state["bn0.running_mean"].shape[0]),
        use_token_semantic_head=token_semantic,
        num_labels=int(num_labels),
    )
    shift_mask = state.get("layers.0.blocks.1.attn_mask")
    if shift_mask is not None:  # (windows, N, N) on the first stage gives the token grid, hence the image size
        side = _exact_sqrt(shift_mask.shape[0], "attn_mask windows") * window_size
        arch["spec_size"] = int(side * patch_size)
    if "spectrogram_extractor.stft.conv_real.weight" in state:
        arch["n_fft"] = int(state["spectrogram_extractor.stft.conv_real.weight"].shape[-1])
    return arch


def _exact_sqrt(value: int, what: str) -> int:
    root = int(round(value**0.5))
    if root * root != value:
        raise CheckpointError(f"{what} = {value} is not a square; not an HTS-AT layout")
    return root


def is_dropped(key: str, token_semantic: bool) -> bool:
    """Whether an original tensor is left out of the converted model (recomputed, or the unused `head`)."""
    return bool(_RECOMPUTED.match(key)) or (token_semantic and key.startswith("head."))


def converted_name(key: str, token_semantic: bool) -> str | None:
    """This package's name of an original tensor (None for a name HTS-AT does not have)."""
    renames = _RENAMES if token_semantic else _RENAMES + [_LINEAR_HEAD_RENAME]
    return next((re.sub(pattern, new, key) for pattern, new in renames if re.fullmatch(pattern, key)), None)


def rename_state_dict(state: dict[str, torch.Tensor], token_semantic: bool) -> dict[str, torch.Tensor]:
    """Original tensor names to this package's names; recomputable buffers dropped, unknown names refused."""
    converted, unknown = {}, []
    for key, value in state.items():
        if is_dropped(key, token_semantic):
            continue
        new_key = converted_name(key, token_semantic)
        if new_key is None:
            unknown.append(key)
            continue
        # Weight averaging casts every tensor to float32, the BatchNorm step counter included.
        converted[new_key] = value.long() if new_key.endswith("num_batches_tracked") else value.float()
    if unknown:
        raise CheckpointError(f"unexpected tensors for an HTS-AT checkpoint: {', '.join(unknown[:10])}")
    return converted


def read_label_file(path: str | Path, num_labels: int | None = None) -> dict[int, str]:
    """`id2label` from a `class_labels_indices.csv`-style file (columns `index`, `display_name`; `mid` optional).
    The indices must be `0..num_labels - 1` (any count when `num_labels` is None, but without gaps)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read label file ({error})") from error
    if not rows or not {"index", "display_name"} <= set(rows[0]):
        raise CheckpointError(f"{path}: a label file needs a header with 'index' and 'display_name' columns")
    id2label = {}
    for line, row in enumerate(rows, start=2):
        try:
            id2label[int(row["index"])] = row["display_name"]
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{path}, line {line}: bad index {row['index']!r}") from error
    expected = len(id2label) if num_labels is None else num_labels
    if sorted(id2label) != list(range(expected)):
        raise CheckpointError(
            f"{path}: has {len(id2label)} labels with indices {min(id2label)}..{max(id2label)}, but "
            f"{expected} classes numbered from 0 are needed"
        )
    return id2label


# --------------------------------------------------------------------------------------------------------------------
# Checks against what the checkpoint records
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ConversionReport:
    output_dir: Path
    config: HTSATConfig
    dropped: list[str] = field(default_factory=list)
    checks: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"wrote {self.output_dir} ({self.config.num_labels} classes, embed {self.config.embed_dim}, depths "
            f"{self.config.depths}, {'token-semantic' if self.config.use_token_semantic_head else 'linear'} head)",
            f"dropped {len(self.dropped)} recomputable or unused tensors",
        ]
        lines += [f"check {name}: max abs difference {value:.3g}" for name, value in self.checks.items()]
        return "\n".join(lines)


def _original_front_end(state, waveform: torch.Tensor, hop_length: int) -> torch.Tensor:
    """The original front end rebuilt from the checkpoint's frozen tensors: STFT as a convolution, mel matrix, dB."""
    real_kernel = state["spectrogram_extractor.stft.conv_real.weight"].float()
    imag_kernel = state["spectrogram_extractor.stft.conv_imag.weight"].float()
    n_fft = real_kernel.shape[-1]
    padded = F.pad(waveform[:, None, :], (n_fft // 2, n_fft // 2), mode="reflect")
    power = F.conv1d(padded, real_kernel, stride=hop_length) ** 2 + F.conv1d(padded, imag_kernel, stride=hop_length) ** 2
    mel = torch.matmul(power.transpose(1, 2), state["logmel_extractor.melW"].float())
    return 10.0 * torch.log10(torch.clamp(mel, min=1e-10))


def verify_conversion(state, model: HTSATForAudioClassification, extractor: HTSATFeatureExtractor) -> dict[str, float]:
    """Compare the converted model with what the original checkpoint records; raises on any disagreement."""
    checks = {}
    if "logmel_extractor.melW" in state:
        config = model.config
        filters = torch.from_numpy(
            htsat_mel_filters(config.sampling_rate, config.n_fft, config.num_mel_bins, config.f_min, config.f_max)
        )
        melw = state["logmel_extractor.melW"].float()
        if melw.shape != filters.shape or (melw - filters).abs().max() > 1e-6:
            raise CheckpointError(
                "the checkpoint's mel filters do not match the given front end: check --sample-rate, --n-fft, "
                f"--fmin and --fmax (these are {config.sampling_rate} Hz, {config.n_fft}, {config.f_min:g}, "
                f"{config.f_max:g})"
            )
        checks["mel filters"] = float((melw - filters).abs().max())
        probe = torch.from_numpy(np.random.default_rng(0).standard_normal((1, config.sampling_rate * 2)) * 0.1).float()
        ours = extractor(probe.numpy(), sampling_rate=config.sampling_rate, padding="longest", return_tensors="pt")
        original = _original_front_end(state, probe, config.hop_length)
        diff = float((ours["input_features"] - original).abs().max())
        if diff > 1e-3:
            raise CheckpointError(f"front end differs from the checkpoint's by {diff:.3g} dB (tolerance 1e-3)")
        checks["log-mel vs checkpoint's STFT (dB)"] = diff
    for name, buffer in model.named_buffers():
        original_name = None
        if name.endswith("relative_position_index"):
            original_name = re.sub(r"htsat\.encoder\.stages\.(\d+)\.blocks\.(\d+)\.attention\.", r"layers.\1.blocks.\2.attn.", name)
        elif name.endswith("shift_mask"):
            original_name = re.sub(r"htsat\.encoder\.stages\.(\d+)\.blocks\.(\d+)\.shift_mask", r"layers.\1.blocks.\2.attn_mask", name)
        if original_name in state:
            if not torch.equal(buffer.float(), state[original_name].float()):
                raise CheckpointError(f"recomputed {name} differs from the checkpoint's {original_name}")
            checks.setdefault("recomputed masks and indices", 0.0)
    return checks


# --------------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------------


def convert_checkpoint(
    checkpoint_path: str | Path,
    output_dir: str | Path,
    sampling_rate: int,
    hop_length: int,
    n_fft: int = 1024,
    num_mel_bins: int = 64,
    f_min: float = 50.0,
    f_max: float = 14000.0,
    problem_type: str = "multi_label_classification",
    labels_file: str | Path | None = None,
    pad_mode: str = "zeros",
    max_length_seconds: float | None = None,
    overwrite: bool = False,
) -> ConversionReport:
    """Convert an original HTS-AT checkpoint and save it as a transformers model directory.

    Args:
        checkpoint_path: the original `.ckpt` (Lightning or weight-averaged).
        output_dir: where `config.json`, `model.safetensors` and `preprocessor_config.json` go: a new or empty
            folder, or one replaced as a whole with `overwrite`. It may not be, contain or lie inside the checkpoint
            file's or the labels file's location. It is written as a staging folder beside it and takes its place only
            once the saved model reloads and reproduces the converted one: an error or Ctrl-C leaves no partial folder
            and an existing one as it was.
        sampling_rate, hop_length, n_fft, num_mel_bins, f_min, f_max: the front end the checkpoint was trained with
            (32000/320 for AudioSet and ESC-50, 16000/160 for Speech Commands V2); checked against the
            checkpoint's own mel filters when it holds them.
        problem_type: `"multi_label_classification"` (sigmoid; AudioSet, Speech Commands) or
            `"single_label_classification"` (softmax; ESC-50).
        labels_file: `class_labels_indices.csv`-style label names; `LABEL_i` names without it.
        pad_mode: clip padding of the saved feature extractor, `"zeros"` (AudioSet) or `"repeat"` (ESC-50, SCV2).
        max_length_seconds: clip length of the saved feature extractor; None: 10 s, or the longest clip the model
            reads when that is shorter (`HTSATFeatureExtractor.from_config`).
        overwrite: replace an existing non-empty `output_dir` as a whole (its old files are deleted once the new
            folder is complete; none of them stays beside the new model).

    Raises:
        CheckpointError: before anything is written, one line naming the folder, file, flag or tensor: an output
            folder that cannot be written, that is not empty (without `overwrite`), or that is, contains or lies
            inside `checkpoint_path` or `labels_file` (see `loading.check_new_output_dir`); a file that is not an
            HTS-AT checkpoint, a tensor of the wrong shape, a front end or label file that does not fit the
            checkpoint. A saved model that does not reproduce the converted one is refused too, and nothing is
            written.
    """
    try:
        output_dir = check_new_output_dir(output_dir, inputs=(checkpoint_path, labels_file), overwrite=overwrite)
    except InputError as error:
        raise CheckpointError(str(error)) from None
    state = load_original_state_dict(checkpoint_path)
    arch = infer_architecture(state)
    if arch.get("n_fft", n_fft) != n_fft:
        raise CheckpointError(f"{checkpoint_path}: the checkpoint's STFT has n_fft={arch['n_fft']}, not {n_fft}")
    if arch["num_mel_bins"] != num_mel_bins:
        raise CheckpointError(
            f"{checkpoint_path}: the checkpoint has {arch['num_mel_bins']} mel bins, not {num_mel_bins}"
        )
    arch.pop("n_fft", None)
    num_labels = arch.pop("num_labels")
    label_kwargs = {"num_labels": num_labels}
    if labels_file is not None:
        id2label = read_label_file(labels_file, num_labels)
        label_kwargs = {"id2label": id2label, "label2id": {name: i for i, name in id2label.items()}}
    try:
        config = HTSATConfig(
            sampling_rate=sampling_rate,
            hop_length=hop_length,
            n_fft=n_fft,
            f_min=f_min,
            f_max=f_max,
            problem_type=problem_type,
            **arch,
            **label_kwargs,
        )
        extractor = HTSATFeatureExtractor.from_config(config, pad_mode=pad_mode, max_length_seconds=max_length_seconds)
    except InputError as error:
        raise CheckpointError(f"{checkpoint_path}: {error}") from None
    converted = rename_state_dict(state, config.use_token_semantic_head)
    model = HTSATForAudioClassification(config)
    expected, wrong_shapes = model.state_dict(), []
    for key, value in state.items():
        new_key = None if is_dropped(key, config.use_token_semantic_head) else converted_name(
            key, config.use_token_semantic_head
        )
        if new_key in expected and value.shape != expected[new_key].shape:
            needed = tuple(expected[new_key].shape)
            wrong_shapes.append(f"{key} {tuple(value.shape)} (the model read from the checkpoint needs {needed})")
    if wrong_shapes:
        raise CheckpointError(f"{checkpoint_path}: tensors of the wrong shape: {'; '.join(wrong_shapes[:5])}")
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint_path}: tensors do not fit the inferred model: missing {missing}, unexpected {unexpected}"
        )
    model.eval()
    checks = verify_conversion(state, model, extractor)

    probe = torch.randn(2, config.max_frames, config.num_mel_bins) * 10 - 40
    with staged_output_dir(output_dir) as staging:
        try:
            checks["saved vs converted logits"] = save_checked_model(staging, model, extractor, probe, output_dir)
        except InputError as error:
            raise CheckpointError(str(error)) from None
    dropped = [key for key in state if is_dropped(key, config.use_token_semantic_head)]
    return ConversionReport(output_dir=output_dir, config=config, dropped=dropped, checks=checks)


__all__ = [
    "CheckpointError",
    "ConversionReport",
    "convert_checkpoint",
    "infer_architecture",
    "load_original_state_dict",
    "read_label_file",
    "rename_state_dict",
    "verify_conversion",
]
