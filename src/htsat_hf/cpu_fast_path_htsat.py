"""CPU inference fast path of HTS-AT: the reference model's results (`modeling_htsat.py`), computed faster on CPU.

`modeling_htsat.py` marks the `forward` of each module that has a faster CPU implementation with
`@fast_forward(<implementation>, part=...)`. A call then runs the implementation from this file where it applies
and the module's own (reference) `forward` everywhere else. It applies when all of these hold:

- the fast path and its part are switched on ([`set_cpu_fast_path`], [`cpu_fast_path`]; both on by default);
- the module's input is on the CPU, autograd is off (`torch.no_grad()` or `torch.inference_mode()`) and the module
  is in eval mode;
- nothing is tracing the model: not `torch.compile`, `torch.export` (and the ONNX exporter on top of it) or
  `torch.jit.trace`, which all record the reference forward.

The parts (keywords of [`set_cpu_fast_path`]):

- `chunks`: `HTSATStage` runs the batch in chunks of clips whose largest activation (the MLP's hidden one) fits in
  `chunk_bytes` ([`clips_per_cpu_chunk`]), so that a chunk's activations stay in the processor's caches. Every
  operation of a stage is per clip, so the results are those of one pass.
- `onednn_linear`: linear layers run as oneDNN's fused linear op with the bias, and the MLP's exact GELU, fused into
  the matmul ([`cpu_linear`]), on x86 only.
- `window_gather`: in `HTSATSwinBlock` the cyclic shift and window partition (and their inverses) are one gather of
  tokens each ([`shifted_window_order`]) instead of a roll and a permute-copy.
- `patch_matmul`: `HTSATPatchEmbeddings`' convolution, whose stride equals its kernel, runs as the equivalent matmul
  over the non-overlapping patches (about 8x faster than the one-input-channel convolution).
- `bias_cache`: `HTSATWindowAttention`'s relative position bias plus shift mask is computed once per weights and
  kept ([`cached_attention_mask`]).
- `fused_attention`: `HTSATWindowAttention` runs PyTorch's fused attention kernel (`scaled_dot_product_attention`
  with the bias and shift mask as `attn_mask`) or two batched matmuls around an in-place mask add and a softmax,
  as [`window_attention_kernel`] picks from the CPU's features and the dtype; off, always the batched matmuls.

Choices that depend on the CPU are made from what it supports ([`cpu_capabilities`]: AMX tiles, oneDNN's bfloat16 and
float16 matmuls), as measured on an AMD EPYC and an Intel Xeon with AMX, not by timings at run time (which would let
two processes compute different bytes). Models held in bfloat16 or float16
(`from_pretrained(..., torch_dtype=torch.bfloat16)`, `model.to(torch.bfloat16)`) run the same fast forwards with their
weights read as they are stored (no cast per call), the matmuls in the model's dtype and the encoder's residual
stream and LayerNorms in float32 ([`float32_residual_stream`]), as autocast would compute them.

Modules called inside a fast implementation are called as modules (their hooks run), except linear layers, the MLP's
activation and the patch embedding's convolution, which a fast implementation computes itself only when
[`is_plain_module`] says that calling them would run nothing else.

This file does not import `modeling_htsat.py` (which imports it, and a saved model's remote code carries both): the
implementations read the modules' attributes. A model loaded through remote code uses the copy of this file saved
beside it, whose switch is that copy's own.
"""

import functools
import platform
import sys
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import GELUActivation

# Largest MLP hidden activation a stage produces at once on CPU. At batch 8 the first stage makes 50 MB ones, which
# spill from the caches (and, above glibc's 32 MB mmap threshold, are page-faulted afresh on every call); chunks of
# this size ran the whole model 15-18% faster on a 2-core EPYC (1 MiB L2 per core, 32 MiB L3), results bit for bit
# the same.
CPU_CHUNK_BYTES = 6 * 2**20
# oneDNN's fused linear op; only on x86, where it was measured (see `cpu_linear`).
_ONEDNN_LINEAR = (
    getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if torch.backends.mkldnn.is_available() and platform.machine().lower() in ("x86_64", "amd64")
    else None
)
ONEDNN_LINEAR_AVAILABLE = _ONEDNN_LINEAR is not None  # else the `onednn_linear` part runs the plain layers
# oneDNN's reorder of a linear weight into the blocked layout its matmul reads on this CPU (what torch.compile's
# freezing does to constant weights); with a plain weight the matmul reorders it on every call.
_ONEDNN_REORDER_WEIGHT = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None) if ONEDNN_LINEAR_AVAILABLE else None


# --------------------------------------------------------------------------------------------------------------------
# The switch
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CPUFastPathSettings:
    """What the CPU fast path may do; see the module docstring for each part.

    Args:
        enabled: the fast path as a whole; `False` runs every module's reference forward.
        chunks, onednn_linear, window_gather, patch_matmul, bias_cache, fused_attention: the parts, each on its own.
        chunk_bytes: the budget of `chunks` in bytes (default `CPU_CHUNK_BYTES`, tuned on a 2-core AMD EPYC with
            1 MiB of L2 per core and 32 MiB of L3; other caches may want another value).

    Raises:
        ValueError: `chunk_bytes` is not a positive integer.
    """

    enabled: bool = True
    chunks: bool = True
    onednn_linear: bool = True
    window_gather: bool = True
    patch_matmul: bool = True
    bias_cache: bool = True
    fused_attention: bool = True
    chunk_bytes: int = CPU_CHUNK_BYTES

    def __post_init__(self):
        if isinstance(self.chunk_bytes, bool) or not isinstance(self.chunk_bytes, int) or self.chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be a positive number of bytes, got {self.chunk_bytes!r}")

    def allows(self, part: str | None) -> bool:
        """Whether the fast path is on, and `part` too (when named)."""
        return self.enabled and (part is None or getattr(self, part))


_settings = CPUFastPathSettings()


def set_cpu_fast_path(enabled: bool = True, **parts) -> None:
    """Switch HTS-AT's CPU inference fast path on or off, as a whole or by part, for the whole process.

    Each call sets the whole configuration: the parts it does not name are on and `chunk_bytes` is
    `CPU_CHUNK_BYTES`. The results are the reference model's either way (within float32 rounding, or bfloat16's in
    bfloat16); only the speed changes.

        htsat_hf.set_cpu_fast_path(False)  # every module runs its reference forward
        htsat_hf.set_cpu_fast_path(True, chunks=False)  # all parts but the cache-sized chunks

    Args:
        enabled: `False` switches the whole fast path off.
        **parts: `chunks`, `onednn_linear`, `window_gather`, `patch_matmul`, `bias_cache`, `fused_attention` (bools)
            and `chunk_bytes` (int), see [`CPUFastPathSettings`].

    Raises:
        TypeError: an unknown part.
        ValueError: `chunk_bytes` is not a positive integer.
    """
    global _settings
    _settings = CPUFastPathSettings(enabled=enabled, **parts)


@contextmanager
def cpu_fast_path(enabled: bool = True, **parts) -> Iterator[CPUFastPathSettings]:
    """[`set_cpu_fast_path`] for the duration of a `with` block, then the configuration from before it again.

        with htsat_hf.cpu_fast_path(False):
            reference_logits = model(features).logits

    The configuration is process-wide, not per thread. Yields the configuration in force inside the block.
    """
    global _settings
    previous = _settings
    set_cpu_fast_path(enabled, **parts)
    try:
        yield _settings
    finally:
        _settings = previous


def get_cpu_fast_path() -> CPUFastPathSettings:
    """The configuration in force."""
    return _settings


def _is_tracing() -> bool:
    exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.6
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or bool(exporting and exporting())


def fast_path_applies(module: nn.Module, inputs: torch.Tensor, part: str | None = None) -> bool:
    """Whether a fast implementation may replace `module`'s forward on `inputs` (see the module docstring)."""
    return (
        not _is_tracing()  # first: under torch.compile the rest is then never traced
        and _settings.allows(part)
        and not torch.is_grad_enabled()
        and not module.training
        and inputs.device.type == "cpu"
    )


def fast_forward(implementation: Callable, part: str | None = None) -> Callable:
    """Decorator for a module's reference `forward`: calls run `implementation(reference, module, *args, **kwargs)`
    where [`fast_path_applies`] (on its first tensor argument), else the reference forward itself.

    Args:
        implementation: the fast forward; it receives the undecorated reference forward as its first argument, to
            fall back on it or to run it on parts of the input.
        part: the [`CPUFastPathSettings`] field that switches this implementation, or `None` for the fast path as a
            whole.

    Raises:
        ValueError: `part` is not a part.
    """
    if part is not None and part not in CPUFastPathSettings.__dataclass_fields__:
        raise ValueError(f"unknown CPU fast path part {part!r}")

    def decorate(reference: Callable) -> Callable:
        @functools.wraps(reference)
        def forward(module, *args, **kwargs):
            inputs = next(value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor))
            if fast_path_applies(module, inputs, part):
                return implementation(reference, module, *args, **kwargs)
            return reference(module, *args, **kwargs)

        return forward

    return decorate


# --------------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------------


def clips_per_cpu_chunk(bytes_per_clip: int) -> int:
    """How many clips CPU inference runs at once: as many as keep a chunk's largest activation,
    `clips * bytes_per_clip` bytes, within the configured `chunk_bytes`, and at least one; `sys.maxsize` (the
    whole batch) when `chunks` is switched off."""
    if not _settings.allows("chunks"):
        return sys.maxsize
    return max(1, _settings.chunk_bytes // bytes_per_clip)


def shifted_window_order(height: int, width: int, window_size: int, shift_size: int) -> torch.Tensor:
    """Token indices that cyclically shift a row-major `height x width` grid by `-shift_size` on both axes and
    partition it into windows, as one gather: `tokens[:, order]` equals
    `window_partition(torch.roll(grid, (-shift_size, -shift_size), (1, 2)), window_size)` flattened over windows
    (windows row-major, tokens row-major within a window). `torch.argsort(order)` undoes it.

    Returns:
        `(height * width,)` int64 indices.
    """
    grid = torch.roll(torch.arange(height * width).view(height, width), (-shift_size, -shift_size), (0, 1))
    windows = grid.view(height // window_size, window_size, width // window_size, window_size).transpose(1, 2)
    return windows.reshape(-1)


def is_plain_module(module: nn.Module) -> bool:
    """Whether calling `module` runs nothing but its class's own `forward`: no hooks of its own or global ones, no
    `forward` replaced on the instance (as accelerate's hooks do), a class of exactly its kind, parameters that are
    plain strided tensors (not quantized or other tensor subclasses). Only then may a fast path compute the module's
    result without calling it."""
    global_hooks = (nn.modules.module._global_forward_hooks, nn.modules.module._global_forward_pre_hooks)
    return (
        type(module) in (nn.Linear, nn.Conv2d, nn.LayerNorm, GELUActivation)
        and not (module._forward_hooks or module._forward_pre_hooks or any(global_hooks))
        and "forward" not in module.__dict__
        and all(type(p) is nn.Parameter and p.layout == torch.strided for p in module.parameters(recurse=False))
    )


@functools.cache
def cpu_capabilities() -> dict:
    """What this CPU supports, as PyTorch's CPU backend detects it (`torch.cpu.get_capabilities()`: `cpu_name`,
    `avx2`, `avx512_f`, `avx512_bf16`, `amx_bf16`, `amx_fp16`, `amx_int8`, `l2_cache_size`, ...); `{}` on builds
    without it. Read once per process."""
    get = getattr(torch.cpu, "get_capabilities", None)
    try:
        return dict(get()) if get else {}
    except RuntimeError:  # cpuinfo could not read this CPU
        return {}


def fast_matmul_dtypes() -> frozenset[torch.dtype]:
    """The dtypes in which oneDNN runs matmuls natively on this CPU: float32 always, bfloat16 with AVX512-BF16 or AMX,
    float16 with AVX512-FP16 or AMX-FP16 (oneDNN's own checks). Elsewhere oneDNN would emulate them, slower than
    PyTorch's plain layers."""
    mkldnn = torch.ops.mkldnn
    return frozenset(
        dtype
        for dtype, supported in (
            (torch.float32, True),
            (torch.bfloat16, mkldnn._is_mkldnn_bf16_supported()),
            (torch.float16, mkldnn._is_mkldnn_fp16_supported()),
        )
        if supported
    )


def has_amx_tiles(dtype: torch.dtype) -> bool:
    """Whether this CPU has AMX tile instructions for `dtype` (bfloat16: AMX-BF16, float16: AMX-FP16). With them
    PyTorch's fused attention kernel runs its reduced-precision block matmuls on the tiles; without them it upcasts,
    and two batched matmuls are the faster choice (about 2x on a 2-core AMD EPYC with AVX512-BF16)."""
    capabilities = cpu_capabilities()
    flag = {torch.bfloat16: "amx_bf16", torch.float16: "amx_fp16"}.get(dtype)
    return bool(flag and capabilities.get(flag) and capabilities.get("amx_tile"))


def onednn_linear_dtype(layer: nn.Module, inputs: torch.Tensor) -> torch.dtype | None:
    """The dtype in which `layer(inputs)` may run as oneDNN's fused linear op, or `None` where it must run as the
    layer itself: only with the `onednn_linear` part on, a plain `nn.Linear` in eval mode, for inference (no autograd)
    on an x86 CPU in eager mode, in a dtype of [`fast_matmul_dtypes`]: the layer's own (float32, or bfloat16 /
    float16 weights with inputs of that dtype or float32 ones, cast: the float32 residual stream of
    [`chunked_stage_forward`]), or bfloat16 under bfloat16 autocast (float32 or bfloat16 weights)."""
    if not (
        _ONEDNN_LINEAR is not None
        and _settings.allows("onednn_linear")
        and torch.backends.mkldnn.enabled
        and is_plain_module(layer)
        and type(layer) is nn.Linear
        and not layer.training
        and inputs.device.type == layer.weight.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not _is_tracing()
    ):
        return None
    weight_dtype = layer.weight.dtype
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        usable = dtype == torch.bfloat16 and weight_dtype in (torch.float32, dtype)
    else:
        dtype = weight_dtype
        usable = inputs.dtype in (dtype, torch.float32)
    return dtype if usable and dtype in fast_matmul_dtypes() else None


# Linear layers of the models inside `frozen_weights` blocks -> {dtype: (state of the weight and bias it was packed
# from, the tensors themselves, packed weight, bias in that dtype)}; per layer, the number of blocks holding it (blocks
# nest, and two models may share a layer). Weak keys: a deleted model's packed weights go with it.
_frozen_layers: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_frozen_counts: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()


@contextmanager
def frozen_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, `model`'s weights are taken as constant, and the CPU fast path holds each linear layer's
    weight reordered once into the blocked layout oneDNN's matmul reads on this CPU, where it would otherwise reorder
    it on every call. Under bfloat16 autocast the layers' bfloat16 copies are made once, not on every call. On a
    2-core Intel Xeon with AMX, forwards at batch 8 ran 1.11x as fast in fp32 and 1.14x under bf16 autocast; weights
    held in bf16 gained nothing measurable (benchmarks/README.md).

        with htsat_hf.frozen_weights(model), torch.inference_mode():
            for features in batches:
                probabilities = model(features).logits.sigmoid()

    The packed copies cost the linear weights' size in memory (about 110 MB for the full-size model in fp32, half
    in bf16) and about 0.1 s to make, on a layer's first forward in the block; they are dropped when the block
    ends. The results are those of the unpacked fast path, bit for bit in fp32; in bfloat16 within its rounding (the
    blocked kernel may sum in another order). The inference engine (`predict_files`, `htsat-hf predict`,
    `run_sed.py`) and the benchmarks run the model inside this block. Blocks nest; the switch
    [`set_cpu_fast_path`] (`onednn_linear`) still applies inside one. Elsewhere than on x86 CPUs with oneDNN, the
    block changes nothing.

    A weight that changes inside the block through the tensor itself (an optimizer step, `load_state_dict`, an
    in-place edit under `torch.no_grad()`) is packed again at the next forward, as its version counter tells, and so
    is a new tensor assigned to `.data` (a pack holds the tensor it was made from, so a new one never takes its
    address). Edits through `.data` of the tensor a pack was made from are not seen: in place
    (`layer.weight.data += delta`, as a LoRA merge does), or by swapping tensors in and out of `.data` and editing
    the one swapped out (as EMA weight swaps do), since neither changes the version counter nor the address; nor
    are in-place edits of weights that are inference tensors (a model made inside `torch.inference_mode()`, which
    keeps no version counter). Change weights that way outside the block.

    Yields:
        `model`.

    Raises:
        TypeError: `model` is not a `torch.nn.Module`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"frozen_weights takes a torch.nn.Module, got {type(model).__name__}")
    layers = [layer for layer in model.modules() if type(layer) is nn.Linear]
    for layer in layers:
        _frozen_layers.setdefault(layer, {})
        _frozen_counts[layer] = _frozen_counts.get(layer, 0) + 1
    try:
        yield model
    finally:
        for layer in layers:
            _frozen_counts[layer] -= 1
            if not _frozen_counts[layer]:
                del _frozen_counts[layer]
                _frozen_layers.pop(layer, None)


def _version(tensor: torch.Tensor) -> int | None:
    # Inference tensors (made inside `torch.inference_mode()`) have no version counter.
    return None if tensor.is_inference() else tensor._version


def _linear_operands(layer: nn.Linear, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`layer`'s weight and bias in `dtype` for oneDNN's linear op: packed once per weight inside
    [`frozen_weights`] (again when the weight or bias tensor changed), cast on the fly elsewhere."""
    weight, bias = layer.weight, layer.bias
    packs = _frozen_layers.get(layer) if _ONEDNN_REORDER_WEIGHT is not None else None
    if packs is None:
        return weight.to(dtype), None if bias is None else bias.to(dtype)
    state = tuple(None if p is None else (p.data_ptr(), _version(p), p.dtype, p.shape) for p in (weight, bias))
    packed = packs.get(dtype)
    if packed is None or packed[0] != state:
        # Without a batch-size hint oneDNN picks the layout for any number of rows: the chunks vary it. The source
        # tensors are held so that their memory cannot go to a new weight with the same data pointer.
        sources = tuple(None if p is None else p.detach() for p in (weight, bias))
        blocked = _ONEDNN_REORDER_WEIGHT(sources[0].to(dtype), None)
        packed = packs[dtype] = (state, sources, blocked, None if bias is None else sources[1].to(dtype))
    return packed[2], packed[3]


def cpu_linear(layer: nn.Linear, inputs: torch.Tensor, activation: nn.Module | None = None) -> torch.Tensor:
    """`layer(inputs)`, then `activation` when given.

    Where [`onednn_linear_dtype`] allows, this is one oneDNN matmul with the bias, and the activation when it is
    transformers' exact (erf) GELU module unaltered, fused into it (the kernel torch.compile's CPU backend emits for
    such layers): in float32 up to 13% faster than PyTorch's default MKL GEMM on the model's shapes on AMD EPYC, and
    in both precisions no separate passes for the bias and the activation (a bfloat16 GELU pass costs more than its
    matmul's bias). Weights held in bfloat16 or float16 are read as they are; under autocast float32 weights are cast
    on each call, as autocast itself does; inside [`frozen_weights`] each weight is cast and reordered for oneDNN
    once. Anywhere else it is the plain layer, then the activation module.
    """
    dtype = onednn_linear_dtype(layer, inputs)
    if dtype is None:
        weight = getattr(layer, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.is_floating_point() and not torch.is_autocast_enabled("cpu"):
            inputs = inputs.to(weight.dtype)  # float32 activations of a reduced-precision model's residual stream
        outputs = layer(inputs)
        return outputs if activation is None else activation(outputs)
    fuses_gelu = (
        activation is not None
        and is_plain_module(activation)
        and type(activation) is GELUActivation
        and activation.act is F.gelu
    )
    weight, bias = _linear_operands(layer, dtype)
    post_op, algorithm = ("gelu", "none") if fuses_gelu else ("none", "")
    outputs = _ONEDNN_LINEAR(inputs.to(dtype), weight, bias, post_op, [], algorithm)
    return outputs if activation is None or fuses_gelu else activation(outputs)


def cpu_layer_norm(norm: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """`norm(inputs)` in the inputs' dtype. A reduced-precision model's LayerNorm on its float32 residual stream
    ([`chunked_stage_forward`]) normalises in float32 with its few weights upcast, where the module itself would
    refuse the mixed dtypes; a module with hooks is called on inputs in its own dtype."""
    weight = norm.weight
    if weight is None or inputs.dtype == weight.dtype:
        return norm(inputs)
    if not is_plain_module(norm):
        return norm(inputs.to(weight.dtype)).to(inputs.dtype)
    bias = None if norm.bias is None else norm.bias.to(inputs.dtype)
    return F.layer_norm(inputs, norm.normalized_shape, weight.to(inputs.dtype), bias, norm.eps)


def residual_add(hidden_states: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """`hidden_states + update` in `hidden_states`' dtype, the same bytes as PyTorch's type promotion gives. A
    bfloat16 update of a float32 residual stream (a reduced-precision model's, or autocast's) is cast first: PyTorch
    adds mixed dtypes element by element through a slow path, 13x the time of the cast and a same-dtype add on the
    model's shapes (2-core Xeon: 1.9 ms against 0.12 + 0.14 ms for 8 x 256 x 384), 1.09-1.11x on the whole bf16
    forward."""
    return hidden_states + update.to(hidden_states.dtype)


def float32_residual_stream(stage: nn.Module, hidden_states: torch.Tensor) -> bool:
    """Whether a stage of a model held in bfloat16 or float16 runs its residual stream (the block inputs and
    outputs, the LayerNorms) in float32, its matmuls in the model's dtype: as autocast computes, within 5e-3 of
    float32 probabilities where all-bfloat16 blocks were not (6.5-8e-3 on the reference vectors). Only without
    autocast, and where the parts that take float32 inputs are on (`window_gather`, `onednn_linear` on a CPU with
    native matmuls in that dtype); elsewhere the stage runs in the model's dtype as the reference does."""
    weight = stage.blocks[0].mlp.fc1.weight  # a method of quantized linear layers
    dtype = weight.dtype if isinstance(weight, torch.Tensor) else None
    return (
        dtype in (torch.bfloat16, torch.float16)
        and hidden_states.dtype == dtype
        and not torch.is_autocast_enabled("cpu")
        and _settings.allows("window_gather")
        and _settings.allows("onednn_linear")
        and _ONEDNN_LINEAR is not None
        and dtype in fast_matmul_dtypes()
    )


def matmul_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention as two batched matmuls: `softmax(query * scale @ key^T + mask) @ value`, the mask added in place
    into the fresh scores (no second scores-sized buffer).

    Args:
        query, key, value: `(batch, groups, N, head_dim)`.
        mask: additive, broadcastable to `(batch, groups, N, N)`.

    Returns:
        The context `(batch, groups, N, head_dim)` and the attention probabilities `(batch, groups, N, N)`.
    """
    scores = torch.matmul(query * scale, key.transpose(-2, -1))
    weights = scores.add_(mask).softmax(dim=-1)
    return torch.matmul(weights, value), weights


def _fused_attention(query, key, value, mask, scale):
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)


def window_attention_kernel(dtype: torch.dtype) -> str:
    """How the fast path computes window attention in `dtype`: `"fused"` (`scaled_dot_product_attention`) or
    `"matmul"` ([`matmul_attention`]).

    With `fused_attention` off: `"matmul"`. In bfloat16 or float16 on a CPU without AMX tiles for that dtype
    ([`has_amx_tiles`]): `"matmul"` (PyTorch's fused CPU kernel upcasts there; 2x slower on a 2-core AMD EPYC).
    Otherwise `"fused"`: in float32 on both CPUs measured, and in bfloat16 with AMX (2-core Xeon: 1.6-1.8x faster
    in float32, 1.15-1.35x in bfloat16 on the model's window shapes). The choice depends only on the CPU's features,
    never on a timing, so that every process on a machine computes the same bytes (the inference engine's resumed and
    multi-process outputs equal a single run's).
    """
    if not _settings.allows("fused_attention"):
        return "matmul"
    if dtype != torch.float32 and not has_amx_tiles(dtype):
        return "matmul"
    return "fused"


# Per attention module: (validity key, copy of the bias table it was computed from, mask). Weak keys: the cache goes
# with the module.
_mask_cache: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def cached_attention_mask(attention: nn.Module, shift_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """`attention.attention_mask(shift_mask)` in `dtype`, computed once per bias table while `bias_cache` is on.

    The cache holds a copy of the table and is used only while the table equals it, so every change of the
    weights (an optimizer step, `load_state_dict`, an edit through `.data`) is seen; comparing the at most
    `(2 * window_size - 1)**2 x heads` values costs microseconds.
    """
    if not _settings.allows("bias_cache"):
        return attention.attention_mask(shift_mask).to(dtype)
    table = attention.relative_position_bias_table
    key = (table.device, table.dtype, dtype, None if shift_mask is None else shift_mask.data_ptr())
    cached = _mask_cache.get(attention)
    if cached is None or cached[0] != key or not torch.equal(cached[1], table):
        cached = (key, table.detach().clone(), attention.attention_mask(shift_mask).to(dtype))
        _mask_cache[attention] = cached
    return cached[2]


# --------------------------------------------------------------------------------------------------------------------
# Fast forwards of the reference modules (the first argument is the module's reference forward)
# --------------------------------------------------------------------------------------------------------------------


def patch_embedding_forward(reference: Callable, embeddings: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """`HTSATPatchEmbeddings`: `(batch, 1, H, W)` image to `(batch, H * W / patch_size**2, embed_dim)` tokens, the
    convolution as a matmul over the non-overlapping patches (the same sums, in the token layout the encoder reads).
    A float32 image (a reduced-precision model's float32 feature normalisation) is embedded in float32, its few
    weights upcast, and the tokens returned in the model's dtype."""
    projection = embeddings.projection
    if not (is_plain_module(projection) and is_plain_module(embeddings.norm)):  # an adapter, a hook: call them
        return reference(embeddings, image)
    dtype = projection.weight.dtype
    compute = image.dtype if image.dtype == torch.float32 else dtype
    batch, _, height, width = image.shape
    rows, cols = projection.kernel_size
    patches = image.to(compute).reshape(batch, height // rows, rows, width // cols, cols).transpose(2, 3)
    patches = patches.reshape(batch, (height // rows) * (width // cols), rows * cols)
    bias = None if projection.bias is None else projection.bias.to(compute)
    tokens = F.linear(patches, projection.weight.flatten(1).to(compute), bias)
    return cpu_layer_norm(embeddings.norm, tokens).to(dtype)


def window_attention_forward(
    reference: Callable,
    attention: nn.Module,
    windows: torch.Tensor,
    shift_mask: torch.Tensor | None = None,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`HTSATWindowAttention` in eval mode: linear layers through [`cpu_linear`], the mask from
    [`cached_attention_mask`], the attention by the kernel [`window_attention_kernel`] picks (batched matmuls where
    the probabilities are asked for, or the model uses eager attention). Shapes as the reference forward."""
    batch_windows, tokens, dim = windows.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    qkv = cpu_linear(attention.qkv, windows).view(batch_windows, tokens, 3, heads, head_dim)
    query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    mask = cached_attention_mask(attention, shift_mask, query.dtype)
    groups = mask.shape[1]  # heads, or windows of an image times heads (see `attention_mask`)
    query, key, value = (x.reshape(-1, groups, tokens, head_dim) for x in (query, key, value))
    fused = (
        attention.config._attn_implementation == "sdpa"
        and not output_attentions
        and window_attention_kernel(query.dtype) == "fused"
    )
    if fused:
        context, weights = _fused_attention(query, key, value, mask, attention.scale), None
    else:
        context, weights = matmul_attention(query, key, value, mask, attention.scale)
    context = context.reshape(batch_windows, heads, tokens, head_dim).transpose(1, 2)
    output = attention.proj_dropout(cpu_linear(attention.proj, context.reshape(batch_windows, tokens, dim)))
    if not output_attentions:
        return output, None
    return output, weights.reshape(batch_windows, heads, tokens, tokens)


def mlp_forward(reference: Callable, mlp: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """`HTSATMLP` with both linear layers, and the GELU, through [`cpu_linear`]."""
    hidden = mlp.dropout(cpu_linear(mlp.fc1, hidden_states, activation=mlp.act))
    return mlp.dropout(cpu_linear(mlp.fc2, hidden))


def swin_block_forward(
    reference: Callable, block: nn.Module, hidden_states: torch.Tensor, output_attentions: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`HTSATSwinBlock` with the shift and window partition as one gather by `block.token_order`, and their inverse
    as one by `block.token_order_inverse` (both `None` for a single unshifted window: no reordering); updates added
    to the residual stream by [`residual_add`]."""
    batch, num_tokens, dim = hidden_states.shape
    tokens = cpu_layer_norm(block.layernorm_before, hidden_states)
    if block.token_order is not None:
        # The cast to the matmul's dtype that `cpu_linear` would make, made before the gather: it commutes with it
        # (the same bytes) and the gather moves half the bytes in bf16 (1.03-1.05x on the bf16 forward).
        dtype = onednn_linear_dtype(block.attention.qkv, tokens)
        tokens = torch.index_select(tokens if dtype is None else tokens.to(dtype), 1, block.token_order)
    windows = tokens.view(-1, block.window_size**2, dim)
    windows, attentions = block.attention(windows, block.shift_mask, output_attentions)
    tokens = windows.view(batch, num_tokens, dim)
    if block.token_order is not None:
        tokens = torch.index_select(tokens, 1, block.token_order_inverse)
    hidden_states = residual_add(hidden_states, block.drop_path(tokens))
    hidden_states = residual_add(
        hidden_states, block.drop_path(block.mlp(cpu_layer_norm(block.layernorm_after, hidden_states)))
    )
    return hidden_states, attentions


def patch_merging_forward(reference: Callable, merging: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """`HTSATPatchMerging` with its projection through [`cpu_linear`]."""
    return cpu_linear(merging.reduction, cpu_layer_norm(merging.norm, merging.merge_neighbours(hidden_states)))


def chunked_stage_forward(
    reference: Callable, stage: nn.Module, hidden_states: torch.Tensor, output_attentions: bool = False
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """`HTSATStage` on chunks of [`clips_per_cpu_chunk`] clips (with `chunks` on), sized by the MLP's hidden
    activation (in autocast's dtype under autocast, the model's otherwise), each through the reference forward;
    outputs and attentions concatenated. The residual stream of a reduced-precision model in float32 where
    [`float32_residual_stream`] says so, the stage's output in the model's dtype again."""
    batch, tokens, _ = hidden_states.shape
    dtype = hidden_states.dtype
    element_size = torch.get_autocast_dtype("cpu").itemsize if torch.is_autocast_enabled("cpu") else dtype.itemsize
    clips = clips_per_cpu_chunk(tokens * stage.blocks[0].mlp.fc1.out_features * element_size)
    if float32_residual_stream(stage, hidden_states):
        hidden_states = hidden_states.float()
    if clips >= batch:
        outputs, attentions = reference(stage, hidden_states, output_attentions)
    else:
        chunks = [reference(stage, chunk, output_attentions) for chunk in hidden_states.split(clips)]
        attentions = tuple(torch.cat(per_block) for per_block in zip(*(chunk for _, chunk in chunks)))
        outputs = torch.cat([chunk for chunk, _ in chunks])
    return outputs.to(dtype), attentions


__all__ = [
    "CPU_CHUNK_BYTES",
    "CPUFastPathSettings",
    "ONEDNN_LINEAR_AVAILABLE",
    "cpu_capabilities",
    "cpu_fast_path",
    "frozen_weights",
    "get_cpu_fast_path",
    "set_cpu_fast_path",
]
