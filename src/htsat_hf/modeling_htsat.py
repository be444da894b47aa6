"""PyTorch HTS-AT: Swin transformer over a folded log-mel image, with the token-semantic head.

The data path, in call order (each stage is a function or module of this file):

1. `HTSATModel.forward`: `feature_norm` (BatchNorm over mel bins), `spec_augment` in training only.
2. `fold_spectrogram_to_image`: stretch to `max_frames` frames (bicubic), cut into `freq_ratio` time chunks and
   stack them along frequency into a `(spec_size, spec_size)` image.
3. `HTSATPatchEmbeddings` (a strided convolution), then `HTSATEncoder`: Swin stages of `HTSATSwinBlock` (cyclic
   shift, `window_partition`, `HTSATWindowAttention` with `relative_position_index` and
   `shifted_window_attention_mask`, `window_reverse`, shift back; then the MLP) and `HTSATPatchMerging`; final
   LayerNorm; `pooler_output` is the mean of the final tokens.
4. Heads: `tokens_to_time_grid` regroups the final tokens into chronological time steps, then
   `HTSATTokenSemanticHead` (the paper's head) or `HTSATLinearHead` gives frame and clip logits.

The forwards in this file are the reference. For CPU inference (eval mode, no autograd, not compiled or exported)
the forwards marked `@fast_forward` run faster implementations from `cpu_fast_path_htsat.py` with the same results:
cache-sized chunks of clips, oneDNN fused linear layers, one token gather for shift and windows, the patch embedding
as a matmul, a cached attention mask, the attention kernel this CPU runs fastest, and for models held in bfloat16 or
float16 a float32 residual stream. `htsat_hf.set_cpu_fast_path` switches them.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_htsat import HTSATConfig
from .cpu_fast_path_htsat import (
    chunked_stage_forward,
    fast_forward,
    mlp_forward,
    patch_embedding_forward,
    patch_merging_forward,
    shifted_window_order,
    swin_block_forward,
    window_attention_forward,
)
from .errors import InputError

REMOTE_CODE_AUTO_MAP = {
    "AutoModel": "modeling_htsat.HTSATModel",
    "AutoModelForAudioClassification": "modeling_htsat.HTSATForAudioClassification",
    "AutoModelForAudioFrameClassification": "modeling_htsat.HTSATForSoundEventDetection",
}
SHIFT_MASK_VALUE = -100.0  # the original's value for token pairs from different regions of a shifted window


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

    Raises:
        InputError: more frames or mel bins than that; the model's forward lets it through as its own one-line error.
    """
    batch, frames, mel_bins = features.shape
    target_frames, target_bins = spec_size * freq_ratio, spec_size // freq_ratio
    if frames > target_frames or mel_bins > target_bins:
        raise InputError(
            f"the model takes at most {target_frames} frames of at most {target_bins} mel bins, got {frames} frames "
            f"of {mel_bins} bins; split longer audio into windows (see htsat_hf's sound-event-detection tools)"
        )
    image = stretch_spectrogram(features, target_frames, target_bins).unsqueeze(1)
    image = image.transpose(2, 3).reshape(batch, 1, target_bins, freq_ratio, spec_size)
    return image.transpose(2, 3).reshape(batch, 1, spec_size, spec_size)


def stretch_spectrogram(features: torch.Tensor, frames: int, mel_bins: int) -> torch.Tensor:
    """`(batch, f, b)` to `(batch, frames, mel_bins)` by bicubic interpolation with `align_corners=True` (the
    original's `reshape_wav2img`); returned as it is when already that size.

    The model stretches its (normalised) input this way. Stretching time alone first reaches the same image up to
    float rounding: the per-mel-bin affine `feature_norm` commutes with a time stretch (its weights sum to 1), and
    the bicubic stretch is separable, so the model's own stretch then only moves the bins where it must. The
    inference engine stretches every window's time axis in its decoding workers, so that windows of any length share
    a batch.
    """
    if tuple(features.shape[1:]) == (frames, mel_bins):
        return features
    return F.interpolate(features.unsqueeze(1), size=(frames, mel_bins), mode="bicubic", align_corners=True)[:, 0]


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
    """`(batch, 1, spec_size, spec_size)` image to `(batch, (spec_size // patch_size)**2, embed_dim)` tokens: a
    convolution whose stride equals its kernel (the original's, and its weights), row-major tokens, LayerNorm."""

    def __init__(self, config: HTSATConfig):
        super().__init__()
        self.projection = nn.Conv2d(1, config.embed_dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    @fast_forward(patch_embedding_forward, part="patch_matmul")
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.norm(self.projection(image.to(self.projection.weight.dtype)).flatten(2).transpose(1, 2))


class HTSATWindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias per head."""

    def __init__(self, config: HTSATConfig, dim: int, num_heads: int, window_size: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window_size = window_size
        self.qkv = nn.Linear(dim, dim * 3, bias=config.qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)

    def attention_mask(self, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """Relative position bias, plus the shift mask when given, as an additive attention mask.

        Args:
            shift_mask: `(num_windows, N, N)` with `N = window_size**2`, or `None`.

        Returns:
            `(1, heads, N, N)` without a shift mask. With one, `(1, num_windows * heads, N, N)`: the attention then
            runs on `(batch, num_windows * heads, N, head_dim)` (the windows of an image are consecutive in the
            batch), so that the mask broadcasts over images without a copy per image.
        """
        tokens = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(tokens, tokens, self.num_heads).permute(2, 0, 1)  # (heads, N, N)
        if shift_mask is None:
            return bias.unsqueeze(0)
        return (shift_mask.unsqueeze(1) + bias.unsqueeze(0)).flatten(0, 1).unsqueeze(0)

    @fast_forward(window_attention_forward)
    def forward(
        self, windows: torch.Tensor, shift_mask: torch.Tensor | None = None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            windows: `(batch * num_windows, N, dim)` with `N = window_size**2`, the windows of each image consecutive.
            shift_mask: `(num_windows, N, N)` for shifted blocks, else `None`.

        Returns:
            `(batch * num_windows, N, dim)` and, with `output_attentions`, the `(batch * num_windows, heads, N, N)`
            attention probabilities.
        """
        batch_windows, tokens, dim = windows.shape
        qkv = self.qkv(windows).view(batch_windows, tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch * num_windows, heads, N, head_dim)
        # In the scores' dtype: a float32 mask would promote bf16 scores, softmax and all, back to float32.
        mask = self.attention_mask(shift_mask).to(query.dtype)
        groups = mask.shape[1]  # heads, or windows of an image times heads (see `attention_mask`)
        query, key, value = (x.reshape(-1, groups, tokens, self.head_dim) for x in (query, key, value))

        dropout = self.config.attention_dropout if self.training else 0.0
        weights = None
        if self.config._attn_implementation == "sdpa" and not output_attentions:
            context = F.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, dropout_p=dropout, scale=self.scale
            )
        else:
            scores = torch.matmul(query * self.scale, key.transpose(-2, -1)) + mask
            weights = scores.softmax(dim=-1)
            context = torch.matmul(F.dropout(weights, p=dropout, training=self.training), value)
            weights = weights.reshape(batch_windows, self.num_heads, tokens, tokens)
        context = context.reshape(batch_windows, self.num_heads, tokens, self.head_dim).transpose(1, 2)
        output = self.proj_dropout(self.proj(context.reshape(batch_windows, tokens, dim)))
        return output, (weights if output_attentions else None)


class HTSATMLP(nn.Module):
    def __init__(self, config: HTSATConfig, dim: int):
        super().__init__()
        hidden = int(dim * config.mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    @fast_forward(mlp_forward, part="onednn_linear")
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.act(self.fc1(hidden_states)))
        return self.dropout(self.fc2(hidden))


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
        buffers = self.make_buffers()
        for name in ("shift_mask", "token_order", "token_order_inverse"):
            self.register_buffer(name, buffers[name], persistent=False)

    def make_buffers(self) -> dict[str, torch.Tensor | None]:
        """The block's constant tensors, recomputed rather than stored in checkpoints: the shift mask (shifted blocks
        only) and, for the CPU fast path's token gather, the order of the tokens in the shifted windows and its
        inverse (`None` for a single unshifted window, where the window order is the identity)."""
        height, width = self.input_resolution
        reorders = self.shift_size > 0 or self.window_size < max(height, width)
        order = shifted_window_order(height, width, self.window_size, self.shift_size) if reorders else None
        return {
            "shift_mask": shifted_window_attention_mask(height, width, self.window_size, self.shift_size)
            if self.shift_size
            else None,
            "token_order": order,
            "token_order_inverse": None if order is None else torch.argsort(order),
        }

    @fast_forward(swin_block_forward, part="window_gather")
    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(batch, H * W, dim)` to `(batch, H * W, dim)`, plus attention probabilities on request."""
        height, width = self.input_resolution
        batch, _, dim = hidden_states.shape
        shift = self.shift_size
        image = self.layernorm_before(hidden_states).view(batch, height, width, dim)
        if shift:
            image = torch.roll(image, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(image, self.window_size)
        windows, attentions = self.attention(windows, self.shift_mask, output_attentions)
        image = window_reverse(windows, self.window_size, height, width)
        if shift:
            image = torch.roll(image, shifts=(shift, shift), dims=(1, 2))
        hidden_states = hidden_states + self.drop_path(image.reshape(batch, height * width, dim))
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

    def merge_neighbours(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(batch, H * W, C)` to `(batch, H * W / 4, 4C)`: each 2x2 neighbourhood's tokens concatenated."""
        height, width = self.input_resolution
        batch, _, channels = hidden_states.shape
        grid = hidden_states.view(batch, height // 2, 2, width // 2, 2, channels)
        # (row half, row parity, col half, col parity) -> neighbours ordered with the row parity varying fastest
        return grid.permute(0, 1, 3, 4, 2, 5).reshape(batch, (height // 2) * (width // 2), 4 * channels)

    @fast_forward(patch_merging_forward, part="onednn_linear")
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(batch, H * W, C)` to `(batch, H * W / 4, 2C)`."""
        return self.reduction(self.norm(self.merge_neighbours(hidden_states)))


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

    @fast_forward(chunked_stage_forward)
    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """`(batch, H * W, dim)` to `(batch, H * W / 4, 2 * dim)` (unchanged in the last stage), and each block's
        attention probabilities when `output_attentions` (else an empty tuple)."""
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
    # Loaded in bfloat16 or float16 (`torch_dtype`), the 64-bin feature normalisation stays in float32: rounding the
    # log-mels and their statistics cost 3e-3 of clip probability on the reference vectors.
    _keep_in_fp32_modules_strict = ["feature_norm"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    # Trainer passes `num_items_in_batch` only to models that take loss kwargs; ours average their own losses.
    accepts_loss_kwargs = False

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model computes in: its weights' but the feature normalisation's, which loading keeps in
        float32 (`_keep_in_fp32_modules_strict`); transformers' own would read that first parameter."""
        weights = (p for name, p in self.named_parameters() if p.is_floating_point() and "feature_norm" not in name)
        return next(weights).dtype

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
                `config.max_frames` (1024) frames; shorter inputs are stretched to that length. Any float dtype; it is
                cast to the feature normalisation's, which a model loaded with `torch_dtype=torch.bfloat16` keeps in
                float32: give such a model the extractor's float32 features, not bf16 ones, whose rounded log-mel
                moves its frame probabilities further from fp32 (5.2e-3 against 4.3e-3 on the full-size model).
            mixup_lambda: `(batch,)` mixup weights, used in training only: the normalised (and SpecAugmented)
                features are mixed with the reversed batch, see [`mixup`]. Targets are the caller's to mix.
            output_hidden_states: also return the tokens after the patch embedding and after each stage.
            output_attentions: also return each block's `(batch * windows, heads, N, N)` attention probabilities.

        Returns:
            [`BaseModelOutputWithPooling`] with `last_hidden_state` `(batch, 64, hidden_size)` (the final 8x8 token
            grid, row-major, after the last LayerNorm) and `pooler_output` `(batch, hidden_size)` (their mean).

        Raises:
            InputError: `input_features` that are not a floating-point tensor of shape `(batch, frames, mel_bins)`,
                or more frames than `config.max_frames`.
        """
        config = self.config
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        return_dict = config.return_dict if return_dict is None else return_dict
        if not isinstance(input_features, torch.Tensor) or not input_features.is_floating_point():
            kind = input_features.dtype if isinstance(input_features, torch.Tensor) else type(input_features).__name__
            raise InputError(
                f"input_features must be a floating-point torch tensor of log-mel features, got {kind}; compute "
                "them with HTSATFeatureExtractor(..., return_tensors='pt')"
            )
        if input_features.ndim != 3 or input_features.shape[-1] != config.num_mel_bins:
            raise InputError(
                f"input_features must be (batch, frames, {config.num_mel_bins}) log-mel features, got shape "
                f"{tuple(input_features.shape)}; compute them with HTSATFeatureExtractor"
            )
        # Features in another float dtype (float64 from numpy, half) are read in the model's own.
        input_features = input_features.to(self.feature_norm.weight.dtype)

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
    "spec_augment",
    "tokens_to_time_grid",
    "window_partition",
    "window_reverse",
]
