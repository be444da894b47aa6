"""What each part of HTS-AT's CPU inference path buys, measured in one process with the parts switched off in turn.

Variants (timed in interleaved rounds, medians; the same random features for all):
  fast          the package as shipped
  no-chunks     stages and the front end take the whole batch at once (`CPU_CHUNK_BYTES` set beyond any batch)
  no-onednn     linear layers through PyTorch's default GEMM, bias and GELU as separate passes
  plain         neither
Also the front end alone (chunked against whole-batch) and the patch embedding (matmul against the convolution).

    python benchmarks/ablation.py --batch-size 8 --precisions fp32 bf16
"""

import argparse
import statistics
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

from htsat_hf import HTSATConfig, HTSATFeatureExtractor, HTSATForAudioClassification
from htsat_hf import feature_extraction_htsat, modeling_htsat

UNLIMITED = 2**62
VARIANTS = {
    "fast": dict(chunks=True, onednn=True),
    "no-chunks": dict(chunks=False, onednn=True),
    "no-onednn": dict(chunks=True, onednn=False),
    "plain": dict(chunks=False, onednn=False),
}


def configure(chunks: bool, onednn: bool, defaults: dict):
    modeling_htsat.CPU_CHUNK_BYTES = defaults["model_chunk"] if chunks else UNLIMITED
    feature_extraction_htsat.CPU_CHUNK_BYTES = defaults["front_chunk"] if chunks else UNLIMITED
    modeling_htsat._ONEDNN_LINEAR = defaults["onednn"] if onednn else None


def interleaved_medians(calls: dict, rounds: int) -> dict:
    times = {name: [] for name in calls}
    for name, (setup, fn) in calls.items():  # warm-up
        setup()
        fn()
    for _ in range(rounds):
        for name, (setup, fn) in calls.items():
            setup()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tiny", action="store_true", help="a tiny configuration (a smoke test, not a measurement)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    defaults = dict(
        model_chunk=modeling_htsat.CPU_CHUNK_BYTES,
        front_chunk=feature_extraction_htsat.CPU_CHUNK_BYTES,
        onednn=modeling_htsat._ONEDNN_LINEAR,
    )
    if defaults["onednn"] is None:
        print("note: this torch build has no oneDNN fused linear; the -onednn variants equal the others")
    overrides = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8]) if args.tiny else {}
    config = HTSATConfig(**overrides)
    model = HTSATForAudioClassification(config).eval()
    extractor = HTSATFeatureExtractor.from_config(config)
    waves = (np.random.default_rng(0).standard_normal((args.batch_size, extractor.max_length_samples)) * 0.1)
    waves = waves.astype(np.float32)
    features = extractor(waves, sampling_rate=config.sampling_rate, return_tensors="pt")["input_features"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.rounds} interleaved rounds")

    lines = ["| part | precision | variant | ms per batch | vs fast |", "| --- | --- | --- | --- | --- |"]
    with torch.inference_mode():
        reference = model(features).logits
        for precision in args.precisions:
            context = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext

            def forward():
                with context():
                    return model(features).logits

            calls = {name: (lambda flags=flags: configure(**flags, defaults=defaults), forward)
                     for name, flags in VARIANTS.items()}
            for name, (setup, fn) in calls.items():
                setup()
                difference = (fn().float() - reference).abs().max().item()
                print(f"  model {precision} {name}: max |logit - fp32 fast| = {difference:.2e}")
            medians = interleaved_medians(calls, args.rounds)
            for name, seconds in medians.items():
                lines.append(f"| model | {precision} | {name} | {seconds * 1000:.1f} | "
                             f"{seconds / medians['fast']:.2f}x |")

        def extract():
            return extractor(waves, sampling_rate=config.sampling_rate, return_tensors="pt")

        front = {name: (lambda flags=flags: configure(**flags, defaults=defaults), extract)
                 for name, flags in (("fast", VARIANTS["fast"]), ("no-chunks", VARIANTS["no-chunks"]))}
        for name, seconds in interleaved_medians(front, args.rounds).items():
            lines.append(f"| feature extractor | fp32 | {name} | {seconds * 1000:.1f} | |")

        configure(**VARIANTS["fast"], defaults=defaults)
        embeddings = model.htsat.patch_embed
        image = torch.randn(args.batch_size, 1, config.spec_size, config.spec_size)

        def convolution():
            return embeddings.norm(embeddings.projection(image).flatten(2).transpose(1, 2))

        patch = {
            "matmul (shipped)": (lambda: None, lambda: embeddings(image)),
            "convolution": (lambda: None, convolution),
        }
        for name, seconds in interleaved_medians(patch, args.rounds).items():
            lines.append(f"| patch embedding | fp32 | {name} | {seconds * 1000:.2f} | |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
