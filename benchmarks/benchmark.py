"""Throughput, latency and memory of HTS-AT against transformers' CLAP audio backbone and AST, in one process.

Every model reads the same kind of input: random 10 s waveforms (seeded) at its own sampling rate. "e2e" times the
feature extractor on raw audio plus the forward pass to clip logits; "model" times the forward pass on precomputed
features. Precisions: fp32, bf16 (autocast), tf32 (CUDA only), compile (torch.compile of the fp32 model).
Ratios against CLAP in the same run are the figures of merit on shared machines.

    python benchmarks/benchmark.py --device cpu --batch-sizes 1 8 --precisions fp32 bf16 --json cpu.json
    python benchmarks/benchmark.py --device cuda --batch-sizes 1 64 --precisions fp32 tf32 bf16 compile --train-step
"""

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from htsat_hf import HTSATConfig, HTSATFeatureExtractor, HTSATForAudioClassification, cpu_fast_path

CLIP_SECONDS = 10.0
CPU_FP32_PEAK_GFLOPS = 216.0  # this project's 2-core reference machine (avx512), see benchmarks/README.md


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


def bf16_probability_gap(built, batch_size: int, device: str) -> float:
    """Largest difference between HTS-AT's clip probabilities under bf16 autocast and in fp32, on the benchmark's
    clips (the issue's bound is 5e-3)."""
    with torch.inference_mode():
        features = built["extract"](built["waves"][:batch_size])
        reference = built["forward"](built["model"], features).float().sigmoid()
        with precision_context("bf16", device):
            reduced = built["forward"](built["model"], features).float().sigmoid()
    return (reduced - reference).abs().max().item()


def benchmark_models(args, rows, flops, checks):
    """Every model at every batch size, precision and stage; at each batch size and precision the calls of all
    models and stages are interleaved (see `time_interleaved`)."""
    rng = np.random.default_rng(0)
    built = {}
    for name in args.models:
        model, extract, forward, rate = BUILDERS[name](args.tiny, args.device)
        waves = (rng.standard_normal((max(args.batch_sizes), int(rate * CLIP_SECONDS))) * 0.1).astype(np.float32)
        flops[name] = count_gflops(model, forward, extract(waves[:1]))
        built[name] = dict(model=model, extract=extract, forward=forward, waves=waves, compiled=None)

    for batch_size in args.batch_sizes:
        if "htsat" in built and "bf16" in args.precisions:
            checks[f"htsat bf16 max clip probability gap, batch {batch_size}"] = bf16_probability_gap(
                built["htsat"], batch_size, args.device
            )
        features = {name: m["extract"](m["waves"][:batch_size]) for name, m in built.items()}
        for precision in args.precisions:
            if precision == "tf32" and args.device != "cuda":
                continue
            calls = {}
            for name, m in built.items():
                if precision == "compile" and m["compiled"] is None:
                    m["compiled"] = torch.compile(m["model"], fullgraph=name == "htsat")
                for stage in ("e2e", "model"):
                    calls[name, stage] = _make_call(m, stage, precision, batch_size, features[name], args.device)
            seconds = time_interleaved(calls, args.device, args.warmup, args.repeats)
            for (name, stage), value in seconds.items():
                row = dict(
                    model=name, stage=stage, precision=precision, batch_size=batch_size,
                    clips_per_s=batch_size / value, latency_ms=value * 1000,
                    peak_mem_mb=peak_memory(calls[name, stage], args.device) / 2**20,
                )
                rows.append(row)
                print(f"  {name:5s} {stage:5s} {precision:7s} b{batch_size:<3d} {row['clips_per_s']:8.2f} clips/s "
                      f"{row['latency_ms']:9.1f} ms {row['peak_mem_mb']:8.1f} MB", flush=True)


def _make_call(built, stage: str, precision: str, batch_size: int, features, device: str):
    target = built["compiled"] if precision == "compile" else built["model"]
    context = "fp32" if precision == "compile" else precision
    waves = built["waves"][:batch_size]

    def run():
        with torch.inference_mode():
            inputs = built["extract"](waves) if stage == "e2e" else features
            with precision_context(context, device):  # the model's precision, not the front end's
                built["forward"](target, inputs)

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


def summarize(rows, flops, checks, args) -> str:
    lines = ["", "| model | stage | precision | batch | clips/s | latency (ms) | peak mem (MB) | vs CLAP e2e fp32 |",
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
    if args.device == "cpu" and "htsat" in flops:
        best = max((r for r in rows if r["model"] == "htsat" and r["stage"] == "model" and r["precision"] == "fp32"),
                   key=lambda r: r["clips_per_s"], default=None)
        if best:
            achieved = best["clips_per_s"] * flops["htsat"]
            lines.append(f"htsat fp32 model-only: {achieved:.1f} GFLOP/s = {achieved / CPU_FP32_PEAK_GFLOPS:.0%} of "
                         f"the {CPU_FP32_PEAK_GFLOPS:.0f} GFLOP/s fp32 matmul peak of the reference machine")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", nargs="+", default=["htsat", "clap", "ast"], choices=sorted(BUILDERS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=["fp32", "tf32", "bf16", "compile"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-step", action="store_true", help="also time a full training step of HTS-AT")
    parser.add_argument("--tiny", action="store_true", help="tiny configurations (a smoke test, not a benchmark)")
    parser.add_argument("--json", type=Path, help="write the rows and environment to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    environment = dict(
        torch=torch.__version__, python=platform.python_version(), threads=torch.get_num_threads(),
        device=torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
        tiny=args.tiny,
    )
    print(f"environment: {environment}")
    rows, flops, checks = [], {}, {}
    benchmark_models(args, rows, flops, checks)
    if args.train_step:
        benchmark_train_step(args, rows)
    print(summarize(rows, flops, checks, args))
    if args.json:
        report = dict(environment=environment, gflops=flops, checks=checks, rows=rows)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
