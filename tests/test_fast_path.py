"""The fast inference path against the straightforward formulation, and the benchmark script's smoke run."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, tiny_config

from torch import nn
from transformers.activations import GELUActivation

from htsat_hf import HTSATFeatureExtractor, HTSATForAudioClassification
from htsat_hf import feature_extraction_htsat, modeling_htsat
from htsat_hf.modeling_htsat import (
    HTSATPatchEmbeddings,
    HTSATSwinBlock,
    clips_per_cpu_chunk,
    cpu_linear,
    shifted_window_order,
    window_partition,
    window_reverse,
)

requires_onednn = pytest.mark.skipif(
    modeling_htsat._ONEDNN_LINEAR is None, reason="this torch build has no oneDNN fused linear"
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
    report = json.loads(output.read_text())
    rows = report["rows"]
    # Every linear layer counted, although CPU inference runs them as oneDNN ops that FlopCounterMode cannot see.
    from torch.utils.flop_counter import FlopCounterMode

    model = HTSATForAudioClassification(tiny_config(num_labels=527)).eval()
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 1001, 64))
    assert report["gflops"]["htsat"] == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-6)
    gap = report["checks"]["htsat bf16 max clip probability gap, batch 2"]
    assert 0 < gap < 5e-3  # bf16 does change the numbers, within the bound
    seen = {(r["model"], r["stage"], r["precision"], r["batch_size"]) for r in rows}
    for model in ("htsat", "clap", "ast"):
        assert (model, "e2e", "fp32", 2) in seen
    assert ("htsat", "train_step", "fp32", 2) in seen
    assert all(r["clips_per_s"] > 0 for r in rows)
    assert "vs CLAP e2e fp32" in result.stdout


# --------------------------------------------------------------------------------------------------------------------
# CPU inference path: cache-sized chunks, oneDNN fused linear layers, patch embedding as a matmul
# --------------------------------------------------------------------------------------------------------------------


def test_clips_per_cpu_chunk_respects_the_budget(monkeypatch):
    monkeypatch.setattr(modeling_htsat, "CPU_CHUNK_BYTES", 6 * 2**20)
    assert clips_per_cpu_chunk(4096, 384, 4) == 1  # stage 1 of the full model: 6 MiB per clip
    assert clips_per_cpu_chunk(4096, 384, 2) == 2  # the same under bfloat16
    assert clips_per_cpu_chunk(1024, 768, 4) == 2
    assert clips_per_cpu_chunk(64, 3072, 4) == 8
    assert clips_per_cpu_chunk(10**6, 10**3, 4) == 1  # never zero


def _plain_forward(model, features, **kwargs):
    """The model with autograd on, which takes neither chunks nor fused linear layers."""
    with torch.enable_grad():
        return model(features, **kwargs)


@pytest.mark.parametrize("chunk_bytes", [1, 2_200_000])  # tiny config's stage 1: 1 MiB of MLP activation per clip
def test_chunked_cpu_inference_matches_one_pass(monkeypatch, chunk_bytes):
    model = HTSATForAudioClassification(tiny_config()).eval()
    features = torch.randn(5, 1001, 64) * 10 - 40
    monkeypatch.setattr(modeling_htsat, "CPU_CHUNK_BYTES", chunk_bytes)
    calls = []
    block = model.htsat.encoder.stages[0].blocks[0]
    block.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    with torch.no_grad():
        fast = model(features, output_attentions=True, output_hidden_states=True)
    assert calls == ([1] * 5 if chunk_bytes == 1 else [2, 2, 1])  # the chunks the budget asks for
    plain = _plain_forward(model, features, output_attentions=True, output_hidden_states=True)
    assert calls[-1] == 5  # and the plain path takes the batch whole
    assert (fast.logits - plain.logits).abs().max() < 1e-5
    assert len(fast.attentions) == len(plain.attentions) == 8
    for fast_attention, plain_attention in zip(fast.attentions, plain.attentions):
        assert fast_attention.shape == plain_attention.shape
        assert (fast_attention - plain_attention).abs().max() < 1e-5
    for fast_hidden, plain_hidden in zip(fast.hidden_states, plain.hidden_states):
        assert (fast_hidden - plain_hidden).abs().max() < 1e-4


def test_full_size_fast_path_matches_plain_path():
    """The default (AudioSet) architecture: chunked, fused CPU inference against the unfused single pass."""
    from htsat_hf import HTSATConfig

    model = HTSATForAudioClassification(HTSATConfig()).eval()
    features = torch.randn(3, 1001, 64) * 10 - 40
    with torch.no_grad():
        fast = model(features).logits
    plain = _plain_forward(model, features).logits
    assert (fast - plain).abs().max() < 1e-5


@requires_onednn
@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_cpu_linear_fused_matches_plain(gelu, bias):
    layer = nn.Linear(48, 80, bias=bias).eval()
    inputs = torch.randn(3, 70, 48)
    expected = layer(inputs)
    expected = nn.functional.gelu(expected) if gelu else expected
    activation = GELUActivation() if gelu else None
    calls = []
    original = modeling_htsat._ONEDNN_LINEAR
    with torch.no_grad():
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(modeling_htsat, "_ONEDNN_LINEAR", lambda *args: calls.append(args[3]) or original(*args))
            fused = cpu_linear(layer, inputs, activation=activation)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                reduced = cpu_linear(layer, inputs, activation=activation)
            other = cpu_linear(layer, inputs, activation=nn.ReLU())  # not fusable: applied after the fused matmul
    assert calls == ["gelu" if gelu else "none"] * 2 + ["none"]
    assert (other - torch.relu(layer(inputs))).abs().max() < 1e-5
    assert fused.dtype == torch.float32 and (fused - expected).abs().max() < 1e-5
    assert reduced.dtype == torch.bfloat16  # as autocast's own linear layer
    assert (reduced.float() - expected).abs().max() < 0.05 * expected.abs().max()


class _Marked(torch.Tensor):
    """A tensor subclass standing in for quantized weights (torchao and the like keep `nn.Linear` as the module)."""


def test_cpu_linear_falls_back_to_the_layer(monkeypatch):
    """Autograd, training mode, hooks, replaced forwards, tensor-subclass weights and other precisions must see the
    plain layer."""
    layer = nn.Linear(8, 4)
    inputs = torch.randn(2, 8)
    fused_calls = []
    monkeypatch.setattr(modeling_htsat, "_ONEDNN_LINEAR", lambda *args: fused_calls.append(args[0].dtype))
    output = cpu_linear(layer.eval(), inputs)  # autograd on
    output.sum().backward()
    assert layer.weight.grad is not None
    with torch.no_grad():
        cpu_linear(layer.train(), inputs)
        layer.eval()
        hooked = []
        handle = layer.register_forward_hook(lambda *args: hooked.append("own"))
        cpu_linear(layer, inputs)
        handle.remove()
        handle = nn.modules.module.register_module_forward_hook(lambda *args: hooked.append("global"))
        cpu_linear(layer, inputs)
        handle.remove()
        cpu_linear(nn.Identity(), inputs)  # not a Linear at all (a test or an adapter may swap one in)
        with torch.autocast("cpu", dtype=torch.float16):
            cpu_linear(layer, inputs)
        cpu_linear(nn.Linear(8, 4).to(torch.bfloat16).eval(), inputs.to(torch.bfloat16))
        replaced = nn.Linear(8, 4).eval()
        replaced.forward = lambda x: torch.zeros(2, 4)  # as accelerate's hooks do
        assert torch.equal(cpu_linear(replaced, inputs), torch.zeros(2, 4))
        marked = nn.Linear(8, 4).eval()
        marked.weight = nn.Parameter(layer.weight.detach().clone().as_subclass(_Marked))
        cpu_linear(marked, inputs)
    assert fused_calls == [] and hooked == ["own", "global"]
    with torch.inference_mode():
        cpu_linear(layer, inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cpu_linear(layer, inputs)
    assert fused_calls == [torch.float32, torch.bfloat16]


def test_hooks_and_adapters_inside_the_model_still_run():
    """The fast paths must not skip a hook on any module they replace: the MLP's activation, an inner linear layer,
    the patch embedding's convolution."""
    model = HTSATForAudioClassification(tiny_config()).eval()
    block = model.htsat.encoder.stages[1].blocks[0]
    seen = []
    for name, module in [("act", block.mlp.act), ("fc1", block.mlp.fc1), ("qkv", block.attention.qkv),
                         ("projection", model.htsat.patch_embed.projection)]:
        module.register_forward_hook(lambda *args, name=name: seen.append(name))
    features = torch.randn(2, 1001, 64) * 10 - 40
    with torch.inference_mode():
        hooked = model(features).logits
    assert set(seen) == {"act", "fc1", "qkv", "projection"}
    plain = _plain_forward(model, features).logits
    assert (hooked - plain).abs().max() < 1e-5


@requires_onednn
def test_bf16_fused_path_close_to_plain_autocast():
    model = HTSATForAudioClassification(tiny_config(num_labels=10)).eval()
    features = torch.randn(3, 1001, 64) * 10 - 40
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.inference_mode():
            fused = model(features).logits.float().sigmoid()
        plain = _plain_forward(model, features).logits.float().sigmoid()
    assert (fused - plain).abs().max() < 5e-3


def test_patch_embedding_matmul_equals_the_convolution():
    embeddings = HTSATPatchEmbeddings(tiny_config()).eval()
    image = torch.randn(2, 1, 256, 256)
    with torch.no_grad():
        expected = embeddings.norm(embeddings.projection(image).flatten(2).transpose(1, 2))
        assert torch.allclose(embeddings(image), expected, rtol=0, atol=1e-5)
    image.requires_grad_(True)
    embeddings(image).sum().backward()
    assert embeddings.projection.weight.grad is not None and image.grad.shape == image.shape


def test_feature_extractor_chunks_and_ignores_autocast(monkeypatch):
    extractor = HTSATFeatureExtractor()
    waves = (torch.randn(5, 32000 * 3) * 0.1).numpy()
    whole = extractor(waves, sampling_rate=32000, return_tensors="pt")["input_features"]
    monkeypatch.setattr(feature_extraction_htsat, "CPU_CHUNK_BYTES", 1)  # one clip at a time
    chunked = extractor(waves, sampling_rate=32000, return_tensors="pt")["input_features"]
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-4)  # dB; equal with MKL, but BLAS may block rows
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bfloat16 mel matmul would be ~0.1 dB off
        under_autocast = extractor(waves, sampling_rate=32000, return_tensors="pt")["input_features"]
    assert under_autocast.dtype == torch.float32 and torch.equal(whole, under_autocast)


def test_ablation_script_runs_on_a_tiny_config():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "ablation.py"), "--tiny", "--batch-size", "2", "--rounds", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for row in ("| model | fp32 | no-chunks |", "| model | bf16 | plain |", "| patch embedding | fp32 | conv"):
        assert row in result.stdout
    differences = [float(line.rsplit("=", 1)[1]) for line in result.stdout.splitlines() if "max |logit" in line]
    assert len(differences) == 8 and max(differences[:4]) < 1e-5 and max(differences[4:]) < 0.1
