"""The fast inference path against the straightforward formulation, and the benchmark script's smoke run."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, tiny_config

from htsat_hf import HTSATForAudioClassification
from htsat_hf.modeling_htsat import (
    HTSATSwinBlock,
    shifted_window_order,
    window_partition,
    window_reverse,
)


@pytest.mark.parametrize("height,window,shift", [(16, 8, 4), (8, 4, 2), (16, 8, 0)])
def test_shifted_window_order_is_roll_then_partition(height, window, shift):
    grid = torch.randn(2, height, height, 3)
    expected = window_partition(torch.roll(grid, (-shift, -shift), (1, 2)), window)
    order = shifted_window_order(height, height, window, shift)
    gathered = grid.view(2, height * height, 3)[:, order].view(-1, window * window, 3)
    assert torch.equal(gathered, expected)
    restored = gathered.view(2, height * height, 3)[:, torch.argsort(order)]
    assert torch.equal(restored.view(2, height, height, 3), grid)


def _reference_block_forward(block: HTSATSwinBlock, hidden_states: torch.Tensor) -> torch.Tensor:
    """The block written the plain way (roll, partition, attention, reverse, roll back), as the original."""
    height, width = block.input_resolution
    batch, _, dim = hidden_states.shape
    image = block.layernorm_before(hidden_states).view(batch, height, width, dim)
    if block.shift_size:
        image = torch.roll(image, (-block.shift_size, -block.shift_size), (1, 2))
    windows, _ = block.attention(window_partition(image, block.window_size), block.shift_mask)
    image = window_reverse(windows, block.window_size, height, width)
    if block.shift_size:
        image = torch.roll(image, (block.shift_size, block.shift_size), (1, 2))
    hidden_states = hidden_states + image.reshape(batch, height * width, dim)
    return hidden_states + block.mlp(block.layernorm_after(hidden_states))


def test_fast_blocks_match_plain_formulation():
    model = HTSATForAudioClassification(tiny_config()).eval()
    for stage in model.htsat.encoder.stages:
        for block in stage.blocks:
            side = block.input_resolution[0]
            tokens = torch.randn(2, side * side, block.layernorm_before.normalized_shape[0])
            with torch.no_grad():
                fast, _ = block(tokens)
                plain = _reference_block_forward(block, tokens)
            assert (fast - plain).abs().max() < 1e-5


def test_cached_attention_bias_follows_parameter_updates():
    model = HTSATForAudioClassification(tiny_config()).eval()
    features = torch.randn(2, 1001, 64) * 10 - 40
    with torch.no_grad():
        first = model(features).logits
        again = model(features).logits
    assert torch.equal(first, again)
    table = model.htsat.encoder.stages[0].blocks[1].attention.relative_position_bias_table
    with torch.no_grad():
        table.add_(torch.randn_like(table))  # an optimizer-style in-place update
        updated = model(features).logits
    fresh = HTSATForAudioClassification(model.config).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = fresh(features).logits
    assert not torch.allclose(first, updated)
    assert (updated - expected).abs().max() < 1e-6


def test_bf16_autocast_close_to_fp32():
    model = HTSATForAudioClassification(tiny_config(num_labels=10)).eval()
    features = torch.randn(3, 1001, 64) * 10 - 40
    with torch.no_grad():
        reference = model(features).logits.sigmoid()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reduced = model(features).logits.float().sigmoid()
    assert (reduced - reference).abs().max() < 5e-3


def test_benchmark_script_runs_on_tiny_configs(tmp_path):
    output = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "benchmark.py"), "--tiny", "--batch-sizes", "1", "2",
         "--precisions", "fp32", "bf16", "--repeats", "1", "--warmup", "0", "--train-step", "--json", str(output)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(output.read_text())["rows"]
    seen = {(r["model"], r["stage"], r["precision"], r["batch_size"]) for r in rows}
    for model in ("htsat", "clap", "ast"):
        assert (model, "e2e", "fp32", 2) in seen
    assert ("htsat", "train_step", "fp32", 2) in seen
    assert all(r["clips_per_s"] > 0 for r in rows)
    assert "vs CLAP e2e fp32" in result.stdout
