"""PyTorch HTS-AT: Swin transformer over a folded log-mel image, with the token-semantic head.

The data path, in call order (each stage is a function or module of this file):

1. `HTSATModel.forward`: `feature_norm` (BatchNorm over mel bins), `spec_augment` in training only.
2. `fold_spectrogram_to_image`: stretch to `max_frames` frames (bicubic), cut into `freq_ratio` time chunks and
   stack them along frequency into a `(spec_size, spec_size)` image.
3. `HTSATPatchEmbeddings`, then `HTSATEncoder`: Swin stages of `HTSATSwinBlock` (`window_partition`,
   `HTSATWindowAttention` with `relative_position_index` and `shifted_window_attention_mask`, `window_reverse`)
   and `HTSATPatchMerging`; final LayerNorm; `pooler_output` is the mean of the final tokens.
4. Heads: `tokens_to_time_grid` regroups the final tokens into chronological time steps, then
   `HTSATTokenSemanticHead` (the paper's head) or `HTSATLinearHead` gives frame and clip logits.

CPU inference takes a faster route with the same results: `HTSATStage.forward` runs the batch in cache-sized chunks
of clips (`clips_per_cpu_chunk`) and `cpu_linear` fuses each linear layer's bias (and GELU) into one oneDNN matmul.
"""

import math
import platform
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN, GELUActivation
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_htsat import HTSATConfig

REMOTE_CODE_AUTO_MAP = {
    "AutoModel": "modeling_htsat.HTSATModel",
    "AutoModelForAudioClassification": "modeling_htsat.HTSATForAudioClassification",
    "AutoModelForAudioFrameClassification": "modeling_htsat.HTSATForSoundEventDetection",
}
SHIFT_MASK_VALUE = -100.0  # the original's value for token pairs from different regions of a shifted window
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


# --------------------------------------------------------------------------------------------------------------------
# Pure helpers: shapes in, shapes out, no parameters.
# --------------------------------------------------------------------------------------------------------------------


def fold_spectrogram_to_image(features: torch.Tensor, spec_size: int, freq_ratio: int) -> torch.Tensor:
    """Fold a log-mel spectrogram into the square image the Swin backbone reads.

    A spectrogram shorter than `spec_size * freq_ratio` frames (or with fewer than `spec_size // freq_ratio` mel
    bins) is first stretched to that size by bicubic interpolation with `align_corners=True`; it is never padded.
    The frames are then cut into `freq_ratio` consecutive chunks stacked along the frequency axis:
    image row = `chunk * mel_bins + mel_bin`, image column = frame within the chunk.

    Args:
        features: `(batch, frames, mel_bins)` with `frames <= spec_size * freq_ratio`.

    Returns:
        `(batch, 1, spec_size, spec_size)`.
    """
    batch, frames, mel_bins = features.shape
    target_frames, target_bins = spec_size * freq_ratio, spec_size // freq_ratio
    if frames > target_frames or mel_bins > target_bins:
        raise ValueError(
            f"the model takes at most {target_frames} frames of {target_bins} mel bins, got {frames} frames of "
            f"{mel_bins} bins; split longer audio into windows (see htsat_hf's sound-event-detection tools)"
        )
    image = features.unsqueeze(1)
    if (frames, mel_bins) != (target_frames, target_bins):
        image = F.interpolate(image, size=(target_frames, target_bins), mode="bicubic", align_corners=True)
    image = image.transpose(2, 3).reshape(batch, 1, target_bins, freq_ratio, spec_size)
    return image.transpose(2, 3).reshape(batch, 1, spec_size, spec_size)


def window_partition(hidden_states: torch.Tensor, window_size: int) -> torch.Tensor:
    """`(batch, height, width, channels)` to `(batch * num_windows, window_size**2, channels)`, windows row-major."""
    batch, height, width, channels = hidden_states.shape
    windows = hidden_states.view(
        batch, height // window_size, window_size, width // window_size, window_size, channels
    )
    return windows.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, channels)


def window_reverse(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of [`window_partition`]: `(batch * num_windows, window_size**2, channels)` to `(batch, H, W, C)`."""
    channels = windows.shape[-1]
    hidden_states = windows.view(-1, height // window_size, width // window_size, window_size, window_size, channels)
    return hidden_states.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def relative_position_index(window_size: int) -> torch.Tensor:
    """`(window_size**2, window_size**2)` index into the `(2 * window_size - 1)**2`-row relative position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return relative[:, :, 0] * (2 * window_size - 1) + relative[:, :, 1]


def shifted_window_attention_mask(height: int, width: int, window_size: int, shift_size: int) -> torch.Tensor:
    """Additive mask for attention in cyclically shifted windows, `(num_windows, window_size**2, window_size**2)`.

    After the shift, a window may hold tokens from up to four regions that are not neighbours in the image; pairs
    from different regions get -100 (the original's value), pairs from the same region 0.
    """
    regions = torch.zeros(1, height, width, 1)
    bounds = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    for label, (rows, cols) in enumerate((r, c) for r in bounds for c in bounds):
        regions[:, rows, cols, :] = label
    region_windows = window_partition(regions, window_size).squeeze(-1)
    different = region_windows.unsqueeze(1) != region_windows.unsqueeze(2)
    return torch.zeros(different.shape).masked_fill(different, SHIFT_MASK_VALUE)


def shifted_window_order(height: int, width: int, window_size: int, shift_size: int) -> torch.Tensor:
    """Token indices that cyclically shift a row-major `height x width` grid by `-shift_size` on both axes and
    partition it into windows, as one gather: `tokens[:, order]` equals
    `window_partition(torch.roll(grid, (-shift_size, -shift_size), (1, 2)), window_size)` flattened over windows.
    `torch.argsort(order)` undoes it. One gather replaces a roll and a permute-copy, which cost far more on CPU."""
    grid = torch.arange(height * width).view(1, height, width, 1)
    if shift_size:
        grid = torch.roll(grid, shifts=(-shift_size, -shift_size), dims=(1, 2))
    return window_partition(grid, window_size).reshape(-1)


def clips_per_cpu_chunk(tokens_per_clip: int, hidden_channels: int, element_size: int) -> int:
    """How many clips a stage runs at once on CPU: as many as keep the MLP's hidden activation,
    `clips * tokens_per_clip * hidden_channels * element_size` bytes, within `CPU_CHUNK_BYTES`, and at least one."""
    return max(1, CPU_CHUNK_BYTES // (tokens_per_clip * hidden_channels * element_size))


def is_plain_module(module: nn.Module) -> bool:
    """Whether calling `module` runs nothing but its class's own `forward`: no hooks of its own or global ones, no
    `forward` replaced on the instance (as accelerate's hooks do), a class of exactly its kind, parameters that are
    plain strided tensors (not quantized or other tensor subclasses). Only then may a fast path compute the module's
    result without calling it."""
    global_hooks = (nn.modules.module._global_forward_hooks, nn.modules.module._global_forward_pre_hooks)
    return (
        type(module) in (nn.Linear, nn.Conv2d, GELUActivation)
        and not (module._forward_hooks or module._forward_pre_hooks or any(global_hooks))
        and "forward" not in module.__dict__
        and all(type(p) is nn.Parameter and p.layout == torch.strided for p in module.parameters(recurse=False))
    )


def onednn_linear_dtype(layer: nn.Module, inputs: torch.Tensor) -> torch.dtype | None:
    """The dtype in which `layer(inputs)` may run as oneDNN's fused linear op, or `None` where it must run as the
    layer itself: only a plain float32 `nn.Linear` in eval mode, for inference (no autograd) on an x86 CPU in eager
    mode, with float32 inputs or under bfloat16 autocast on a CPU with bfloat16 support."""
    if not (
        _ONEDNN_LINEAR is not None
        and torch.backends.mkldnn.enabled
        and is_plain_module(layer)
        and type(layer) is nn.Linear
        and not layer.training
        and inputs.device.type == layer.weight.device.type == "cpu"
        and layer.weight.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not _is_tracing()
    ):
        return None
    if torch.is_autocast_enabled("cpu"):
        bf16 = torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return torch.bfloat16 if bf16 else None
    return torch.float32 if inputs.dtype == torch.float32 else None


def cpu_linear(layer: nn.Linear, inputs: torch.Tensor, activation: nn.Module | None = None) -> torch.Tensor:
    """`layer(inputs)`, then `activation` when given.

    Where [`onednn_linear_dtype`] allows, this is one oneDNN matmul with the bias, and the activation when it is
    transformers' exact (erf) GELU module unaltered, fused into it (the kernel torch.compile's CPU backend emits for
    such layers): in float32 up to 13% faster than PyTorch's default MKL GEMM on the model's shapes on AMD EPYC, and
    in both precisions no separate passes for the bias and the activation (a bfloat16 GELU pass costs more than its
    matmul's bias). Under autocast the operands are cast to bfloat16 on each call, as autocast casts them once per
    autocast region. Anywhere else it is the plain layer, then the activation module.
    """
    dtype = onednn_linear_dtype(layer, inputs)
    if dtype is None:
        outputs = layer(inputs)
        return outputs if activation is None else activation(outputs)
    fuses_gelu = (
        activation is not None
        and is_plain_module(activation)
        and type(activation) is GELUActivation
        and activation.act is F.gelu
    )
    weight, bias = layer.weight.to(dtype), None if layer.bias is None else layer.bias.to(dtype)
    post_op, algorithm = ("gelu", "none") if fuses_gelu else ("none", "")
    outputs = _ONEDNN_LINEAR(inputs.to(dtype), weight, bias, post_op, [], algorithm)
    return outputs if activation is None or fuses_gelu else activation(outputs)


def _is_tracing() -> bool:
    exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.6
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or bool(exporting and exporting())


def tokens_to_time_grid(tokens: torch.Tensor, freq_ratio: int) -> torch.Tensor:
    """Regroup the final token grid into chronological time steps.

    The final tokens form a square grid whose rows are the image's frequency axis, which holds `freq_ratio` time
    chunks stacked on top of each other. This undoes the stacking.

    Args:
        tokens: `(batch, side * side, channels)` in row-major grid order.

    Returns:
        `(batch, channels, side // freq_ratio, freq_ratio * side)`: frequency rows by time steps.
    """
    batch, num_tokens, channels = tokens.shape
    side = math.isqrt(num_tokens)
    grid = tokens.transpose(1, 2).reshape(batch, channels, freq_ratio, side // freq_ratio, side)
    return grid.permute(0, 1, 3, 2, 4).reshape(batch, channels, side // freq_ratio, freq_ratio * side)


def spec_augment(
    features: torch.Tensor, time_stripes: int, time_width: int, freq_stripes: int, freq_width: int
) -> torch.Tensor:
    """SpecAugment as in the original recipe: per example, zero `time_stripes` stripes of 0 to `time_width - 1`
    frames and `freq_stripes` stripes of 0 to `freq_width - 1` mel bins, at uniformly drawn positions.

    Args:
        features: `(batch, frames, mel_bins)`.
    """
    batch = features.shape[0]
    keep = torch.ones_like(features, dtype=torch.bool)
    for axis, stripes, width in ((1, time_stripes, time_width), (2, freq_stripes, freq_width)):
        size = features.shape[axis]
        positions = torch.arange(size, device=features.device)
        for _ in range(stripes):
            widths = torch.randint(0, width, (batch, 1), device=features.device)
            starts = (torch.rand(batch, 1, device=features.device) * (size - widths)).long()
            stripe = (positions >= starts) & (positions < starts + widths)  # (batch, size)
            keep &= ~stripe.unsqueeze(3 - axis)
    return features * keep


def mixup(values: torch.Tensor, mixup_lambda: torch.Tensor) -> torch.Tensor:
    """Mix every example with its partner in the reversed batch, as the original recipe:
    `lam[i] * values[i] + (1 - lam[i]) * values[batch - 1 - i]`.

    Args:
        values: `(batch, ...)` features or targets.
        mixup_lambda: `(batch,)` weights in [0, 1].
    """
    lam = mixup_lambda.to(values.dtype).view(-1, *([1] * (values.ndim - 1)))
    return lam * values + (1 - lam) * values.flip(0)


# --------------------------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class HTSATSoundEventDetectionOutput(ModelOutput):
    """
    Args:
        loss: frame-level binary cross-entropy, when `labels` are given.
        logits: `(batch, num_time_steps, num_labels)` frame logits (pre-sigmoid) on the model's time grid: step `i`
            covers `[i, i + 1) * clip_duration / num_time_steps` of the (stretched) input clip.
        clip_logits: `(batch, num_labels)` clip logits (pre-sigmoid).
        hidden_states, attentions: as in [`HTSATModel`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    clip_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class HTSATDropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per example in training."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        mask = torch.empty(shape, dtype=hidden_states.dtype, device=hidden_states.device).bernoulli_(keep_prob)
        return hidden_states * mask / keep_prob

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class HTSATPatchEmbeddings(nn.Module):
    """`(batch, 1, spec_size, spec_size)` image to `(batch, (spec_size // patch_size)**2, embed_dim)` tokens.

    The projection is a convolution whose stride equals its kernel (the original's, and its weights), applied as
    the equivalent matmul over the non-overlapping patches: the same sums, in the token layout the encoder reads,
    and about 8x faster on CPU than the one-input-channel convolution.
    """

    def __init__(self, config: HTSATConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.projection = nn.Conv2d(1, config.embed_dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not is_plain_module(self.projection):  # an adapter, a hook or a quantized convolution: call it
            return self.norm(self.projection(image).flatten(2).transpose(1, 2))
        batch, _, height, width = image.shape
        size = self.patch_size
        patches = image.reshape(batch, height // size, size, width // size, size).transpose(2, 3)
        patches = patches.reshape(batch, (height // size) * (width // size), size * size)
        return self.norm(F.linear(patches, self.projection.weight.flatten(1), self.projection.bias))


class HTSATWindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias per head."""

    def __init__(self, config: HTSATConfig, dim: int, num_heads: int, window_size: int):
        super().__init__()
        self.config = config
        self.is_causal = False
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window_size = window_size
        self.qkv = nn.Linear(dim, dim * 3, bias=config.qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self._bias_cache: tuple[tuple, torch.Tensor] | None = None

    def attention_bias(self, shift_mask: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Relative position bias, plus the shift mask when given, as an additive attention mask.

        Returns, in `dtype` (the table's by default), `(1, heads, N, N)` without a shift mask,
        `(1, num_windows * heads, N, N)` with one: the windows of an image then share the batch row, so the mask
        broadcasts over images without being copied per image.
        Without gradients the result is cached until the bias table changes (a new tensor, or an in-place update
        such as an optimizer step or `load_state_dict`; edits through `.data` bypass that check, so the cache is
        also dropped by every `train()`/`eval()` call).
        """
        table = self.relative_position_bias_table
        dtype = table.dtype if dtype is None else dtype
        if torch.is_grad_enabled() or _is_tracing():
            return self._compute_attention_bias(shift_mask).to(dtype)
        key = (table.data_ptr(), table._version, table.device, dtype, shift_mask is None)
        if self._bias_cache is None or self._bias_cache[0] != key:
            self._bias_cache = (key, self._compute_attention_bias(shift_mask).to(dtype))
        return self._bias_cache[1]

    def train(self, mode: bool = True):
        self._bias_cache = None
        return super().train(mode)

    def _compute_attention_bias(self, shift_mask: torch.Tensor | None) -> torch.Tensor:
        tokens = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(tokens, tokens, self.num_heads).permute(2, 0, 1)
        if shift_mask is None:
            return bias.unsqueeze(0)
        return (shift_mask.unsqueeze(1) + bias.unsqueeze(0)).flatten(0, 1).unsqueeze(0)

    def forward(
        self, windows: torch.Tensor, shift_mask: torch.Tensor | None = None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            windows: `(batch * num_windows, N, dim)` with `N = window_size**2`.
            shift_mask: `(num_windows, N, N)` for shifted blocks, else `None`.

        Returns:
            `(batch * num_windows, N, dim)` and, with `output_attentions`, the `(batch * num_windows, heads, N, N)`
            attention probabilities.
        """
        batch_windows, tokens, dim = windows.shape
        qkv = cpu_linear(self.qkv, windows).view(batch_windows, tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch * num_windows, heads, N, head_dim)
        # In the scores' dtype: a float32 bias would promote bf16 scores, softmax and all, back to float32.
        bias = self.attention_bias(shift_mask, query.dtype)
        if shift_mask is not None:
            grouped = (-1, shift_mask.shape[0] * self.num_heads, tokens, self.head_dim)
            query, key, value = query.reshape(grouped), key.reshape(grouped), value.reshape(grouped)

        dropout = self.config.attention_dropout if self.training else 0.0
        weights = None
        # PyTorch's CPU SDPA kernel is about twice slower than two batched matmuls on these 64-token windows in
        # reduced precision, so SDPA serves float32 on CPU and every dtype on accelerators.
        use_sdpa = self.config._attn_implementation == "sdpa" and (
            query.device.type != "cpu" or query.dtype == torch.float32
        )
        if output_attentions or not use_sdpa:
            scores = torch.matmul(query * self.scale, key.transpose(-2, -1)) + bias
            weights = scores.softmax(dim=-1)
            context = torch.matmul(F.dropout(weights, p=dropout, training=self.training), value)
            weights = weights.reshape(batch_windows, self.num_heads, tokens, tokens)
        else:
            context = F.scaled_dot_product_attention(
                query, key, value, attn_mask=bias, dropout_p=dropout, scale=self.scale
            )
        context = context.reshape(batch_windows, self.num_heads, tokens, self.head_dim).transpose(1, 2)
        output = self.proj_dropout(cpu_linear(self.proj, context.reshape(batch_windows, tokens, dim)))
        return output, (weights if output_attentions else None)


class HTSATMLP(nn.Module):
    def __init__(self, config: HTSATConfig, dim: int):
        super().__init__()
        hidden = int(dim * config.mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(cpu_linear(self.fc1, hidden_states, activation=self.act))
        return self.dropout(cpu_linear(self.fc2, hidden))


class HTSATSwinBlock(GradientCheckpointingLayer):
    """Pre-norm Swin block: (shifted) window attention, then MLP, each with a residual and stochastic depth.

    A stage whose token grid is no larger than the window uses one window and no shift (the last stage).
    """

    def __init__(
        self,
        config: HTSATConfig,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        shifted: bool,
        drop_path: float,
    ):
        super().__init__()
        self.input_resolution = input_resolution
        self.window_size = config.window_size
        self.shift_size = config.window_size // 2 if shifted else 0
        if min(input_resolution) <= self.window_size:
            self.window_size, self.shift_size = min(input_resolution), 0
        self.layernorm_before = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attention = HTSATWindowAttention(config, dim, num_heads, self.window_size)
        self.drop_path = HTSATDropPath(drop_path)
        self.layernorm_after = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = HTSATMLP(config, dim)
        # With a single unshifted window the window order is the identity and no gather is needed.
        self.reorders_tokens = self.shift_size > 0 or self.window_size < max(input_resolution)
        buffers = self.make_buffers()
        for name in ("shift_mask", "token_order", "token_order_inverse"):
            self.register_buffer(name, buffers[name], persistent=False)

    def make_buffers(self) -> dict[str, torch.Tensor | None]:
        """The block's constant tensors, recomputed rather than stored in checkpoints."""
        height, width = self.input_resolution
        order = shifted_window_order(height, width, self.window_size, self.shift_size)
        return {
            "shift_mask": shifted_window_attention_mask(height, width, self.window_size, self.shift_size)
            if self.shift_size
            else None,
            "token_order": order if self.reorders_tokens else None,
            "token_order_inverse": torch.argsort(order) if self.reorders_tokens else None,
        }

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(batch, H * W, dim)` to `(batch, H * W, dim)`, plus attention probabilities on request."""
        batch, num_tokens, dim = hidden_states.shape
        tokens = self.layernorm_before(hidden_states)
        if self.reorders_tokens:
            tokens = torch.index_select(tokens, 1, self.token_order)
        windows = tokens.view(-1, self.window_size**2, dim)
        windows, attentions = self.attention(windows, self.shift_mask, output_attentions)
        tokens = windows.view(batch, num_tokens, dim)
        if self.reorders_tokens:
            tokens = torch.index_select(tokens, 1, self.token_order_inverse)
        hidden_states = hidden_states + self.drop_path(tokens)
        hidden_states = hidden_states + self.drop_path(self.mlp(self.layernorm_after(hidden_states)))
        return hidden_states, attentions


class HTSATPatchMerging(nn.Module):
    """Halve the token grid: concatenate each 2x2 neighbourhood (order (0,0), (1,0), (0,1), (1,1) as (row, col)),
    LayerNorm, then a bias-free projection from 4C to 2C channels."""

    def __init__(self, config: HTSATConfig, input_resolution: tuple[int, int], dim: int):
        super().__init__()
        self.input_resolution = input_resolution
        self.norm = nn.LayerNorm(4 * dim, eps=config.layer_norm_eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(batch, H * W, C)` to `(batch, H * W / 4, 2C)`."""
        height, width = self.input_resolution
        batch, _, channels = hidden_states.shape
        grid = hidden_states.view(batch, height // 2, 2, width // 2, 2, channels)
        # (row half, row parity, col half, col parity) -> neighbours ordered with the row parity varying fastest
        merged = grid.permute(0, 1, 3, 4, 2, 5).reshape(batch, (height // 2) * (width // 2), 4 * channels)
        return cpu_linear(self.reduction, self.norm(merged))


class HTSATStage(nn.Module):
    def __init__(self, config: HTSATConfig, stage: int, drop_path: list[float]):
        super().__init__()
        side = config.spec_size // config.patch_size // 2**stage
        dim = config.embed_dim * 2**stage
        self.blocks = nn.ModuleList(
            HTSATSwinBlock(config, dim, (side, side), config.num_heads[stage], index % 2 == 1, drop_path[index])
            for index in range(config.depths[stage])
        )
        last = stage == len(config.depths) - 1
        self.downsample = None if last else HTSATPatchMerging(config, (side, side), dim)
        self.mlp_hidden_size = int(dim * config.mlp_ratio)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """`(batch, H * W, dim)` to `(batch, H * W / 4, 2 * dim)` (unchanged in the last stage), and each block's
        attention probabilities when `output_attentions` (else an empty tuple).

        On CPU without autograd the batch goes through in chunks of [`clips_per_cpu_chunk`] clips, so that a chunk's
        activations stay in the processor's cache; every operation is per clip, so the results are those of one
        pass. With autograd (whose saved activations leave the cache anyway), on accelerators, under
        `torch.compile` and in exporters the batch goes through whole.
        """
        batch, tokens, _ = hidden_states.shape
        clips = batch
        if hidden_states.device.type == "cpu" and not torch.is_grad_enabled() and not _is_tracing():
            element_size = (
                torch.get_autocast_dtype("cpu").itemsize
                if torch.is_autocast_enabled("cpu")
                else hidden_states.element_size()
            )
            clips = clips_per_cpu_chunk(tokens, self.mlp_hidden_size, element_size)
        if clips >= batch:
            return self._run(hidden_states, output_attentions)
        outputs = [self._run(chunk, output_attentions) for chunk in hidden_states.split(clips)]
        attentions = tuple(torch.cat(per_block) for per_block in zip(*(chunk for _, chunk in outputs)))
        return torch.cat([chunk for chunk, _ in outputs]), attentions

    def _run(self, hidden_states: torch.Tensor, output_attentions: bool):
        attentions = ()
        for block in self.blocks:
            hidden_states, block_attentions = block(hidden_states, output_attentions)
            if output_attentions:
                attentions += (block_attentions,)
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states)
        return hidden_states, attentions


class HTSATEncoder(nn.Module):
    def __init__(self, config: HTSATConfig):
        super().__init__()
        total = sum(config.depths)
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        starts = [sum(config.depths[:stage]) for stage in range(len(config.depths))]
        self.stages = nn.ModuleList(
            HTSATStage(config, stage, rates[start : start + config.depths[stage]])
            for stage, start in enumerate(starts)
        )

    def forward(self, hidden_states: torch.Tensor, output_hidden_states: bool, output_attentions: bool):
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for stage in self.stages:
            hidden_states, attentions = stage(hidden_states, output_attentions)
            if output_attentions:
                all_attentions += attentions
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        return hidden_states, all_hidden_states, all_attentions


class HTSATPreTrainedModel(PreTrainedModel):
    config_class = HTSATConfig
    config: HTSATConfig
    base_model_prefix = "htsat"
    main_input_name = "input_features"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["HTSATSwinBlock"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    # Trainer passes `num_items_in_batch` only to models that take loss kwargs; ours average their own losses.
    accepts_loss_kwargs = False

    def save_pretrained(self, save_directory, *args, **kwargs):
        if self._auto_class is not None:
            # Every head loads from one saved folder through remote code, not only the class that saved it.
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **REMOTE_CODE_AUTO_MAP}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # PyTorch's default, as the original (which re-initialises only Linear and LayerNorm). A zero patch
            # embedding bias would turn SpecAugment's zeroed stripes into zero-variance tokens for LayerNorm.
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.weight[0].numel())
            init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d)):
            super()._init_weights(module)
        elif isinstance(module, HTSATWindowAttention):
            init.trunc_normal_(module.relative_position_bias_table, std=std)
            # Buffers are not in the checkpoint: recompute them, or `from_pretrained` (meta device) leaves garbage.
            init.copy_(module.relative_position_index, relative_position_index(module.window_size))
        elif isinstance(module, HTSATSwinBlock):
            for name, value in module.make_buffers().items():
                if value is not None:
                    init.copy_(getattr(module, name), value)


class HTSATModel(HTSATPreTrainedModel):
    """The HTS-AT backbone: log-mel features in, final tokens and their mean (the original's latent) out."""

    _keys_to_ignore_on_load_unexpected = [r"^head\."]  # a classifier's head, when loading only the backbone

    def __init__(self, config: HTSATConfig):
        super().__init__(config)
        self.feature_norm = nn.BatchNorm1d(config.num_mel_bins, eps=config.batch_norm_eps)
        self.patch_embed = HTSATPatchEmbeddings(config)
        self.encoder = HTSATEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def forward(
        self,
        input_features: torch.Tensor,
        mixup_lambda: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        Args:
            input_features: `(batch, frames, num_mel_bins)` log-mel features from [`HTSATFeatureExtractor`], at most
                `config.max_frames` (1024) frames; shorter inputs are stretched to that length.
            mixup_lambda: `(batch,)` mixup weights, used in training only: the normalised (and SpecAugmented)
                features are mixed with the reversed batch, see [`mixup`]. Targets are the caller's to mix.
            output_hidden_states: also return the tokens after the patch embedding and after each stage.
            output_attentions: also return each block's `(batch * windows, heads, N, N)` attention probabilities.

        Returns:
            [`BaseModelOutputWithPooling`] with `last_hidden_state` `(batch, 64, hidden_size)` (the final 8x8 token
            grid, row-major, after the last LayerNorm) and `pooler_output` `(batch, hidden_size)` (their mean).
        """
        config = self.config
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        return_dict = config.return_dict if return_dict is None else return_dict
        if input_features.ndim != 3 or input_features.shape[-1] != config.num_mel_bins:
            raise ValueError(
                f"input_features must be (batch, frames, {config.num_mel_bins}) log-mel features, got shape "
                f"{tuple(input_features.shape)}; compute them with HTSATFeatureExtractor"
            )

        features = self.feature_norm(input_features.transpose(1, 2)).transpose(1, 2)
        if self.training:
            features = spec_augment(
                features,
                config.spec_augment_time_stripes,
                config.spec_augment_time_width,
                config.spec_augment_freq_stripes,
                config.spec_augment_freq_width,
            )
        if self.training and mixup_lambda is not None:
            features = mixup(features, mixup_lambda)
        image = fold_spectrogram_to_image(features, config.spec_size, config.freq_ratio)
        hidden_states, all_hidden_states, all_attentions = self.encoder(
            self.patch_embed(image), output_hidden_states, output_attentions
        )
        last_hidden_state = self.layernorm(hidden_states)
        pooled = last_hidden_state.mean(dim=1)
        if not return_dict:
            extras = tuple(x for x in (all_hidden_states, all_attentions) if x is not None)
            return (last_hidden_state, pooled) + extras
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )


class HTSATTokenSemanticHead(nn.Module):
    """The paper's head: a `(rows, 3)` convolution over the time grid of final tokens gives per-step class logits;
    the clip logits are their mean over time (sigmoid of the mean, not mean of sigmoids, as in the original)."""

    def __init__(self, config: HTSATConfig):
        super().__init__()
        self.freq_ratio = config.freq_ratio
        rows = config.spec_size // config.patch_size // 2 ** (len(config.depths) - 1) // config.freq_ratio
        self.conv = nn.Conv2d(config.hidden_size, config.num_labels, kernel_size=(rows, 3), padding=(0, 1))

    def forward(self, last_hidden_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(batch, tokens, hidden)` to clip logits `(batch, labels)` and frame logits `(batch, steps, labels)`."""
        frame_logits = self.conv(tokens_to_time_grid(last_hidden_state, self.freq_ratio)).flatten(2).transpose(1, 2)
        return frame_logits.mean(dim=1), frame_logits


class HTSATLinearHead(nn.Module):
    """Head used when `use_token_semantic_head=False`: a linear layer on the mean token for the clip, and on the
    time tokens summed over the frequency rows for the frames (as the original)."""

    def __init__(self, config: HTSATConfig):
        super().__init__()
        self.freq_ratio = config.freq_ratio
        self.linear = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, last_hidden_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(batch, tokens, hidden)` to clip logits `(batch, labels)` and frame logits `(batch, steps, labels)`."""
        time_tokens = tokens_to_time_grid(last_hidden_state, self.freq_ratio).sum(dim=2).transpose(1, 2)
        return self.linear(last_hidden_state.mean(dim=1)), self.linear(time_tokens)


def _make_head(config: HTSATConfig) -> nn.Module:
    return HTSATTokenSemanticHead(config) if config.use_token_semantic_head else HTSATLinearHead(config)


def clip_classification_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str | None) -> torch.Tensor:
    """Mean BCE-with-logits on multi-hot targets or cross-entropy on class ids, chosen by `problem_type`
    (inferred from the labels' shape and dtype when `None`)."""
    if problem_type is None:
        problem_type = "single_label_classification" if labels.ndim == 1 else "multi_label_classification"
    if problem_type == "multi_label_classification":
        if labels.shape != logits.shape:
            raise ValueError(f"multi-label targets must be multi-hot {tuple(logits.shape)}, got {tuple(labels.shape)}")
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    if problem_type == "single_label_classification":
        probabilities = labels.is_floating_point() and labels.shape == logits.shape
        if not probabilities and (labels.ndim != 1 or labels.is_floating_point()):
            raise ValueError(
                f"single-label targets must be (batch,) class ids or {tuple(logits.shape)} class probabilities, got "
                f"{labels.dtype} {tuple(labels.shape)}"
            )
        return F.cross_entropy(logits, labels.to(logits.dtype) if probabilities else labels)
    raise ValueError(f"HTS-AT supports single_label_classification and multi_label_classification, not {problem_type!r}")


class HTSATForAudioClassification(HTSATPreTrainedModel):
    """HTS-AT with its clip classification head. Logits are pre-sigmoid (multi-label) or pre-softmax."""

    def __init__(self, config: HTSATConfig):
        super().__init__(config)
        self.htsat = HTSATModel(config)
        self.head = _make_head(config)
        self.post_init()

    def forward(
        self,
        input_features: torch.Tensor,
        labels: torch.Tensor | None = None,
        mixup_lambda: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput | tuple:
        r"""
        Args:
            input_features: `(batch, frames, num_mel_bins)`, see [`HTSATModel.forward`].
            labels: `(batch, num_labels)` multi-hot targets for `multi_label_classification` (binary cross-entropy)
                or `(batch,)` class ids for `single_label_classification` (cross-entropy; `(batch, num_labels)`
                class probabilities are accepted too, e.g. mixed targets).
            mixup_lambda: `(batch,)` mixup weights for training, see [`HTSATModel.forward`].

        Returns:
            [`SequenceClassifierOutput`] with `logits` `(batch, num_labels)`.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.htsat(input_features, mixup_lambda, output_hidden_states, output_attentions, return_dict=True)
        logits, _ = self.head(outputs.last_hidden_state)
        loss = None if labels is None else clip_classification_loss(logits, labels, self.config.problem_type)
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


class HTSATForSoundEventDetection(HTSATPreTrainedModel):
    """HTS-AT returning frame-level class logits on its time grid (32 steps per clip) and clip logits."""

    def __init__(self, config: HTSATConfig):
        super().__init__(config)
        self.htsat = HTSATModel(config)
        self.head = _make_head(config)
        self.post_init()

    def forward(
        self,
        input_features: torch.Tensor,
        labels: torch.Tensor | None = None,
        mixup_lambda: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> HTSATSoundEventDetectionOutput | tuple:
        r"""
        Args:
            input_features: `(batch, frames, num_mel_bins)`, see [`HTSATModel.forward`].
            labels: `(batch, num_time_steps, num_labels)` frame targets in [0, 1] on the model's time grid
                (`config.num_time_steps` steps spread evenly over the clip); trained with binary cross-entropy.
            mixup_lambda: `(batch,)` mixup weights for training, see [`HTSATModel.forward`].

        Returns:
            [`HTSATSoundEventDetectionOutput`] with frame `logits` `(batch, num_time_steps, num_labels)` and
            `clip_logits` `(batch, num_labels)`.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.htsat(input_features, mixup_lambda, output_hidden_states, output_attentions, return_dict=True)
        clip_logits, frame_logits = self.head(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            if labels.shape != frame_logits.shape:
                raise ValueError(
                    f"frame labels must have shape (batch, num_time_steps={self.config.num_time_steps}, "
                    f"num_labels={self.config.num_labels}) = {tuple(frame_logits.shape)}, got {tuple(labels.shape)}"
                )
            loss = F.binary_cross_entropy_with_logits(frame_logits, labels.to(frame_logits.dtype))
        output = HTSATSoundEventDetectionOutput(
            loss=loss,
            logits=frame_logits,
            clip_logits=clip_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "HTSATForAudioClassification",
    "HTSATForSoundEventDetection",
    "HTSATModel",
    "HTSATPreTrainedModel",
    "HTSATSoundEventDetectionOutput",
    "fold_spectrogram_to_image",
    "mixup",
    "relative_position_index",
    "shifted_window_attention_mask",
    "shifted_window_order",
    "spec_augment",
    "tokens_to_time_grid",
    "window_partition",
    "window_reverse",
]
