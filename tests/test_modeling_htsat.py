"""The reference model of modeling_htsat.py: a model tester on a tiny configuration (output shapes and heads of every
class, save/load), the Swin block against its formulation written out (roll, window partition, attention, window
reverse, roll back, MLP), the pure helpers each against a direct loop- or index-based reimplementation, the
architecture's parameter counts, the clip/frame relation of the heads and HTSATConfig's validation.

Every test here runs the reference forwards: the CPU fast path is switched off (tests/test_cpu_fast_path_htsat.py
compares it with them)."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from htsat_hf import HTSATConfig, HTSATForAudioClassification, HTSATForSoundEventDetection, HTSATModel
from htsat_hf.cpu_fast_path_htsat import cpu_fast_path
from htsat_hf.errors import InputError
from htsat_hf.modeling_htsat import (
    HTSATPatchMerging,
    HTSATSwinBlock,
    HTSATWindowAttention,
    fold_spectrogram_to_image,
    mixup,
    relative_position_index,
    shifted_window_attention_mask,
    spec_augment,
    tokens_to_time_grid,
    window_partition,
    window_reverse,
)

from conftest import tiny_config


@pytest.fixture(autouse=True)
def _reference_forwards():
    with cpu_fast_path(False):
        yield


# ----------------------------------------------------------------------------------------------------------------
# Model tester: every class on a tiny configuration
# ----------------------------------------------------------------------------------------------------------------


class HTSATModelTester:
    """A tiny configuration, inputs for it, and the output shapes each model class must give, as transformers' model
    testers do. The tiny model keeps every code path of the full one: four stages (64x64, 32x32, 16x16, 8x8 tokens),
    shifted windows, patch merging, the last stage as one unshifted window."""

    batch_size = 2
    frames = 1001  # a 10 s clip: stretched to the model's 1024 frames
    num_labels = 5

    def prepare_config_and_inputs(self, **overrides):
        config = tiny_config(num_labels=self.num_labels, **overrides)
        features = torch.randn(self.batch_size, self.frames, config.num_mel_bins) * 10 - 40
        return config, features

    def stage_sides(self, config):
        grid = config.spec_size // config.patch_size
        return [grid // 2**stage for stage in range(len(config.depths))]

    def check_backbone_outputs(self, config, outputs):
        sides, batch = self.stage_sides(config), self.batch_size
        assert outputs.last_hidden_state.shape == (batch, sides[-1] ** 2, config.hidden_size)
        assert outputs.pooler_output.shape == (batch, config.hidden_size)
        # After the patch embedding, then after each stage (patch merging halves the grid and doubles the channels).
        expected = [(batch, sides[0] ** 2, config.embed_dim)]
        expected += [(batch, sides[min(s + 1, len(sides) - 1)] ** 2, config.embed_dim * 2 ** min(s + 1, len(sides) - 1))
                     for s in range(len(sides))]
        assert [tuple(h.shape) for h in outputs.hidden_states] == expected
        expected = []
        for stage, side in enumerate(sides):
            window = min(config.window_size, side)
            windows = (side // window) ** 2
            expected += [(batch * windows, config.num_heads[stage], window**2, window**2)] * config.depths[stage]
        assert [tuple(a.shape) for a in outputs.attentions] == expected


tester = HTSATModelTester()


def test_backbone_outputs():
    config, features = tester.prepare_config_and_inputs()
    model = HTSATModel(config).eval()
    with torch.no_grad():
        outputs = model(features, output_hidden_states=True, output_attentions=True)
        plain = model(features)
    tester.check_backbone_outputs(config, outputs)
    assert plain.hidden_states is None and plain.attentions is None
    # output_attentions computes the probabilities (matmuls), the plain call runs SDPA: rounding apart.
    torch.testing.assert_close(plain.last_hidden_state, outputs.last_hidden_state, rtol=0, atol=1e-5)
    for probabilities in outputs.attentions:
        torch.testing.assert_close(probabilities.sum(-1), torch.ones(probabilities.shape[:-1]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_class", [HTSATForAudioClassification, HTSATForSoundEventDetection])
def test_head_outputs(model_class):
    config, features = tester.prepare_config_and_inputs()
    model = model_class(config).eval()
    detector = model_class is HTSATForSoundEventDetection
    labels = torch.rand(tester.batch_size, config.num_time_steps, tester.num_labels) if detector else (
        torch.rand(tester.batch_size, tester.num_labels).round())
    with torch.no_grad():
        outputs = model(features, labels=labels, output_hidden_states=True, output_attentions=True)
    clip_logits = outputs.clip_logits if detector else outputs.logits
    assert clip_logits.shape == (tester.batch_size, tester.num_labels)
    if detector:
        assert outputs.logits.shape == (tester.batch_size, config.num_time_steps, tester.num_labels)
    assert outputs.loss.ndim == 0 and outputs.loss > 0
    assert len(outputs.hidden_states) == len(config.depths) + 1 and len(outputs.attentions) == sum(config.depths)


def test_attention_heads_and_windows_per_stage():
    config, _ = tester.prepare_config_and_inputs(num_heads=[2, 2, 4, 8])
    model = HTSATModel(config)
    for stage, (side, heads) in enumerate(zip(tester.stage_sides(config), config.num_heads)):
        for index, block in enumerate(model.encoder.stages[stage].blocks):
            attention = block.attention
            assert attention.num_heads == heads
            assert attention.num_heads * attention.head_dim == config.embed_dim * 2**stage
            assert block.window_size == min(config.window_size, side)
            assert block.shift_size == (config.window_size // 2 if index % 2 and side > config.window_size else 0)
            assert attention.relative_position_bias_table.shape == ((2 * block.window_size - 1) ** 2, heads)


def test_save_and_load_round_trip(tmp_path):
    config, features = tester.prepare_config_and_inputs()
    model = HTSATForSoundEventDetection(config).eval()
    model.save_pretrained(tmp_path)
    loaded = HTSATForSoundEventDetection.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected, actual = model(features), loaded(features)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(actual.clip_logits, expected.clip_logits, rtol=0, atol=0)
    # Non-persistent buffers are recomputed by _init_weights (from_pretrained builds on the meta device).
    for (name, buffer), (_, fresh) in zip(loaded.named_buffers(), model.named_buffers()):
        assert torch.equal(buffer, fresh), name


def test_checkpoint_keys_and_buffers():
    """Checkpoints of this package and the original-checkpoint converter rely on these names."""
    model = HTSATForSoundEventDetection(tiny_config())
    block = "htsat.encoder.stages.0.blocks.1."
    keys = model.state_dict().keys()
    assert sorted(k[len(block):] for k in keys if k.startswith(block)) == [
        "attention.proj.bias", "attention.proj.weight", "attention.qkv.bias", "attention.qkv.weight",
        "attention.relative_position_bias_table", "layernorm_after.bias", "layernorm_after.weight",
        "layernorm_before.bias", "layernorm_before.weight", "mlp.fc1.bias", "mlp.fc1.weight", "mlp.fc2.bias",
        "mlp.fc2.weight",
    ]
    assert {k for k in keys if "blocks" not in k} == {
        "head.conv.bias", "head.conv.weight", "htsat.encoder.stages.0.downsample.norm.bias",
        "htsat.encoder.stages.0.downsample.norm.weight", "htsat.encoder.stages.0.downsample.reduction.weight",
        "htsat.encoder.stages.1.downsample.norm.bias", "htsat.encoder.stages.1.downsample.norm.weight",
        "htsat.encoder.stages.1.downsample.reduction.weight", "htsat.encoder.stages.2.downsample.norm.bias",
        "htsat.encoder.stages.2.downsample.norm.weight", "htsat.encoder.stages.2.downsample.reduction.weight",
        "htsat.feature_norm.bias", "htsat.feature_norm.num_batches_tracked", "htsat.feature_norm.running_mean",
        "htsat.feature_norm.running_var", "htsat.feature_norm.weight", "htsat.layernorm.bias",
        "htsat.layernorm.weight", "htsat.patch_embed.norm.bias", "htsat.patch_embed.norm.weight",
        "htsat.patch_embed.projection.bias", "htsat.patch_embed.projection.weight",
    }
    assert len(keys) == 126
    buffers = {name for name, _ in model.named_buffers()} - set(keys)  # the non-persistent ones
    assert {name[len(block):] for name in buffers if name.startswith(block)} == {
        "attention.relative_position_index", "shift_mask", "token_order", "token_order_inverse"
    }
    last = "htsat.encoder.stages.3.blocks.0."  # one unshifted window: no mask, no token reordering
    assert {name[len(last):] for name in buffers if name.startswith(last)} == {"attention.relative_position_index"}
    # An index per block; mask and both orders in each shifted block; both orders in the other multi-window blocks.
    assert len(buffers) == 8 + 3 * 3 + 3 * 2


# ----------------------------------------------------------------------------------------------------------------
# Windows
# ----------------------------------------------------------------------------------------------------------------


def loop_window_partition(x, ws):
    batch, height, width, channels = x.shape
    windows = []
    for b in range(batch):
        for wi in range(height // ws):
            for wj in range(width // ws):
                tokens = []
                for r in range(ws):
                    for c in range(ws):
                        tokens.append(x[b, wi * ws + r, wj * ws + c])
                windows.append(torch.stack(tokens))
    return torch.stack(windows)


@pytest.mark.parametrize("height,width,ws", [(16, 16, 8), (16, 24, 8), (8, 8, 8), (12, 6, 2)])
def test_window_partition_order(height, width, ws):
    x = torch.randn(2, height, width, 3)
    windows = window_partition(x, ws)
    assert windows.shape == (2 * (height // ws) * (width // ws), ws * ws, 3)
    torch.testing.assert_close(windows, loop_window_partition(x, ws), rtol=0, atol=0)


@pytest.mark.parametrize("height,width,ws", [(16, 16, 8), (16, 24, 8), (12, 6, 2)])
def test_window_reverse_is_the_inverse(height, width, ws):
    x = torch.randn(3, height, width, 5)
    windows = window_partition(x, ws)
    torch.testing.assert_close(window_reverse(windows, ws, height, width), x, rtol=0, atol=0)
    other = torch.randn_like(windows)
    torch.testing.assert_close(window_partition(window_reverse(other, ws, height, width), ws), other, rtol=0, atol=0)
    # Token k of window w goes back to (row, col) = (window row * ws + k // ws, window col * ws + k % ws).
    marked = torch.arange(windows.numel() // 5, dtype=torch.float32).view(windows.shape[0], ws * ws, 1)
    image = window_reverse(marked.expand(-1, -1, 5).contiguous(), ws, height, width)
    per_image = (height // ws) * (width // ws)
    for b, r, c in [(0, 0, 0), (1, ws - 1, 1), (2, height - 1, width - 1), (0, ws, ws + 1)]:
        w = b * per_image + (r // ws) * (width // ws) + c // ws
        k = (r % ws) * ws + c % ws
        assert image[b, r, c, 0] == marked[w, k, 0]


# ----------------------------------------------------------------------------------------------------------------
# Relative position index
# ----------------------------------------------------------------------------------------------------------------


def loop_relative_position_index(ws):
    n = ws * ws
    index = torch.empty(n, n, dtype=torch.long)
    for i in range(n):
        yi, xi = divmod(i, ws)
        for j in range(n):
            yj, xj = divmod(j, ws)
            index[i, j] = (yi - yj + ws - 1) * (2 * ws - 1) + (xi - xj + ws - 1)
    return index


@pytest.mark.parametrize("ws", [2, 8])
def test_relative_position_index(ws):
    index = relative_position_index(ws)
    n, rows = ws * ws, (2 * ws - 1) ** 2
    assert index.shape == (n, n)
    assert not index.is_floating_point()
    assert index.min() >= 0 and index.max() < rows
    assert index.min() == 0 and index.max() == rows - 1
    torch.testing.assert_close(index, loop_relative_position_index(ws), rtol=0, atol=0)
    centre = (rows - 1) // 2  # zero offset
    assert (index.diagonal() == centre).all()
    assert index[0, 0] == centre
    assert index[0, n - 1] == 0  # query at the top-left, key at the bottom-right: offset (-(ws-1), -(ws-1))
    assert index[n - 1, 0] == rows - 1  # offset (ws-1, ws-1)
    assert index[0, ws - 1] == (ws - 1) * (2 * ws - 1)  # offset (0, -(ws-1))
    assert index[ws - 1, 0] == (ws - 1) * (2 * ws - 1) + 2 * ws - 2  # offset (0, ws-1)
    # Equal offsets share a table row: index(i, j) depends only on (pos_i - pos_j).
    assert (index + index.T == 2 * centre).all()


def test_relative_position_index_window2_values():
    expected = torch.tensor(
        [
            [4, 3, 1, 0],
            [5, 4, 2, 1],
            [7, 6, 4, 3],
            [8, 7, 5, 4],
        ]
    )
    torch.testing.assert_close(relative_position_index(2), expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# Shifted-window attention mask
# ----------------------------------------------------------------------------------------------------------------


def loop_shift_mask(height, width, ws, shift):
    def band(position, size):
        if position < size - ws:
            return 0
        if position < size - shift:
            return 1
        return 2

    region = [[band(r, height) * 3 + band(c, width) for c in range(width)] for r in range(height)]
    masks = []
    for wi in range(height // ws):
        for wj in range(width // ws):
            labels = [region[wi * ws + k // ws][wj * ws + k % ws] for k in range(ws * ws)]
            mask = torch.zeros(ws * ws, ws * ws)
            for a, b in itertools.product(range(ws * ws), repeat=2):
                if labels[a] != labels[b]:
                    mask[a, b] = -100.0
            masks.append(mask)
    return torch.stack(masks)


@pytest.mark.parametrize("height,width,ws,shift", [(16, 16, 8, 4), (32, 32, 8, 4), (8, 12, 4, 2)])
def test_shifted_window_attention_mask(height, width, ws, shift):
    mask = shifted_window_attention_mask(height, width, ws, shift)
    windows_h, windows_w = height // ws, width // ws
    assert mask.shape == (windows_h * windows_w, ws * ws, ws * ws)
    values = set(mask.unique().tolist())
    assert values == {0.0, -100.0}
    torch.testing.assert_close(mask, loop_shift_mask(height, width, ws, shift), rtol=0, atol=0)
    # Symmetric, zero on the diagonal.
    torch.testing.assert_close(mask, mask.transpose(1, 2), rtol=0, atol=0)
    assert (mask.diagonal(dim1=1, dim2=2) == 0).all()
    # Windows away from the last window row and column hold contiguous tokens: no masking at all.
    grid = mask.view(windows_h, windows_w, ws * ws, ws * ws)
    assert (grid[:-1, :-1] == 0).all()
    assert (grid[-1, :] != 0).any(dim=(1, 2)).all() and (grid[:, -1] != 0).any(dim=(1, 2)).all()
    # The bottom-right window mixes four regions: each token may attend to exactly shift*shift, ...
    corner = grid[-1, -1]
    allowed = (corner == 0).sum(dim=1)
    assert set(allowed.tolist()) == {shift * shift, (ws - shift) * shift, (ws - shift) ** 2}


# ----------------------------------------------------------------------------------------------------------------
# Folding the spectrogram into the image
# ----------------------------------------------------------------------------------------------------------------


def loop_fold(features, spec_size, freq_ratio):
    batch, frames, bins = features.shape
    image = torch.empty(batch, 1, spec_size, spec_size, dtype=features.dtype)
    for chunk in range(freq_ratio):
        for m in range(bins):
            image[:, 0, chunk * bins + m, :] = features[:, chunk * spec_size : (chunk + 1) * spec_size, m]
    return image


def test_fold_1024_frames_places_chunks_along_frequency():
    batch, frames, bins = 2, 1024, 64
    b = torch.arange(batch).view(-1, 1, 1)
    t = torch.arange(frames).view(1, -1, 1)
    m = torch.arange(bins).view(1, 1, -1)
    features = (b * 100000 + t * 64 + m).float()  # every value distinct and exact in float32
    image = fold_spectrogram_to_image(features, 256, 4)
    assert image.shape == (2, 1, 256, 256)
    torch.testing.assert_close(image, loop_fold(features, 256, 4), rtol=0, atol=0)
    for bb, chunk, mel, frame in [(0, 0, 0, 0), (1, 3, 63, 255), (0, 2, 17, 100), (1, 1, 5, 7)]:
        assert image[bb, 0, chunk * 64 + mel, frame] == bb * 100000 + (chunk * 256 + frame) * 64 + mel


@pytest.mark.parametrize("frames", [1001, 401, 101])
def test_fold_stretches_shorter_input_bicubically(frames):
    features = torch.randn(2, frames, 64)
    image = fold_spectrogram_to_image(features, 256, 4)
    stretched = F.interpolate(features[:, None], size=(1024, 64), mode="bicubic", align_corners=True)[:, 0]
    torch.testing.assert_close(image, loop_fold(stretched, 256, 4), rtol=1e-6, atol=1e-6)
    # align_corners=True keeps the first and last frames exactly where they were.
    torch.testing.assert_close(image[:, 0, :64, 0], features[:, 0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(image[:, 0, 192:, 255], features[:, -1], rtol=1e-6, atol=1e-6)
    # Never padded: the end of the image holds signal, not a constant.
    assert image[:, 0, 192:, 200:].std() > 0.1


def test_fold_refuses_too_many_frames_or_bins():
    with pytest.raises(InputError, match="1024 frames"):
        fold_spectrogram_to_image(torch.randn(1, 1025, 64), 256, 4)
    with pytest.raises(InputError, match="64"):
        fold_spectrogram_to_image(torch.randn(1, 1000, 65), 256, 4)


def test_the_model_refuses_more_frames_than_it_reads_in_one_line():
    """As its docstring says: an `InputError` (one line), not a `ValueError` from deep inside the forward."""
    model = HTSATForAudioClassification(tiny_config(num_mel_bins=100)).eval()  # reads 512 frames
    with torch.no_grad(), pytest.raises(InputError, match="at most 512 frames") as caught:
        model(torch.randn(1, 1001, 100))
    assert "\n" not in str(caught.value)


# ----------------------------------------------------------------------------------------------------------------
# Token grid to time steps
# ----------------------------------------------------------------------------------------------------------------


def loop_tokens_to_time_grid(tokens, freq_ratio):
    batch, n, channels = tokens.shape
    side = int(round(n**0.5))
    rows = side // freq_ratio
    out = torch.empty(batch, channels, rows, freq_ratio * side)
    for r in range(side):
        chunk, row = divmod(r, rows)
        for c in range(side):
            out[:, :, row, chunk * side + c] = tokens[:, r * side + c, :]
    return out


@pytest.mark.parametrize("side,freq_ratio", [(8, 4), (8, 2), (4, 4)])
def test_tokens_to_time_grid_matches_loop(side, freq_ratio):
    tokens = torch.randn(2, side * side, 3)
    grid = tokens_to_time_grid(tokens, freq_ratio)
    assert grid.shape == (2, 3, side // freq_ratio, freq_ratio * side)
    torch.testing.assert_close(grid, loop_tokens_to_time_grid(tokens, freq_ratio), rtol=0, atol=0)


def test_tokens_to_time_grid_is_chronological():
    """Fold a spectrogram whose value is its frame index, pool the image to the final 8x8 token grid the way the
    backbone's 32x32 receptive fields see it, regroup: the time steps must come out in increasing frame order."""
    frames = torch.arange(1024, dtype=torch.float32).view(1, 1024, 1).expand(1, 1024, 64).contiguous()
    image = fold_spectrogram_to_image(frames, 256, 4)
    tokens = F.avg_pool2d(image, 32).flatten(2).transpose(1, 2)  # (1, 64 tokens row-major, 1 channel)
    grid = tokens_to_time_grid(tokens, 4)  # (1, 1, 2, 32)
    expected = torch.arange(32, dtype=torch.float32) * 32 + 15.5  # mean frame index of each 32-frame step
    torch.testing.assert_close(grid[0, 0, 0], expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(grid[0, 0, 1], expected, rtol=0, atol=1e-4)
    # The same with mel bins: the two rows of each step are the low and the high half of the mel axis.
    mels = torch.arange(64, dtype=torch.float32).view(1, 1, 64).expand(1, 1024, 64).contiguous()
    grid = tokens_to_time_grid(F.avg_pool2d(fold_spectrogram_to_image(mels, 256, 4), 32).flatten(2).transpose(1, 2), 4)
    assert torch.allclose(grid[0, 0, 0], torch.full((32,), 15.5)) and torch.allclose(grid[0, 0, 1], torch.full((32,), 47.5))


# ----------------------------------------------------------------------------------------------------------------
# SpecAugment
# ----------------------------------------------------------------------------------------------------------------


def runs(flags):
    """Lengths of the runs of True in a 1-D bool tensor."""
    lengths, current = [], 0
    for flag in flags.tolist() + [False]:
        if flag:
            current += 1
        elif current:
            lengths.append(current)
            current = 0
    return lengths


def test_spec_augment_zeroes_only_stripes():
    torch.manual_seed(1)
    features = torch.rand(64, 300, 64) + 1.0  # never zero
    out = spec_augment(features, 2, 64, 2, 8)
    zero = out == 0
    # Kept values are untouched; removed values are exactly zero.
    torch.testing.assert_close(out[~zero], features[~zero], rtol=0, atol=0)
    total_time, total_freq = 0, 0
    for b in range(features.shape[0]):
        time_zero = zero[b].all(dim=1)
        freq_zero = zero[b].all(dim=0)
        # Every zero belongs to a full time stripe or a full frequency stripe.
        assert torch.equal(zero[b], time_zero[:, None] | freq_zero[None, :])
        time_runs, freq_runs = runs(time_zero), runs(freq_zero)
        assert len(time_runs) <= 2 and len(freq_runs) <= 2
        assert sum(time_runs) <= 2 * 63 and sum(freq_runs) <= 2 * 7
        total_time += sum(time_runs)
        total_freq += sum(freq_runs)
    assert total_time > 0 and total_freq > 0


@pytest.mark.parametrize("axis", ["time", "freq"])
def test_spec_augment_stripe_widths_below_limits(axis):
    torch.manual_seed(2)
    features = torch.rand(400, 200, 64) + 1.0
    width = 20 if axis == "time" else 8
    args = (1, width, 0, 8) if axis == "time" else (0, 64, 1, width)
    zero = spec_augment(features, *args) == 0
    widths = []
    for b in range(features.shape[0]):
        along = zero[b].all(dim=1) if axis == "time" else zero[b].all(dim=0)
        across = zero[b].all(dim=0) if axis == "time" else zero[b].all(dim=1)
        assert not across.any()  # the other axis is untouched
        stripe_runs = runs(along)
        assert len(stripe_runs) <= 1
        widths.append(stripe_runs[0] if stripe_runs else 0)
    assert max(widths) <= width - 1
    assert max(widths) >= width - 3  # widths are drawn up to width - 1 (with 400 draws the top is reached)
    assert min(widths) == 0


def test_spec_augment_without_stripes_is_a_no_op():
    features = torch.randn(3, 100, 64)
    torch.testing.assert_close(spec_augment(features, 0, 64, 0, 8), features, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# Swin blocks against the original formulation (roll, partition, attention with bias and mask, reverse, roll back)
# ----------------------------------------------------------------------------------------------------------------


def loop_window_attention(attention, windows, shift_mask, windows_per_image):
    """Window attention written out from the parameters: per window and head, softmax(q k^T * scale + bias + mask) v,
    then the output projection. Returns the output and the `(windows, heads, N, N)` probabilities."""
    batch_windows, n, dim = windows.shape
    heads, head_dim = attention.num_heads, dim // attention.num_heads
    ws = int(round(n**0.5))
    index = loop_relative_position_index(ws)
    table = attention.relative_position_bias_table
    bias = table[index.reshape(-1)].reshape(n, n, heads).permute(2, 0, 1)  # (heads, N, N)
    qkv = F.linear(windows, attention.qkv.weight, attention.qkv.bias).reshape(batch_windows, n, 3, heads, head_dim)
    out = torch.empty(batch_windows, n, dim)
    probabilities = torch.empty(batch_windows, heads, n, n)
    for w in range(batch_windows):
        for h in range(heads):
            q, k, v = qkv[w, :, 0, h], qkv[w, :, 1, h], qkv[w, :, 2, h]
            scores = (q @ k.T) * head_dim**-0.5 + bias[h]
            if shift_mask is not None:
                scores = scores + shift_mask[w % windows_per_image]
            probabilities[w, h] = scores.softmax(-1)
            out[w, :, h * head_dim : (h + 1) * head_dim] = probabilities[w, h] @ v
    return F.linear(out, attention.proj.weight, attention.proj.bias), probabilities


def explicit_swin_block(block, hidden_states):
    """An HTS-AT Swin block in eval mode written out from its parameters as the original: LayerNorm, cyclic shift
    (roll), window partition, window attention with relative position bias and shift mask, window reverse, roll
    back, residual; LayerNorm, fc1, exact GELU, fc2, residual. Calls none of the block's modules."""
    height, width = block.input_resolution
    batch, _, dim = hidden_states.shape
    ws, shift = block.window_size, block.shift_size

    def layer_norm(norm, x):
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    image = layer_norm(block.layernorm_before, hidden_states).view(batch, height, width, dim)
    if shift:
        image = torch.roll(image, shifts=(-shift, -shift), dims=(1, 2))
    windows = loop_window_partition(image, ws)
    mask = shifted_window_attention_mask(height, width, ws, shift) if shift else None
    windows, _ = loop_window_attention(block.attention, windows, mask, (height // ws) * (width // ws))
    image = window_reverse(windows, ws, height, width)
    if shift:
        image = torch.roll(image, shifts=(shift, shift), dims=(1, 2))
    hidden_states = hidden_states + image.reshape(batch, height * width, dim)
    mlp = block.mlp
    hidden = F.gelu(F.linear(layer_norm(block.layernorm_after, hidden_states), mlp.fc1.weight, mlp.fc1.bias))
    return hidden_states + F.linear(hidden, mlp.fc2.weight, mlp.fc2.bias)


@pytest.mark.parametrize("resolution,shifted", [((16, 16), False), ((16, 16), True), ((8, 8), True), ((16, 24), True)])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_swin_block_matches_the_original_formulation(resolution, shifted, attn_implementation):
    config = tiny_config(window_size=4 if resolution == (16, 24) else 8)
    config._attn_implementation = attn_implementation
    block = HTSATSwinBlock(config, 8, resolution, 2, shifted, 0.0).eval()
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.normal_(0, 0.5)
        x = torch.randn(2, resolution[0] * resolution[1], 8)
        expected = explicit_swin_block(block, x)
        actual, _ = block(x)
    if resolution == (8, 8):  # a grid no larger than the window: one window, no shift
        assert block.shift_size == 0 and block.window_size == 8
    elif shifted:
        assert block.shift_size == block.window_size // 2
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_probabilities_match_the_loop(shifted):
    attention = HTSATWindowAttention(tiny_config(), 8, 2, 4).eval()
    shift_mask = shifted_window_attention_mask(8, 8, 4, 2) if shifted else None
    with torch.no_grad():
        attention.relative_position_bias_table.normal_(0, 0.5)
        windows = torch.randn(2 * 4, 16, 8)  # 2 images of 2x2 windows of 4x4 tokens
        output, probabilities = attention(windows, shift_mask, output_attentions=True)
        expected_output, expected_probabilities = loop_window_attention(attention, windows, shift_mask, 4)
        assert attention(windows, shift_mask)[1] is None  # no probabilities unless asked
    torch.testing.assert_close(output, expected_output, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(probabilities, expected_probabilities, rtol=1e-4, atol=1e-6)


def test_mixup_pairs_each_example_with_the_reversed_batch():
    values = torch.randn(4, 7, 3)
    lam = torch.tensor([0.1, 0.5, 0.9, 1.0])
    mixed = mixup(values, lam)
    for i in range(4):
        torch.testing.assert_close(mixed[i], lam[i] * values[i] + (1 - lam[i]) * values[3 - i])
    torch.testing.assert_close(mixup(values, torch.ones(4)), values, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# Patch merging
# ----------------------------------------------------------------------------------------------------------------


def test_patch_merging_neighbour_order():
    config = tiny_config()
    height, width, channels = 4, 6, 3
    merging = HTSATPatchMerging(config, (height, width), channels)
    x = torch.randn(2, height * width, channels)
    grid = x.view(2, height, width, channels)
    expected = torch.empty(2, (height // 2) * (width // 2), 4 * channels)
    for i in range(height // 2):
        for j in range(width // 2):
            neighbours = [grid[:, 2 * i + dr, 2 * j + dc] for dr, dc in [(0, 0), (1, 0), (0, 1), (1, 1)]]
            expected[:, i * (width // 2) + j] = torch.cat(neighbours, dim=-1)
    with torch.no_grad():
        nn.init.normal_(merging.norm.weight)
        nn.init.normal_(merging.norm.bias)
        out = merging(x)
        reference = merging.reduction(merging.norm(expected))
    assert out.shape == (2, 6, 2 * channels)
    torch.testing.assert_close(out, reference, rtol=1e-6, atol=1e-6)
    assert merging.reduction.bias is None
    # The concatenation on its own (norm and projection removed).
    merging.norm, merging.reduction = nn.Identity(), nn.Identity()
    torch.testing.assert_close(merging(x), expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# Architecture
# ----------------------------------------------------------------------------------------------------------------


def count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_default_parameter_counts():
    with torch.device("meta"):
        model = HTSATForAudioClassification(HTSATConfig())
    assert count(model.htsat) == 27_534_488
    assert count(model.head) == 2_428_943 == 768 * 527 * 2 * 3 + 527
    assert count(model) == 29_963_431
    # The original's 30,241,687 includes its unused Linear(527, 527) head.
    assert count(model) + 527 * 527 + 527 == 30_241_687
    assert tuple(model.head.conv.weight.shape) == (527, 768, 2, 3)
    assert model.head.conv.padding == (0, 1)


def test_default_architecture_shapes():
    config = HTSATConfig()
    assert (config.freq_ratio, config.max_frames, config.num_time_steps, config.hidden_size) == (4, 1024, 32, 768)
    with torch.device("meta"):
        model = HTSATModel(config)
    stages = model.encoder.stages
    assert [len(s.blocks) for s in stages] == [2, 2, 6, 2]
    assert [s.blocks[0].attention.num_heads for s in stages] == [4, 8, 16, 32]
    assert all(s.blocks[0].attention.head_dim == 24 for s in stages)
    shifts = [[b.shift_size for b in s.blocks] for s in stages]
    assert shifts == [[0, 4], [0, 4], [0, 4, 0, 4, 0, 4], [0, 0]]
    assert stages[3].downsample is None
    rates = [b.drop_path.drop_prob for s in stages for b in s.blocks]
    assert rates[0] == 0.0 and abs(rates[-1] - 0.1) < 1e-9 and len(rates) == 12
    assert all(b2 > b1 for b1, b2 in zip(rates, rates[1:]))


@pytest.mark.parametrize("token_semantic", [True, False])
def test_clip_logits_are_the_mean_of_frame_logits(token_semantic):
    config = tiny_config(use_token_semantic_head=token_semantic)
    model = HTSATForSoundEventDetection(config).eval()
    features = torch.randn(2, 1001, 64) * 10 - 40
    with torch.no_grad():
        out = model(features)
        backbone = model.htsat(features)
    assert out.logits.shape == (2, config.num_time_steps, 5) == (2, 32, 5)
    assert out.clip_logits.shape == (2, 5)
    if token_semantic:
        torch.testing.assert_close(out.clip_logits, out.logits.mean(dim=1), rtol=1e-6, atol=1e-6)
        # Not the mean of frame probabilities, nor a max.
        assert not torch.allclose(out.clip_logits.sigmoid(), out.logits.sigmoid().mean(dim=1), atol=1e-7)
        grid = loop_tokens_to_time_grid(backbone.last_hidden_state, 4)
        frames = model.head.conv(grid)[:, :, 0].transpose(1, 2)
        torch.testing.assert_close(out.logits, frames, rtol=1e-5, atol=1e-5)
    else:
        linear = model.head.linear
        torch.testing.assert_close(out.clip_logits, linear(backbone.pooler_output), rtol=1e-5, atol=1e-5)
        time_tokens = loop_tokens_to_time_grid(backbone.last_hidden_state, 4).sum(dim=2).transpose(1, 2)
        torch.testing.assert_close(out.logits, linear(time_tokens), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(backbone.pooler_output, backbone.last_hidden_state.mean(dim=1), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Config validation
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(depths=[2, 2, 2], num_heads=[1, 2, 4, 8]), "one entry per stage"),
        (dict(num_mel_bins=300), "cannot exceed spec_size"),
        (dict(patch_size=3), "divisible by patch_size"),
        (dict(spec_size=200, patch_size=4), "patch-merging"),
        (dict(embed_dim=18, num_heads=[4, 8, 16, 32]), "not divisible by 4 heads"),
        (dict(num_mel_bins=48), "freq_ratio"),
        (dict(f_min=8000.0, f_max=4000.0), "f_min < f_max"),
        (dict(f_min=-1.0), "f_min"),
    ],
)
def test_config_validation_errors(kwargs, match):
    base = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        HTSATConfig(**base)


def test_config_defaults():
    config = HTSATConfig()
    assert config.num_labels == 527
    assert config.problem_type == "multi_label_classification"
    assert (config.sampling_rate, config.hop_length, config.n_fft, config.num_mel_bins) == (32000, 320, 1024, 64)
    assert (config.f_min, config.f_max) == (50.0, 14000.0)
    assert config.depths == [2, 2, 6, 2] and config.num_heads == [4, 8, 16, 32] and config.embed_dim == 96
    labelled = HTSATConfig(id2label={0: "a", 1: "b", 2: "c"})
    assert labelled.num_labels == 3
