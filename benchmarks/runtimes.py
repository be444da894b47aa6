"""HTS-AT in the CPU runtimes a user could deploy it with, each in a process of its own.

`benchmark.py` interleaves every row in one process, which is right for PyTorch models sharing PyTorch's thread pool
but not for runtimes with thread pools of their own: onnxruntime's and OpenVINO's threads keep spinning after a call
and slow the PyTorch calls that follow (and the reverse): interleaved with OpenVINO, eager fp32 ran at 9.5-9.8
clips/s against 11.4-11.7 alone on 2 cores. Here each runtime runs alone in a fresh process, on the same model
(seeded random weights), the same features and the same thread count, and the rounds alternate between runtimes so
that a machine's drift reaches all of them alike.

Runtimes (model only: log-mel features in, the detection model's frame and clip logits out):

  eager-fp32       this package in PyTorch, inside `htsat_hf.frozen_weights`, as the inference engine runs it
  eager-bf16       the same under bfloat16 autocast
  eager-bf16-model the weights held in bfloat16 (`torch_dtype=torch.bfloat16` as loading gives)
  ort              the package's own ONNX export in onnxruntime (fp32)
  openvino-f32     the same export in OpenVINO (`pip install openvino`), fp32 inference precision
  openvino-bf16    OpenVINO with bf16 inference precision (AMX or AVX512-BF16 where the CPU has them)

A runtime that is not installed is reported and left out. Each row gives clips/s (median over rounds of each
process's median call), GFLOP/s (the model's 11.97 GFLOPs per clip from `benchmark.py`'s FlopCounterMode count) and
the largest clip- and frame-probability gaps to eager fp32 on the same features. OpenVINO's bf16 keeps the
residual stream and layer norms in bf16 too (its CPU plugin's per-node precision switch is not reachable from its
Python API), where eager bf16 keeps them in float32, so its frame gap is larger than eager's.

    python benchmarks/runtimes.py --batch-size 8 --rounds 3
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path

import numpy as np
import torch

from htsat_hf import HTSATConfig, HTSATForSoundEventDetection, frozen_weights
from htsat_hf.onnx_export import export_onnx

RUNTIMES = ["eager-fp32", "eager-bf16", "eager-bf16-model", "ort", "openvino-f32", "openvino-bf16"]
GFLOPS_PER_CLIP = 11.97  # benchmark.py's FlopCounterMode count of the full-size forward
TINY = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])


def build(tiny: bool, batch_size: int) -> tuple[HTSATForSoundEventDetection, torch.Tensor]:
    """The model every process builds alike (seed 0) and log-mel-like features `(batch, 1001, 64)`."""
    torch.manual_seed(0)
    model = HTSATForSoundEventDetection(HTSATConfig(**(TINY if tiny else {}))).eval()
    features = torch.randn(batch_size, 1001, 64, generator=torch.Generator().manual_seed(1)) * 10 - 40
    return model, features


def make_call(runtime: str, model, features: torch.Tensor, onnx_path: Path, threads: int, held: ExitStack):
    """A no-argument function running the forward in `runtime`, returning `(frame logits, clip logits)` as float32
    arrays; PyTorch
    models are held in `frozen_weights` by `held`, as the inference engine holds them for a run. Raises ImportError
    where the runtime is not installed."""
    if runtime.startswith("eager"):
        if runtime == "eager-bf16-model":
            model = HTSATForSoundEventDetection.from_pretrained(onnx_path.parent / "model", torch_dtype=torch.bfloat16)
            model.eval()
        context = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if runtime == "eager-bf16" else nullcontext
        held.enter_context(frozen_weights(model))

        def call():
            with torch.inference_mode(), context():
                output = model(features)
            return output.logits.float().numpy(), output.clip_logits.float().numpy()

        return call
    inputs = features.numpy()
    if runtime == "ort":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda: tuple(session.run(None, {name: inputs}))
    import openvino

    core = openvino.Core()
    precision = runtime.removeprefix("openvino-")
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"})
    return lambda: tuple(compiled([inputs]).values())


def probabilities(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(clip, frame) sigmoid probabilities from a child's saved logits."""
    saved = np.load(path)
    return tuple(1 / (1 + np.exp(-saved[key].astype(np.float64))) for key in ("clips", "frames"))


def child(args) -> int:
    """Time one runtime in this process; print one JSON line: median seconds per call, or the missing module."""
    torch.set_num_threads(args.threads)
    model, features = build(args.tiny, args.batch_size)
    with ExitStack() as held:
        try:
            call = make_call(args.child, model, features, Path(args.onnx), args.threads, held)
        except ImportError as error:
            print(json.dumps({"missing": error.name or str(error)}))
            return 0
        for _ in range(args.warmup):
            frames, clips = call()
        seconds = []
        for _ in range(args.calls):
            start = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - start)
    np.savez(Path(args.onnx).parent / f"{args.child}.npz", frames=frames, clips=clips)
    print(json.dumps({"seconds": statistics.median(seconds)}))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtimes", nargs="+", default=RUNTIMES, choices=RUNTIMES)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="processes per runtime, alternating between runtimes")
    parser.add_argument("--calls", type=int, default=9, help="timed calls per process (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--tiny", action="store_true", help="a tiny configuration (a smoke test, not a measurement)")
    parser.add_argument("--child", choices=RUNTIMES, help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    with tempfile.TemporaryDirectory(prefix="htsat-runtimes-") as folder:
        onnx_path = Path(folder) / "htsat.onnx"
        model, _ = build(args.tiny, args.batch_size)
        model.save_pretrained(Path(folder) / "model")
        export_onnx(model, onnx_path, task="detection", verify=False)
        runtimes = list(dict.fromkeys(["eager-fp32", *args.runtimes]))  # the reference of the gaps
        seconds, missing = {runtime: [] for runtime in runtimes}, {}
        for _ in range(args.rounds):
            for runtime in runtimes:
                if runtime in missing:
                    continue
                command = [sys.executable, __file__, "--child", runtime, "--onnx", str(onnx_path), "--batch-size",
                           str(args.batch_size), "--calls", str(args.calls), "--warmup", str(args.warmup),
                           "--threads", str(args.threads)] + (["--tiny"] if args.tiny else [])
                result = subprocess.run(command, capture_output=True, text=True, check=True)
                report = json.loads(result.stdout.strip().splitlines()[-1])
                if "missing" in report:
                    missing[runtime] = report["missing"]
                else:
                    seconds[runtime].append(report["seconds"])
        reference = probabilities(Path(folder) / "eager-fp32.npz")
        print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, {args.rounds} rounds of "
              f"{args.calls} calls per runtime, each runtime in its own process\n")
        print("| runtime | clips/s | GFLOP/s | vs eager fp32 | largest gap to eager fp32: clip / frame probabilities |")
        print("| --- | --- | --- | --- | --- |")
        base = statistics.median(seconds["eager-fp32"])
        for runtime in runtimes:
            if runtime in missing:
                print(f"| {runtime} | not installed ({missing[runtime]}) | | | |")
                continue
            median = statistics.median(seconds[runtime])
            gaps = [np.abs(ours - theirs).max() for ours, theirs in zip(probabilities(Path(folder) / f"{runtime}.npz"),
                                                                         reference)]
            gflops = "" if args.tiny else f"{GFLOPS_PER_CLIP * args.batch_size / median:.1f}"
            print(f"| {runtime} | {args.batch_size / median:.2f} | {gflops} | {base / median:.2f}x | "
                  f"{gaps[0]:.1e} / {gaps[1]:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
