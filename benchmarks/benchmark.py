"""Throughput, latency and memory of HTS-AT against transformers' CLAP audio backbone and AST, in one process.

Every model reads the same kind of input: random 10 s waveforms (seeded) at its own sampling rate. "e2e" times the
feature extractor on raw audio plus the forward pass to clip logits; "model" times the forward pass on precomputed
features. Precisions:

  fp32        the model as built
  bf16        bfloat16 autocast around the fp32 model
  bf16-model  the model's weights held in bfloat16 (`model.to(torch.bfloat16)`, as `torch_dtype=torch.bfloat16` in
              `from_pretrained` loads it), no autocast
  fp16-model  the same in float16
  int8        dynamic int8 quantisation of the linear layers (`torch.ao.quantization.quantize_dynamic`)
  ort         HTS-AT only: the package's own ONNX export run by onnxruntime (fp32), the same weights, clips and
              thread count; `ort-int8` its dynamically quantised graph (onnxruntime.quantization)
  tf32        CUDA only
  compile     torch.compile of the fp32 model

On CPU the script first measures the machine's matmul peaks (fp32, bf16, and fp16 where oneDNN runs it natively) with
the benchmark's thread count, and reports HTS-AT's efficiency against them, with the CPU's name and flags. Ratios
against CLAP in the same run are the figures of merit on shared machines. HTS-AT's PyTorch rows run inside
`htsat_hf.frozen_weights` (linear weights reordered for oneDNN once, as the inference engine runs the model).

    python benchmarks/benchmark.py --models htsat clap --batch-sizes 1 8 \
        --precisions fp32 bf16 bf16-model int8 ort --json cpu.json
    python benchmarks/benchmark.py --device cuda --batch-sizes 1 64 --precisions fp32 tf32 bf16 compile --train-step
"""

import argparse
import copy
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from htsat_hf import HTSATConfig, HTSATFeatureExtractor, HTSATForAudioClassification, cpu_fast_path, frozen_weights
from htsat_hf.convert_htsat_original_checkpoint import convert_checkpoint
from htsat_hf.onnx_export import export_onnx

CLIP_SECONDS = 10.0
PRECISIONS = ["fp32", "bf16", "bf16-model", "fp16-model", "int8", "ort", "ort-int8", "tf32", "compile"]
MODEL_DTYPES = {"bf16-model": torch.bfloat16, "fp16-model": torch.float16}
# The CPU flags that decide which kernels can run (shown with every result).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_int8")
REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference"


class PeakRSS:
    """Samples the process's resident memory in a thread; torch allocations bypass tracemalloc.

    Memory that earlier calls freed stays in the C heap and would hide this call's needs, so the heap is first
    handed back to the system (glibc's `malloc_trim`, where there is one)."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def __enter__(self):
        gc.collect()
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (AttributeError, OSError):  # not glibc
            pass
        self.baseline = self.current()
        self.peak = self.baseline
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


@contextmanager
def precision_context(precision: str, device: str):
    if precision == "bf16":
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            yield
    elif precision == "tf32":
        previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
    else:
        yield


def synchronize(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(calls: dict, device: str, warmup: int, repeats: int) -> dict:
    """Median seconds per call of each of `calls` (name -> function), timed in rounds that run every call once.

    Interleaving makes the ratios between calls robust to the machine's speed drifting during the run (other
    tenants, frequency scaling), which would bias calls timed one after the other. A call that raises is reported
    and left out.
    """
    calls = dict(calls)
    times = {name: [] for name in calls}

    def attempt(name, timed: bool):
        try:
            start = time.perf_counter()
            calls[name]()
            synchronize(device)
            if timed:
                times[name].append(time.perf_counter() - start)
        except Exception as error:  # a model/precision pair the installed stack cannot run is reported
            print(f"  {' '.join(name) if isinstance(name, tuple) else name}: failed: {error!r}", file=sys.stderr)
            del calls[name], times[name]

    for name in list(calls):
        for _ in range(warmup):
            if name in calls:
                attempt(name, timed=False)
    for _ in range(repeats):
        for name in list(calls):
            attempt(name, timed=True)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory(fn, device: str, calls: int = 3) -> int:
    """Bytes above the start at the peak of a call, the largest of `calls` calls: the GPU allocator's count, or the
    process's resident set sampled by a thread (torch allocations bypass tracemalloc; a short call can slip between
    two samples, hence several calls). Measured apart from the timed calls, which the sampling thread would slow."""
    peaks = []
    for _ in range(calls):
        synchronize(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            start_memory = torch.cuda.memory_allocated()
            fn()
            synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated() - start_memory)
        else:
            with PeakRSS() as rss:
                fn()
            peaks.append(rss.peak - rss.baseline)
    return max(peaks)


# --------------------------------------------------------------------------------------------------------------------
# The machine: its name, flags and matmul peaks
# --------------------------------------------------------------------------------------------------------------------


def cpu_description() -> dict:
    """The CPU's model name and the flags of `CPU_FLAGS` it has, from /proc/cpuinfo (Linux), else from PyTorch's
    own detection (`torch.cpu.get_capabilities`, with its flag names mapped)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        capabilities = getattr(torch.cpu, "get_capabilities", dict)()
        name = capabilities.get("cpu_name", name)
        flags = {flag for flag in CPU_FLAGS if capabilities.get(flag.replace("avx512f", "avx512_f"))}
    return dict(name=name, flags=[flag for flag in CPU_FLAGS if flag in flags])


def _best_seconds(fn, rounds: int) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


# (rows, inner, columns) of the products timed for the peaks: large squares, and the shapes of HTS-AT's linear
# layers at batch 8 (stage 1's projections, stage 3's MLP), which can reach more than squares on small caches.
CUBE = (2048, 2048, 2048)
PEAK_SHAPES = [CUBE, (4096, 4096, 1024), (8192, 96, 384), (8192, 384, 96), (2048, 768, 3072),
               (2048, 3072, 768)]


def matmul_peaks(rounds: int = 5) -> dict:
    """GFLOP/s of the fastest matmul this machine runs with the current thread count, per dtype: fp32 and bf16, and
    fp16 where oneDNN runs it natively. Each shape of `PEAK_SHAPES` through `torch.mm` and oneDNN's linear op (the
    fast path's), best of `rounds`; the best over all is the peak (`gflops`, `shape`, `kernel`). The best rather
    than the median, since a busy machine can only slow a kernel down. `cube_gflops` is the 2048^3 `torch.mm` alone:
    the yardstick issue 13 measured its goals with, kept beside the peak because on a CPU with small caches the
    model's own shapes run faster than that cube (353-384 against 239 GFLOP/s fp32 on a 2-core Xeon)."""
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if torch.ops.mkldnn._is_mkldnn_fp16_supported():
        dtypes["fp16"] = torch.float16
    linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
    peaks = {}
    with torch.inference_mode():
        for label, dtype in dtypes.items():
            best = dict(gflops=0.0)
            for rows, inner, columns in PEAK_SHAPES:
                a = torch.randn(rows, inner).to(dtype)
                b = torch.randn(columns, inner).to(dtype)
                kernels = {"torch.mm": lambda: torch.mm(a, b.t())}
                if linear is not None:
                    kernels["oneDNN linear"] = lambda: linear(a, b, None, "none", [], "")
                for kernel, fn in kernels.items():
                    gflops = 2 * rows * inner * columns / _best_seconds(fn, rounds) / 1e9
                    if (rows, inner, columns, kernel) == (*CUBE, "torch.mm"):
                        cube = gflops
                    if gflops > best["gflops"]:
                        best = dict(gflops=gflops, shape=[rows, inner, columns], kernel=kernel)
            peaks[label] = dict(best, cube_gflops=cube)
    return peaks


# --------------------------------------------------------------------------------------------------------------------
# Models under test: each returns (extractor call on raw audio, forward on features, sampling rate)
# --------------------------------------------------------------------------------------------------------------------


def build_htsat(tiny: bool, device: str):
    overrides = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8]) if tiny else {}
    config = HTSATConfig(**overrides)
    model = HTSATForAudioClassification(config).eval().to(device)
    extractor = HTSATFeatureExtractor.from_config(config)

    def extract(waves):
        return extractor(waves, sampling_rate=config.sampling_rate, return_tensors="pt", device=device)

    def forward(model_, features):
        return model_(features["input_features"]).logits

    return model, extract, forward, config.sampling_rate


def build_clap(tiny: bool, device: str):
    from transformers import ClapAudioConfig, ClapAudioModel, ClapFeatureExtractor

    overrides = dict(patch_embeds_hidden_size=16, hidden_size=128, depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 4, 8])
    config = ClapAudioConfig(**(overrides if tiny else {}))
    model = ClapAudioModel(config).eval().to(device)
    extractor = ClapFeatureExtractor()

    def extract(waves):
        features = extractor(
            list(waves), sampling_rate=extractor.sampling_rate, truncation="rand_trunc", return_tensors="pt"
        )
        return {"input_features": features["input_features"].to(device)}

    def forward(model_, features):
        return model_(input_features=features["input_features"]).pooler_output

    return model, extract, forward, extractor.sampling_rate


def build_ast(tiny: bool, device: str):
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    overrides = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    config = ASTConfig(num_labels=527, **(overrides if tiny else {}))
    model = ASTForAudioClassification(config).eval().to(device)
    extractor = ASTFeatureExtractor()

    def extract(waves):
        features = extractor(list(waves), sampling_rate=extractor.sampling_rate, return_tensors="pt")
        return {"input_values": features["input_values"].to(device)}

    def forward(model_, features):
        return model_(input_values=features["input_values"]).logits

    return model, extract, forward, extractor.sampling_rate


BUILDERS = {"htsat": build_htsat, "clap": build_clap, "ast": build_ast}


def count_gflops(model, forward, features) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    # HTS-AT's reference forwards: FlopCounterMode does not know the fused oneDNN linear op of its CPU fast path (same
    # arithmetic).
    with cpu_fast_path(False), FlopCounterMode(display=False) as counter:
        forward(model, features)
    return counter.get_total_flops() / 1e9


def to_dtype_as_loaded(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of `model` in `dtype` as `from_pretrained(..., torch_dtype=dtype)` would load it: the modules named in
    the class's `_keep_in_fp32_modules_strict` (HTS-AT's feature normalisation) stay in float32."""
    copied = copy.deepcopy(model).to(dtype)
    keep = set(getattr(copied, "_keep_in_fp32_modules_strict", None) or ())
    for name, module in copied.named_modules():
        if name.rsplit(".", 1)[-1] in keep:
            module.float()
    return copied


class Unsupported(Exception):
    """A model/precision pair this script does not run (reported, left out)."""


def onnx_session(model, threads: int, quantized: bool, folder: Path):
    """onnxruntime CPU session on the package's own ONNX export of `model` (classification graph: features to clip
    logits), with `threads` intra-op threads like PyTorch's; `quantized`: onnxruntime's dynamic int8 quantisation of
    the exported graph (weights int8, activations quantised per call)."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = folder / "htsat.onnx"
    if not path.exists():
        export_onnx(model, path, task="classification", verify=False)
    if quantized:
        quantized_path = folder / "htsat-int8.onnx"
        if not quantized_path.exists():
            quantize_dynamic(str(path), str(quantized_path), weight_type=QuantType.QInt8)
        path = quantized_path
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def model_variant(built: dict, name: str, precision: str, device: str):
    """`(target, forward)` that runs `built`'s model in `precision` (see the module docstring), made once per model
    and precision. Raises `Unsupported` where the pair does not apply."""
    variants = built.setdefault("variants", {})
    if precision in variants:
        return variants[precision]
    model, forward = built["model"], built["forward"]
    if precision in ("fp32", "bf16", "tf32"):
        if precision == "tf32" and device != "cuda":
            raise Unsupported("tf32 is CUDA only")
        variant = model, forward
    elif precision == "compile":
        variant = torch.compile(model, fullgraph=name == "htsat"), forward
    elif precision in MODEL_DTYPES:
        dtype = MODEL_DTYPES[precision]

        def forward_in_dtype(model_, features):
            return forward(model_, {key: value.to(dtype) for key, value in features.items()})

        # HTS-AT takes the extractor's float32 features in any dtype (as the inference engine gives them); CLAP and
        # AST need inputs in their weights' dtype.
        variant = to_dtype_as_loaded(model, dtype), forward if name == "htsat" else forward_in_dtype
    elif precision == "int8":
        if device != "cpu":
            raise Unsupported("dynamic int8 quantisation runs on CPU only")
        variant = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8), forward
    elif precision in ("ort", "ort-int8"):
        if name != "htsat" or device != "cpu":
            raise Unsupported("onnxruntime rows are HTS-AT's own export on CPU")
        folder = built.setdefault("onnx_dir", Path(tempfile.mkdtemp(prefix="htsat-benchmark-")))
        session = onnx_session(model, torch.get_num_threads(), precision == "ort-int8", folder)
        input_name = session.get_inputs()[0].name

        def forward_onnx(session_, features):
            return torch.from_numpy(session_.run(None, {input_name: features["input_features"].numpy()})[0])

        variant = session, forward_onnx
    else:
        raise Unsupported(precision)
    if name == "htsat" and isinstance(variant[0], nn.Module):
        built["frozen"].enter_context(frozen_weights(variant[0]))
    variants[precision] = variant
    return variant


def clip_probability_gap(built, precision: str, batch_size: int, device: str) -> float:
    """Largest difference between HTS-AT's clip probabilities in `precision` and in fp32, on the benchmark's clips
    (the issue's bounds: 5e-3 for bf16, 1e-2 for int8)."""
    target, forward = model_variant(built, "htsat", precision, device)
    with torch.inference_mode():
        features = built["extract"](built["waves"][:batch_size])
        reference = built["forward"](built["model"], features).float().sigmoid()
        with precision_context(precision, device):
            reduced = forward(target, features).float().sigmoid()
    return (reduced - reference).abs().max().item()


def reference_input_gaps(precisions, reference_dir: Path) -> dict:
    """Largest clip probability difference from fp32 in each of `precisions` (bf16-model, fp16-model, int8) on the
    reference vectors' inputs (`../shared/reference`: converted original checkpoints and their waveforms), over all
    cases and batches; the bf16 and fp16 models are loaded with `from_pretrained(..., torch_dtype=...)`. Empty
    without the vectors."""
    from safetensors.torch import load_file

    checkpoints = sorted(reference_dir.glob("*.ckpt")) if reference_dir.is_dir() else []
    gaps = {precision: 0.0 for precision in precisions if precision in ("int8", *MODEL_DTYPES)}
    if not checkpoints or not gaps:
        return {}
    with tempfile.TemporaryDirectory() as folder:
        for checkpoint in checkpoints:
            settings = json.loads(checkpoint.with_suffix(".json").read_text())
            output = Path(folder) / checkpoint.stem
            problem = "single_label_classification" if settings["loss_type"] == "clip_ce" else None
            convert_checkpoint(checkpoint, output, settings["sample_rate"], settings["hop_size"],
                               **({"problem_type": problem} if problem else {}))
            model = HTSATForAudioClassification.from_pretrained(output).eval()
            extractor = HTSATFeatureExtractor.from_pretrained(output)
            expected = load_file(checkpoint.with_name(checkpoint.stem + ".expected.safetensors"))
            variants = {}
            for precision in gaps:
                if precision == "int8":
                    variants[precision] = torch.ao.quantization.quantize_dynamic(
                        copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
                else:
                    variants[precision] = HTSATForAudioClassification.from_pretrained(
                        output, torch_dtype=MODEL_DTYPES[precision]).eval()
            probabilities = (lambda x: x.softmax(-1)) if problem else torch.sigmoid
            for batch in sorted({key.split(".")[0] for key in expected}):
                features = extractor(expected[f"{batch}.waveform"].numpy(), sampling_rate=settings["sample_rate"],
                                     padding="longest", return_tensors="pt")["input_features"]
                with torch.inference_mode():
                    reference = probabilities(model(features).logits.float())
                    for precision, variant in variants.items():
                        with frozen_weights(variant):  # as the engine runs it
                            reduced = probabilities(variant(features).logits.float())
                        gaps[precision] = max(gaps[precision], (reduced - reference).abs().max().item())
    return gaps


def benchmark_models(args, rows, flops, checks):
    """Every model at every batch size, precision and stage. At each batch size the calls of all models, stages and
    PyTorch precisions are interleaved (see `time_interleaved`), so that the ratios the goals take across precisions
    (the best bf16 row of each model) come from the same rounds; onnxruntime rows are timed in rounds of their own
    (`OWN_THREAD_POOLS`)."""
    with ExitStack() as frozen:
        _benchmark_models(args, rows, flops, checks, frozen)


# Runtimes whose own thread pools keep spinning after a call and slow the PyTorch calls timed next to them (and the
# reverse; see runtimes.py, which times each runtime alone in a process).
OWN_THREAD_POOLS = ("ort", "ort-int8")


def _benchmark_models(args, rows, flops, checks, frozen: ExitStack):
    rng = np.random.default_rng(0)
    built = {}
    for name in args.models:
        model, extract, forward, rate = BUILDERS[name](args.tiny, args.device)
        waves = (rng.standard_normal((max(args.batch_sizes), int(rate * CLIP_SECONDS))) * 0.1).astype(np.float32)
        flops[name] = count_gflops(model, forward, extract(waves[:1]))
        built[name] = dict(model=model, extract=extract, forward=forward, waves=waves, frozen=frozen)

    groups = [[p for p in args.precisions if p not in OWN_THREAD_POOLS]]
    groups += [[p] for p in args.precisions if p in OWN_THREAD_POOLS]
    for batch_size in args.batch_sizes:
        features = {name: m["extract"](m["waves"][:batch_size]) for name, m in built.items()}
        for group in groups:
            calls = {}
            for precision in group:
                for name, m in built.items():
                    try:
                        target, forward = model_variant(m, name, precision, args.device)
                    except Unsupported:
                        continue
                    except Exception as error:  # an optional runtime missing, an export this stack cannot do
                        print(f"  {name} {precision}: failed: {error!r}", file=sys.stderr)
                        continue
                    for stage in ("e2e", "model"):
                        calls[name, stage, precision] = _make_call(m, target, forward, stage, precision, batch_size,
                                                                   features[name], args.device)
                if ("htsat", "model", precision) in calls and precision not in ("fp32", "compile"):
                    checks[f"htsat {precision} max clip probability gap, batch {batch_size}"] = clip_probability_gap(
                        built["htsat"], precision, batch_size, args.device)
            seconds = time_interleaved(calls, args.device, args.warmup, args.repeats)
            for (name, stage, precision), value in seconds.items():
                row = dict(
                    model=name, stage=stage, precision=precision, batch_size=batch_size,
                    clips_per_s=batch_size / value, latency_ms=value * 1000,
                    peak_mem_mb=peak_memory(calls[name, stage, precision], args.device) / 2**20,
                )
                rows.append(row)
                print(f"  {name:5s} {stage:5s} {precision:10s} b{batch_size:<3d} {row['clips_per_s']:8.2f} clips/s "
                      f"{row['latency_ms']:9.1f} ms {row['peak_mem_mb']:8.1f} MB", flush=True)


def _make_call(built, target, forward, stage: str, precision: str, batch_size: int, features, device: str):
    waves = built["waves"][:batch_size]

    def run():
        with torch.inference_mode():
            inputs = built["extract"](waves) if stage == "e2e" else features
            with precision_context(precision, device):  # the model's precision, not the front end's
                forward(target, inputs)

    return run


def benchmark_train_step(args, rows):
    """Optimizer steps per second of the full HTS-AT classifier (AdamW, multi-label BCE, train mode)."""
    overrides = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8]) if args.tiny else {}
    config = HTSATConfig(**overrides)
    model = HTSATForAudioClassification(config).train().to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch_size = max(args.batch_sizes)
    features = torch.randn(batch_size, 1001, config.num_mel_bins, device=args.device) * 10 - 40
    labels = (torch.rand(batch_size, config.num_labels, device=args.device) < 0.01).float()
    for precision in [p for p in args.precisions if p in ("fp32", "bf16", "tf32")]:
        if precision == "tf32" and args.device != "cuda":
            continue

        def step():
            with precision_context(precision, args.device):
                loss = model(features, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        seconds = time_interleaved({"train": step}, args.device, 1, max(2, args.repeats // 2))["train"]
        peak = peak_memory(step, args.device)
        rows.append(dict(model="htsat", stage="train_step", precision=precision, batch_size=batch_size,
                         clips_per_s=batch_size / seconds, latency_ms=seconds * 1000, peak_mem_mb=peak / 2**20,
                         steps_per_s=1 / seconds))
        print(f"  htsat train {precision:7s} b{batch_size:<3d} {1 / seconds:8.2f} steps/s "
              f"({batch_size / seconds:.2f} clips/s) {peak / 2**20:8.1f} MB", flush=True)


def _best_row(rows, model, stage, precisions, batch_size):
    candidates = [r for r in rows if r["model"] == model and r["stage"] == stage and r["precision"] in precisions
                  and r["batch_size"] == batch_size]
    return max(candidates, key=lambda r: r["clips_per_s"], default=None)


def goals(rows, flops, peaks, batch_size) -> list[str]:
    """The issue's figures at `batch_size` (the largest run): fp32 model-only efficiency against the measured fp32
    peak, bf16 e2e clips/s (the faster of autocast and bf16 weights) and its ratio to CLAP's best bf16 row, eager
    against onnxruntime in fp32."""
    lines = [f"goals at batch {batch_size}:"]
    fp32 = _best_row(rows, "htsat", "model", ["fp32"], batch_size)
    if fp32 and "htsat" in flops and peaks:
        achieved = fp32["clips_per_s"] * flops["htsat"]
        peak = peaks["fp32"]
        lines.append(f"  htsat fp32 model-only: {achieved:.1f} GFLOP/s = {achieved / peak['gflops']:.0%} of "
                     f"this machine's fp32 matmul peak ({peak['gflops']:.0f} GFLOP/s), "
                     f"{achieved / peak['cube_gflops']:.0%} of the 2048^3 torch.mm the issue measured "
                     f"({peak['cube_gflops']:.0f} GFLOP/s) [goal >= 70%]")
    bf16 = ["bf16", "bf16-model"]
    htsat_bf16, clap_bf16 = (_best_row(rows, m, "e2e", bf16, batch_size) for m in ("htsat", "clap"))
    if htsat_bf16:
        line = (f"  htsat bf16 e2e: {htsat_bf16['clips_per_s']:.2f} clips/s ({htsat_bf16['precision']}) "
                "[goal >= 25 on AMX]")
        if clap_bf16:
            line += (f", {htsat_bf16['clips_per_s'] / clap_bf16['clips_per_s']:.2f}x CLAP's "
                     f"{clap_bf16['clips_per_s']:.2f} ({clap_bf16['precision']}) [goal >= 3x]")
        lines.append(line)
        model_bf16 = _best_row(rows, "htsat", "model", bf16, batch_size)
        if model_bf16 and "htsat" in flops and peaks:
            achieved = model_bf16["clips_per_s"] * flops["htsat"]
            lines.append(f"  htsat bf16 model-only: {achieved:.1f} GFLOP/s = {achieved / peaks['bf16']['gflops']:.0%} "
                         f"of the bf16 matmul peak ({peaks['bf16']['gflops']:.0f} GFLOP/s)")
    for stage in ("e2e", "model"):
        eager, ort = (_best_row(rows, "htsat", stage, [p], batch_size) for p in ("fp32", "ort"))
        if eager and ort:
            lines.append(f"  htsat {stage} fp32 eager / onnxruntime: {eager['clips_per_s']:.2f} / "
                         f"{ort['clips_per_s']:.2f} clips/s = {eager['clips_per_s'] / ort['clips_per_s']:.2f}x "
                         "[goal >= 1x]")
    return lines if len(lines) > 1 else []


def summarize(rows, flops, checks, peaks, environment, args) -> str:
    cpu = environment.get("cpu")
    lines = [""]
    if cpu:
        lines.append(f"machine: {cpu['name']} ({' '.join(cpu['flags']) or 'none of ' + ' '.join(CPU_FLAGS)}), "
                     f"torch {environment['torch']}, {environment['threads']} threads")
    if peaks:
        lines.append("matmul peaks: " + ", ".join(
            f"{label} {peak['gflops']:.0f} GFLOP/s ({peak['kernel']} {'x'.join(map(str, peak['shape']))}; "
            f"2048^3 torch.mm {peak['cube_gflops']:.0f})"
            for label, peak in peaks.items()))
    lines += ["", "| model | stage | precision | batch | clips/s | latency (ms) | peak mem (MB) | vs CLAP e2e fp32 |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    reference = {r["batch_size"]: r["clips_per_s"] for r in rows
                 if r["model"] == "clap" and r["stage"] == "e2e" and r["precision"] == "fp32"}
    for r in rows:
        ratio = r["clips_per_s"] / reference[r["batch_size"]] if r["batch_size"] in reference else float("nan")
        lines.append(f"| {r['model']} | {r['stage']} | {r['precision']} | {r['batch_size']} | {r['clips_per_s']:.2f} "
                     f"| {r['latency_ms']:.1f} | {r['peak_mem_mb']:.0f} | {ratio:.2f}x |")
    lines.append("")
    lines += [f"{name}: {gflops:.2f} GFLOPs per 10 s clip (forward, FlopCounterMode)" for name, gflops in flops.items()]
    lines += [f"{name}: {value:.1e}" for name, value in checks.items()]
    if args.device == "cpu" and args.batch_sizes:
        lines += goals(rows, flops, peaks, max(args.batch_sizes))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", nargs="+", default=["htsat", "clap", "ast"], choices=sorted(BUILDERS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=PRECISIONS)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-step", action="store_true", help="also time a full training step of HTS-AT")
    parser.add_argument("--tiny", action="store_true", help="tiny configurations (a smoke test, not a benchmark)")
    parser.add_argument("--json", type=Path, help="write the rows and environment to this file")
    parser.add_argument("--reference-dir", type=Path, default=REFERENCE_DIR,
                        help="the reference vectors on whose inputs int8 and bf16/fp16 weights are checked (skipped "
                             "when absent)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    environment = dict(
        torch=torch.__version__, python=platform.python_version(), threads=torch.get_num_threads(),
        device=torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
        tiny=args.tiny,
    )
    peaks = {}
    if args.device == "cpu":
        environment["cpu"] = cpu_description()
        peaks = matmul_peaks(rounds=2 if args.tiny else 5)
    print(f"environment: {environment}")
    print(f"matmul peaks: {peaks}", flush=True)
    rows, flops, checks = [], {}, {}
    benchmark_models(args, rows, flops, checks)
    checks.update({f"htsat {precision} max clip probability gap on the reference inputs": gap
                   for precision, gap in reference_input_gaps(args.precisions, args.reference_dir).items()})
    if args.train_step:
        benchmark_train_step(args, rows)
    print(summarize(rows, flops, checks, peaks, environment, args))
    if args.json:
        report = dict(environment=environment, peaks=peaks, gflops=flops, checks=checks, rows=rows)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
