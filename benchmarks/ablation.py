"""What each part of HTS-AT's CPU inference fast path buys, measured in one process with the parts switched off in
turn through the package's switch (`htsat_hf.cpu_fast_path`, see src/htsat_hf/cpu_fast_path_htsat.py).

Variants (timed in interleaved rounds, medians; the same features for all):
  fast             the package as shipped: every part on
  frozen weights   every part on, inside `htsat_hf.frozen_weights` (linear weights reordered for oneDNN once, as
                   the inference engine and the benchmark run the model; a copy of the model, so that the other
                   variants run unpacked)
  no <part>        that part off, the others on
  reference        the fast path off: every module runs its reference forward
Also the patch embedding alone: the matmul over patches against the convolution.

Precisions: fp32, bf16 (autocast), bf16-model (the weights held in bfloat16, no autocast).

    python benchmarks/ablation.py --batch-size 8 --precisions fp32 bf16 bf16-model
"""

import argparse
import copy
import statistics
import sys
import time
from contextlib import ExitStack, nullcontext

import numpy as np
import torch

from benchmark import to_dtype_as_loaded
from htsat_hf import HTSATConfig, HTSATFeatureExtractor, HTSATForAudioClassification, cpu_fast_path, frozen_weights
from htsat_hf.cpu_fast_path_htsat import ONEDNN_LINEAR_AVAILABLE, window_attention_kernel

VARIANTS = {
    "fast": {},
    "no chunks": dict(chunks=False),
    "no oneDNN linear": dict(onednn_linear=False),
    "no window gather": dict(window_gather=False),
    "no patch matmul": dict(patch_matmul=False),
    "no bias cache": dict(bias_cache=False),
    "no fused attention": dict(fused_attention=False),
    "reference": dict(enabled=False),
}


def interleaved_medians(calls: dict, rounds: int) -> dict:
    """Median seconds per call of each of `calls` (name -> (fast path settings, function)), in interleaved rounds
    after one warm-up call each."""
    times = {name: [] for name in calls}

    def timed(name):
        settings, fn = calls[name]
        with cpu_fast_path(**settings):
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start

    for name in calls:
        timed(name)
    for _ in range(rounds):
        for name in calls:
            times[name].append(timed(name))
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "bf16-model"],
                        choices=["fp32", "bf16", "bf16-model"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tiny", action="store_true", help="a tiny configuration (a smoke test, not a measurement)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if not ONEDNN_LINEAR_AVAILABLE:
        print("note: this torch build has no oneDNN fused linear; 'no oneDNN linear' equals 'fast'")
    overrides = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8]) if args.tiny else {}
    config = HTSATConfig(**overrides)
    model = HTSATForAudioClassification(config).eval()
    extractor = HTSATFeatureExtractor.from_config(config)
    waves = (np.random.default_rng(0).standard_normal((args.batch_size, extractor.max_length_samples)) * 0.1)
    features = extractor(waves.astype(np.float32), sampling_rate=config.sampling_rate, return_tensors="pt")
    features = features["input_features"]
    kernels = {str(dtype).removeprefix("torch."): window_attention_kernel(dtype)
               for dtype in (torch.float32, torch.bfloat16)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.rounds} interleaved rounds; attention kernel chosen here: {kernels}")

    lines = ["| part | precision | variant | ms per batch | vs fast |", "| --- | --- | --- | --- | --- |"]
    bf16_model = to_dtype_as_loaded(model, torch.bfloat16) if "bf16-model" in args.precisions else None
    with torch.inference_mode(), ExitStack() as frozen:
        reference = model(features).logits
        for precision in args.precisions:
            context = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
            target = bf16_model if precision == "bf16-model" else model
            frozen_target = frozen.enter_context(frozen_weights(copy.deepcopy(target)))

            def forward(target=target, context=context):
                with context():
                    return target(features).logits

            calls = {name: (settings, forward) for name, settings in VARIANTS.items()}
            calls["frozen weights"] = ({}, lambda: forward(frozen_target))
            for name, (settings, call) in calls.items():
                with cpu_fast_path(**settings):
                    difference = (call().float() - reference).abs().max().item()
                print(f"  model {precision} {name}: max |logit - fp32 fast| = {difference:.2e}")
            medians = interleaved_medians(calls, args.rounds)
            for name, seconds in medians.items():
                lines.append(f"| model | {precision} | {name} | {seconds * 1000:.1f} | "
                             f"{seconds / medians['fast']:.2f}x |")

        embeddings = model.htsat.patch_embed
        image = torch.randn(args.batch_size, 1, config.spec_size, config.spec_size)
        patch = {
            "matmul over patches (fast)": ({}, lambda: embeddings(image)),
            "convolution (reference)": (dict(patch_matmul=False), lambda: embeddings(image)),
        }
        for name, seconds in interleaved_medians(patch, args.rounds).items():
            lines.append(f"| patch embedding | fp32 | {name} | {seconds * 1000:.2f} | |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
