"""Export HTS-AT to ONNX and check the exported graph against PyTorch with onnxruntime.

The ONNX graph starts at the log-mel features, like the PyTorch model: compute them with [`HTSATFeatureExtractor`]
(or librosa, see its docstring) and feed `input_features` of shape `(batch, frames, num_mel_bins)`, float32, in dB
before the model's BatchNorm. Outputs:

- `task="classification"`: `logits` `(batch, num_labels)`, pre-sigmoid (multi-label) or pre-softmax (single-label);
- `task="detection"`: `frame_logits` `(batch, num_time_steps, num_labels)` (pre-sigmoid, 32 steps per clip by
  default) and `clip_logits` `(batch, num_labels)`.

The batch axis is dynamic. With the default (torch.export-based) exporter the frame axis is dynamic too, from 2 to
`config.max_frames - 1` frames (a 10 s clip at 32 kHz / hop 320 gives 1001): shorter clips are stretched to the
model's length inside the graph, as in PyTorch. The file also carries the model's front-end settings and labels as
ONNX metadata (`metadata_props`), so a consumer without transformers knows the sampling rate, the problem type and
the class names.

Exporter choice: `torch.onnx.export(..., dynamo=True)` (opset 18) is the default. It needs the model's eager
(matmul) attention: with SDPA, torch.export records the fused CPU attention kernel, and the reshape after it as a
view, valid for that kernel's output layout; after the exporter decomposes the kernel into plain ops the layout
differs and the view fails ("Cannot view a tensor with shape [..., 64, 2, 16] and strides (2048, 16, 1024,
1) as a tensor with shape (..., 64, 32)", `HTSATWindowAttention.forward`, `context.reshape(batch_windows, tokens,
dim)`). The eager path computes the same attention. The TorchScript exporter (`exporter="torchscript"`, opset 17
by default) also works, with either attention, but is deprecated since PyTorch 2.9 and fixes the frame axis to the
example's length in the graph's shape checks; `exporter="auto"` falls back to it when the dynamo exporter raises.
"""

import contextlib
import copy
import json
import logging
import warnings
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .configuration_htsat import HTSATConfig
from .errors import InputError
from .feature_extraction_htsat import HTSATFeatureExtractor
from .loading import WEIGHT_FILES, check_output_dir, load_model, staged_output_file
from .modeling_htsat import HTSATForAudioClassification, HTSATForSoundEventDetection, HTSATPreTrainedModel

logger = logging.getLogger(__name__)

TASKS = ("classification", "detection")
EXPORTERS = ("auto", "dynamo", "torchscript")
INPUT_NAME = "input_features"
OUTPUT_NAMES = {"classification": ("logits",), "detection": ("frame_logits", "clip_logits")}
DEFAULT_OPSET = {"dynamo": 18, "torchscript": 17}
# Parity bound between onnxruntime and PyTorch, float32 on CPU: |onnx - torch| <= atol + rtol * max|torch| per
# output. atol is the reference vectors' tolerance for logits. The rtol term is there because both runtimes carry
# float32 rounding of their own, mostly from the bicubic stretch of 1001 to 1024 frames, and it grows with the scale
# of the activations: on the full-size model (random weights, frame logits up to 5.4) PyTorch float32 is itself
# 1.6e-4 away from a float64 run, and onnxruntime 1.1e-4 (2.2e-4 from each other); at 1024 frames, without the
# stretch, PyTorch's error drops to 3.5e-6.
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4
# Shortest input the dynamic frame axis accepts: the feature extractor's shortest clip gives 2 frames.
MIN_FRAMES = 2


class OnnxExportError(InputError):
    """The export failed, or the exported graph disagrees with PyTorch beyond the tolerance (an `InputError`, so that
    every `htsat-hf` command reports its errors alike)."""


@dataclass
class OnnxExportResult:
    """What `export_onnx` wrote.

    Attributes:
        path: the `.onnx` file (weights inside it, no external data file).
        task: `"classification"` or `"detection"`.
        exporter: `"dynamo"` or `"torchscript"`, the exporter that produced the file.
        opset: the default-domain opset of the file.
        input_shape: `(batch, frames, mel_bins)` with symbolic names for the dynamic axes.
        output_names: the graph's outputs, in order.
        max_abs_diff: largest onnxruntime-vs-PyTorch difference over every output when verified, else None.
        tolerance: the bound it was held to (`atol + rtol * max|output|` for the output closest to its bound).
    """

    path: Path
    task: str
    exporter: str
    opset: int
    input_shape: tuple
    output_names: tuple[str, ...]
    max_abs_diff: float | None = None
    tolerance: float | None = None

    def summary(self) -> str:
        lines = [
            f"wrote {self.path} ({self.task}, {self.exporter} exporter, opset {self.opset})",
            f"input {INPUT_NAME} {self.input_shape} -> {', '.join(self.output_names)}",
        ]
        if self.max_abs_diff is not None:
            lines.append(
                f"onnxruntime vs PyTorch: max abs difference {self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g})"
            )
        return "\n".join(lines)


class _ExportWrapper(nn.Module):
    """Plain-tensor outputs in a fixed order: ONNX graphs cannot return a `ModelOutput`."""

    def __init__(self, model: HTSATForSoundEventDetection, task: str):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, input_features: torch.Tensor):
        output = self.model(input_features, return_dict=True)
        if self.task == "classification":
            return output.clip_logits
        return output.logits, output.clip_logits


def _default_opset(onnx_model) -> int:
    return int(next(entry.version for entry in onnx_model.opset_import if entry.domain in ("", "ai.onnx")))


def _error_summary(error: Exception, limit: int = 600) -> str:
    """One readable paragraph of an exporter error: the dynamo exporter's messages are pages long, with the cause
    under an "Exception summary" heading."""
    message = str(error).strip()
    if "## Exception summary" in message:
        message = message.split("## Exception summary", 1)[1].split("While executing", 1)[0]
    message = " ".join(message.split())
    if len(message) > limit:
        message = message[: limit - 3] + "..."
    return f"{type(error).__name__}: {message}"


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return task


def load_model_for_export(model_dir_or_model, task: str = "classification") -> HTSATForSoundEventDetection:
    """A detached, eval-mode `HTSATForSoundEventDetection` copy of a saved model folder or a model in memory.

    Both tasks export from the detection class: its clip logits are the classifier's logits (same head, same
    weights), so one wrapper serves both. An in-memory model is copied, so switching the copy's attention
    implementation to eager for the dynamo exporter never touches the caller's model.

    Raises:
        InputError: a folder `loading.load_model` refuses (missing, no config, truncated or pickled-only weights).
    """
    _check_task(task)
    if isinstance(model_dir_or_model, HTSATPreTrainedModel):
        source = model_dir_or_model
        if not isinstance(source, (HTSATForAudioClassification, HTSATForSoundEventDetection)):
            raise TypeError(
                f"cannot export a {type(source).__name__}: it has no classification head; pass an "
                "HTSATForAudioClassification or HTSATForSoundEventDetection"
            )
        model = HTSATForSoundEventDetection(copy.deepcopy(source.config))
        model.load_state_dict(source.state_dict())
        model.to(device="cpu", dtype=torch.float32)
    else:
        model = load_model(HTSATForSoundEventDetection, model_dir_or_model, dtype=torch.float32)
    return model.eval()


def default_num_frames(config: HTSATConfig, feature_extractor: HTSATFeatureExtractor | None = None) -> int:
    """Frames of one full clip as the feature extractor pads it (1001 for 10 s at 32 kHz, hop 320), at most the
    model's `max_frames`. Without a feature extractor, a clip of `HTSATFeatureExtractor.from_config(config)`."""
    extractor = HTSATFeatureExtractor.from_config(config) if feature_extractor is None else feature_extractor
    return min(extractor.max_length_frames, config.max_frames)


def _load_feature_extractor(model_dir_or_model) -> HTSATFeatureExtractor | None:
    is_folder = isinstance(model_dir_or_model, (str, PathLike))
    if is_folder and (Path(model_dir_or_model) / "preprocessor_config.json").is_file():
        return HTSATFeatureExtractor.from_pretrained(model_dir_or_model)
    return None


def _metadata(config: HTSATConfig, task: str, extractor: HTSATFeatureExtractor | None) -> dict[str, str]:
    """Everything a consumer needs to prepare inputs and read outputs, as ONNX `metadata_props` strings."""
    metadata = {
        "htsat_task": task,
        "problem_type": str(config.problem_type),
        "id2label": json.dumps({str(i): config.id2label[i] for i in range(config.num_labels)}),
        "sampling_rate": str(config.sampling_rate),
        "hop_length": str(config.hop_length),
        "n_fft": str(config.n_fft),
        "num_mel_bins": str(config.num_mel_bins),
        "f_min": str(config.f_min),
        "f_max": str(config.f_max),
        "num_time_steps": str(config.num_time_steps),
        "max_frames": str(config.max_frames),
    }
    if extractor is not None:
        metadata["max_length_seconds"] = str(extractor.max_length_seconds)
        metadata["pad_mode"] = extractor.pad_mode
    return metadata


def _example_features(batch: int, frames: int, mel_bins: int, seed: int) -> torch.Tensor:
    """Log-mel-like values (dB around -35, spread 10): the BatchNorm and attention then see realistic ranges."""
    generator = np.random.default_rng(seed)
    return torch.from_numpy((generator.standard_normal((batch, frames, mel_bins)) * 10 - 35).astype(np.float32))


@contextlib.contextmanager
def _quiet_dynamo_exporter():
    """Silence what the dynamo exporter reports on every run and that says nothing about this model: skipped
    torchvision operators (not installed, not used) and pytree deprecation warnings from torch itself."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            yield
    finally:
        registration.setLevel(level)


def _export_dynamo(wrapper, example, output_path: Path, task: str, opset: int, dynamic_frames: bool):
    # SDPA's fused CPU kernel does not survive the exporter's decompositions (see the module docstring); the eager
    # path computes the same attention with two matmuls and a softmax.
    wrapper.model.config._attn_implementation = "eager"
    batch = torch.export.Dim("batch", min=1)
    shapes = {0: batch}
    if dynamic_frames:
        # Strictly below max_frames: the model skips the stretch at exactly max_frames, a different graph.
        shapes[1] = torch.export.Dim("frames", min=MIN_FRAMES, max=wrapper.model.config.max_frames - 1)
    with _quiet_dynamo_exporter():
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES[task]),
            dynamic_shapes={"input_features": shapes},
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    program.save(str(output_path), external_data=False)


def _export_torchscript(wrapper, example, output_path: Path, task: str, opset: int):
    dynamic_axes = {INPUT_NAME: {0: "batch"}}
    dynamic_axes.update({name: {0: "batch"} for name in OUTPUT_NAMES[task]})
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about the model's Python shape checks (it records them as constants) and about its own
        # deprecation; both are expected here, the parity check below is what tells whether the graph is right.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (example,),
            str(output_path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES[task]),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
        )


def export_onnx(
    model_dir_or_model,
    output_path: str | PathLike,
    task: str = "classification",
    opset: int | None = None,
    exporter: str = "auto",
    dynamic_frames: bool = True,
    num_frames: int | None = None,
    verify: bool = True,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    overwrite: bool = False,
) -> OnnxExportResult:
    """Export an HTS-AT classifier or detector to one self-contained `.onnx` file.

    Args:
        model_dir_or_model: a folder written by `save_pretrained` (or the converter), or an
            `HTSATForAudioClassification` / `HTSATForSoundEventDetection` in memory (copied, left unchanged).
        output_path: the `.onnx` file to write; its folder is created. An existing file is refused unless
            `overwrite`. The export is written to a temporary file beside it (`.NAME.partial-*`), which is renamed
            into place only once exported, checked and (with `verify`) verified: a failure or Ctrl-C leaves an
            existing file as it was and no partial one. It may not be one of the files the model is read from.
        task: `"classification"` (`input_features` -> `logits`) or `"detection"` (-> `frame_logits`,
            `clip_logits`); any HTS-AT checkpoint serves both.
        opset: ONNX opset; defaults to 18 for the dynamo exporter (it cannot convert this model to lower ones: with
            `exporter="auto"` a lower opset is then exported by TorchScript) and 17 for the TorchScript exporter.
        exporter: `"dynamo"`, `"torchscript"`, or `"auto"` (dynamo, falling back to TorchScript if it raises).
        dynamic_frames: with the dynamo exporter, let the frame axis vary from 2 to `max_frames - 1`; otherwise
            the example's frame count (`num_frames`) is the only one the graph is verified for.
        num_frames: frames of the example input; defaults to one full clip of the saved feature extractor (1001).
        verify: run the file with onnxruntime on batches of 1 and 3 (and a shorter clip when the frame axis is
            dynamic) and compare every output with PyTorch.
        atol, rtol: verification passes when every output's max abs difference is at most
            `atol + rtol * max|PyTorch output|` (see `DEFAULT_RTOL` for why the relative term).
        overwrite: replace an existing `output_path` (only once the new file is complete and verified).

    Returns:
        [`OnnxExportResult`] with the exporter used, the opset and, when verified, the max abs difference.

    Raises:
        InputError: before the model is loaded, one line naming the path: an output file that exists (without
            `overwrite`), a folder at `output_path`, an output path that is one of the model folder's files
            (`config.json`, `preprocessor_config.json`, the weights), or an output folder that cannot be written;
            then a model folder `loading.load_model` refuses.
        OnnxExportError: when every exporter tried fails, or verification exceeds the tolerance; `output_path`
            is then left as it was.
    """
    _check_task(task)
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    output_path = check_new_output_file(output_path, _model_files(model_dir_or_model), overwrite)
    model = load_model_for_export(model_dir_or_model, task)
    extractor = _load_feature_extractor(model_dir_or_model)
    config = model.config
    frames = num_frames if num_frames is not None else default_num_frames(config, extractor)
    if not MIN_FRAMES <= frames <= config.max_frames:
        raise ValueError(f"num_frames must be between {MIN_FRAMES} and {config.max_frames}, got {frames}")
    # A full-length example cannot lie inside the dynamic range, which ends below max_frames.
    dynamic_frames = dynamic_frames and frames < config.max_frames
    example = _example_features(2, frames, config.num_mel_bins, seed=0)
    # Written beside the output under a name of its own, renamed into place once verified. The .onnx suffix keeps
    # the exporters from adding one.
    with staged_output_file(output_path, suffix=".onnx") as partial:
        result = _export_to(partial, output_path, model, extractor, config, task, opset, exporter, dynamic_frames,
                            frames, example, verify, atol, rtol)
    result.path = output_path
    return result


def _export_to(output_path: Path, final_path: Path, model, extractor, config, task, opset, exporter, dynamic_frames,
               frames, example, verify, atol, rtol) -> OnnxExportResult:
    """Export, check and verify into `output_path`, the temporary file of [`export_onnx`] for `final_path` (which
    errors name)."""
    import onnx

    attempts = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    if exporter == "auto" and opset is not None and opset < DEFAULT_OPSET["dynamo"]:
        attempts = ["torchscript"]  # the dynamo exporter would end at opset 18 anyway (checked below)
    errors = []
    used = None
    for name in attempts:
        # A fresh copy per attempt: the dynamo path switches its copy to eager attention, and verification below
        # compares against the untouched model (SDPA, as users run it).
        wrapper = _ExportWrapper(copy.deepcopy(model), task).eval()
        chosen_opset = opset if opset is not None else DEFAULT_OPSET[name]
        try:
            if name == "dynamo":
                _export_dynamo(wrapper, example, output_path, task, chosen_opset, dynamic_frames)
            else:
                _export_torchscript(wrapper, example, output_path, task, chosen_opset)
            onnx_model = onnx.load(str(output_path))
            file_opset = _default_opset(onnx_model)
            if file_opset != chosen_opset:
                # The dynamo exporter cannot convert this graph below opset 18; it warns and keeps 18.
                raise OnnxExportError(f"produced opset {file_opset} instead of the requested {chosen_opset}")
        except Exception as error:  # noqa: BLE001  (any exporter failure is reported, then the next one is tried)
            errors.append(f"{name}: {_error_summary(error)}")
            logger.warning("ONNX export with the %s exporter failed: %s", name, errors[-1])
            continue
        used = name
        break
    if used is None:
        raise OnnxExportError("ONNX export failed with every exporter tried:\n" + "\n".join(errors))

    onnx.helper.set_model_props(onnx_model, _metadata(config, task, extractor))
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, str(output_path))
    frame_axis = "frames" if used == "dynamo" and dynamic_frames else frames
    result = OnnxExportResult(
        path=output_path,
        task=task,
        exporter=used,
        opset=file_opset,
        input_shape=("batch", frame_axis, config.num_mel_bins),
        output_names=OUTPUT_NAMES[task],
    )
    if verify:
        session = onnx_session(output_path)
        pairs = list(_output_pairs(session, model, batch_sizes=(1, 3), num_frames=frames))
        if frame_axis == "frames":
            # One shorter clip exercises the stretch inside the graph with an input length it was not traced at.
            shorter = max(MIN_FRAMES, frames // 2)
            pairs += _output_pairs(session, model, batch_sizes=(2,), num_frames=shorter)
        worst_ratio = -1.0
        for name, actual, reference in pairs:
            diff = float(np.abs(actual - reference).max())
            allowed = atol + rtol * float(np.abs(reference).max())
            if diff / allowed > worst_ratio:
                worst_ratio, result.tolerance = diff / allowed, allowed
            result.max_abs_diff = max(result.max_abs_diff or 0.0, diff)
            if not diff <= allowed:
                raise OnnxExportError(
                    f"{final_path}: onnxruntime's {name} differs from PyTorch's by {diff:.3g} (tolerance "
                    f"{allowed:.3g}); the file was not written"
                )
    return result


def _model_files(model_dir_or_model) -> list[Path]:
    """The files of a local model folder that the export reads (config, front end, weights and their shards)."""
    if isinstance(model_dir_or_model, nn.Module) or not Path(model_dir_or_model).is_dir():
        return []
    folder = Path(model_dir_or_model)
    names = {"config.json", "preprocessor_config.json", *WEIGHT_FILES}
    return [path for path in folder.iterdir() if path.name in names or path.suffix == ".safetensors"]


def check_new_output_file(
    path: str | PathLike, inputs: list[str | PathLike] = (), overwrite: bool = False
) -> Path:
    """Refuse, before any work, an output file that would destroy something: an existing file unless `overwrite`,
    a folder, one of `inputs` (compared resolved: symlinks and `..` name the same file), or a place whose folder
    cannot be created or written (`loading.check_output_dir`).

    Returns:
        `path` as a `Path`.

    Raises:
        InputError: one line naming the path and what to do.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give the path of the .onnx file to write")
    check_output_dir(path.parent)
    target = path.resolve()
    for item in inputs:
        if Path(item).exists() and Path(item).resolve() == target:
            raise InputError(f"{path}: is the model's own file {item}; write the ONNX file to another path")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise InputError(
            f"{path}: the file exists; write to a new path, or replace it with overwrite=True (--overwrite)"
        )
    return path


def onnx_session(onnx_path: str | PathLike):
    """An onnxruntime CPU `InferenceSession` for an exported file."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError("verifying or running the ONNX file needs onnxruntime: pip install onnxruntime") from error
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers etc. are noise for a verification run
    return onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def run_onnx(onnx_path_or_session, input_features) -> dict[str, np.ndarray]:
    """Run an exported file on `(batch, frames, mel_bins)` features; returns `{output name: array}`."""
    session = onnx_path_or_session
    if isinstance(session, (str, PathLike)):
        session = onnx_session(session)
    if isinstance(input_features, torch.Tensor):
        input_features = input_features.detach().cpu().numpy()
    features = np.ascontiguousarray(input_features, dtype=np.float32)
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {INPUT_NAME: features})))


@torch.no_grad()
def verify_onnx(
    onnx_path_or_session,
    model_dir_or_model,
    input_features=None,
    batch_sizes=(1, 3),
    num_frames: int | None = None,
) -> float:
    """Largest absolute difference between onnxruntime and PyTorch over every output of an exported file.

    The task is read from the file's output names. Inputs: `input_features` `(batch, frames, mel_bins)` when
    given, else log-mel-like random features for each of `batch_sizes`, `num_frames` frames each (default: one full
    clip, 1001 frames).

    Args:
        onnx_path_or_session: the exported `.onnx` file, or an onnxruntime session of it ([`onnx_session`]).
        model_dir_or_model: the PyTorch model it came from (folder or model in memory).

    Returns:
        the max abs difference as a Python float (0.0 means identical).
    """
    pairs = _output_pairs(onnx_path_or_session, model_dir_or_model, input_features, batch_sizes, num_frames)
    return max(float(np.abs(actual - reference).max()) for _, actual, reference in pairs)


@torch.no_grad()
def _output_pairs(onnx_path_or_session, model_dir_or_model, input_features=None, batch_sizes=(1, 3), num_frames=None):
    """`(output name, onnxruntime array, PyTorch array)` for every output and input batch, see [`verify_onnx`]."""
    session = onnx_path_or_session
    if isinstance(session, (str, PathLike)):
        session = onnx_session(session)
    names = tuple(output.name for output in session.get_outputs())
    task = next((task for task, outputs in OUTPUT_NAMES.items() if outputs == names), None)
    if task is None:
        raise ValueError(f"the ONNX graph has outputs {names}, not those of an HTS-AT export {OUTPUT_NAMES}")
    model = load_model_for_export(model_dir_or_model, task)
    wrapper = _ExportWrapper(model, task).eval()
    if input_features is not None:
        batches = [torch.as_tensor(np.asarray(input_features, dtype=np.float32))]
    else:
        frames = num_frames or default_num_frames(model.config, _load_feature_extractor(model_dir_or_model))
        batches = [
            _example_features(size, frames, model.config.num_mel_bins, seed=index + 1)
            for index, size in enumerate(batch_sizes)
        ]
    pairs = []
    for features in batches:
        expected = wrapper(features)
        expected = (expected,) if task == "classification" else expected
        actual = run_onnx(session, features)
        for name, reference in zip(names, expected):
            if actual[name].shape != tuple(reference.shape):
                raise OnnxExportError(
                    f"ONNX output {name} has shape {actual[name].shape}, PyTorch gives {tuple(reference.shape)}"
                )
            pairs.append((name, actual[name], reference.numpy()))
    return pairs


__all__ = [
    "OnnxExportError",
    "OnnxExportResult",
    "check_new_output_file",
    "export_onnx",
    "load_model_for_export",
    "onnx_session",
    "run_onnx",
    "verify_onnx",
]
