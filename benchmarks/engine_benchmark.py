"""The collection engine (`htsat_hf.predict_files`) against the same model's batched in-memory throughput, in one
process: many short files, and long files read block by block.

Rows, for each precision (fp32: the model as built; bf16: its weights cast to bfloat16, no autocast):

  collection   `--files` 10 s files (16-bit WAV at 32 kHz) through the engine with `--workers` decoding workers,
               files/s against the in-memory clips/s (goal >= 0.9)
  long         one file of each `--long-seconds`: the engine's wall time against (its number of windows / the
               in-memory clips/s) (goal <= 1.1), and the peak resident memory growth over the loaded model (goal
               <= 300 MB, whatever the duration)

The in-memory throughput is clips/s of the feature extractor on in-memory 10 s waveforms plus `model(features)` at
`--batch-size`, the work the engine does per window with nothing to decode. It is measured right before each
engine row, so that both see the same load on a shared machine.

Memory growth: the main process's peak resident set during the engine run (the kernel's high-water mark `VmHWM`,
reset just before through `/proc/self/clear_refs`) above its resident set before the run, plus each decoding
worker's peak private memory (`Private_*` of `/proc/PID/smaps_rollup`, sampled; pages the worker shares with the
main process are counted once, in the main process). It includes the forward pass's activations at the batch size
and the engine's results; the in-memory loop's own growth is shown beside it, and `--json` splits the growth into
the main process's and the workers' parts. The results are part of the growth: a random model's scores hover
around the threshold and make about 175,000 events per hour (the "events" column; 4 million in a day), which a
trained model does not. Each file's events are its output and are held until the file ends, so the row also gives
their size (the `Event` objects returned, "of which events MB") and the growth less them, the engine's own working
memory (decoding, windows, scores), which is what must stay flat in the duration. Linux only.

Test files are generated once into `--work-dir` (reused by later runs; the long ones are written a minute at a time,
so generation stays flat in memory too: 24 h at 32 kHz is 5.5 GB on disk), and `--delete-long` removes the long ones
at the end.

    python benchmarks/engine_benchmark.py --work-dir /tmp/htsat-engine-bench            # 500 files, 1 h and 24 h
    python benchmarks/engine_benchmark.py --quick --work-dir /tmp/htsat-engine-bench    # 20 files, 2 and 10 min
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

from htsat_hf import HTSATConfig, HTSATFeatureExtractor, HTSATForSoundEventDetection, predict_files
from htsat_hf.engine import WindowPlan

SAMPLING_RATE = 32000
CLIP_SECONDS = 10
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Full and --quick sizes: number of 10 s files, durations of the long files in seconds.
FULL = dict(files=500, long_seconds=[3600, 24 * 3600])
QUICK = dict(files=20, long_seconds=[120, 600])
GOALS = {"collection": ">= 0.9", "long": "<= 1.1"}
MEMORY_GOAL_MB = 300


# --------------------------------------------------------------------------------------------------------- files


def clip_paths(folder: Path, count: int) -> list[Path]:
    """`count` 10 s 16-bit WAV files at 32 kHz in `folder`, generated where missing (noise and a tone, seeded)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"clip_{index:05d}.wav" for index in range(count)]
    frames = CLIP_SECONDS * SAMPLING_RATE
    for index, path in enumerate(paths):
        if path.exists() and soundfile.info(path).frames == frames:
            continue
        rng = np.random.default_rng(index)
        t = np.arange(frames) / SAMPLING_RATE
        wave = 0.05 * rng.standard_normal(frames) + 0.3 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t)
        _write_atomically(path, lambda handle, wave=wave: handle.write(wave))
    return paths


def long_file(folder: Path, seconds: int) -> Path:
    """A `seconds`-long 16-bit WAV at 32 kHz in `folder`, generated where missing, a minute at a time (a few
    seeded minutes of noise and tones, repeated with varying gain) so that generating a day stays flat in memory."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"long_{seconds}s.wav"
    if path.exists() and soundfile.info(path).frames == seconds * SAMPLING_RATE:
        return path
    minute = 60 * SAMPLING_RATE
    t = np.arange(minute) / SAMPLING_RATE
    pool = [0.05 * np.random.default_rng(seed).standard_normal(minute) + 0.2 * np.sin(2 * np.pi * 440 * (seed + 1) * t)
            for seed in range(4)]

    def write(handle):
        for start in range(0, seconds * SAMPLING_RATE, minute):
            index = start // minute
            block = pool[index % len(pool)] * (0.5 + 0.5 * ((index * 7) % 10) / 10)
            handle.write(block[: seconds * SAMPLING_RATE - start])

    _write_atomically(path, write)
    return path


def _write_atomically(path: Path, write) -> None:
    """Write through a temporary name, so that an interrupted generation is not taken for a finished file."""
    partial = path.with_name(path.name + ".partial")
    with soundfile.SoundFile(partial, "w", samplerate=SAMPLING_RATE, channels=1, subtype="PCM_16",
                             format="WAV") as handle:
        write(handle)
    os.replace(partial, path)


# -------------------------------------------------------------------------------------------------------- memory


def _status_kb(field: str, pid: str = "self") -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def _private_kb(pid: int) -> int:
    """A process's private resident memory (what it costs beyond the pages it shares), 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return sum(int(value) for value in re.findall(r"^Private_(?:Clean|Dirty):\s+(\d+) kB", text, re.MULTILINE))


def _children() -> list[int]:
    pids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:  # a thread that ended meanwhile
            continue
    return pids


def _release_freed_memory() -> None:
    """Hand freed heap back to the system (glibc's `malloc_trim`), so the next baseline is what is in use."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc
        pass


class PeakMemory:
    """Peak resident memory growth of this process and its children (the DataLoader's workers) over a `with` block,
    in bytes (see the module docstring)."""

    # Once a second: reading a worker's smaps_rollup walks its page tables (a forked worker maps the whole model),
    # and at 20 Hz the sampling alone took about a quarter of the engine's throughput on 2 cores.
    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.workers: dict[int, int] = {}  # pid -> peak private kB
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.wait(self.interval):
            for pid in _children():
                self.workers[pid] = max(self.workers.get(pid, 0), _private_kb(pid))

    def __enter__(self):
        _release_freed_memory()
        self.baseline_kb = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.main_kb = _status_kb("VmHWM") - self.baseline_kb
        self.growth = 1024 * (self.main_kb + sum(self.workers.values()))

    def describe(self) -> dict:
        """The growth in MB, and its parts: the main process's, and the workers' private memory."""
        return dict(memory_growth_mb=self.growth / 2**20, main_growth_mb=self.main_kb / 1024,
                    workers_private_mb=sum(self.workers.values()) / 1024)


# ---------------------------------------------------------------------------------------------------- measuring


def in_memory_throughput(model, extractor, batch_size: int, rounds: int) -> tuple[float, int]:
    """`(clips/s, peak memory growth in bytes)` of feature extraction plus `model(features)` on in-memory 10 s
    waveforms, `batch_size` at a time: the median of `rounds` timed batches after a warm-up (the median, not the
    best, as the engine's wall time is an average too)."""
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(CLIP_SECONDS * SAMPLING_RATE)).astype(np.float32) for _ in range(batch_size)]

    def batch():
        features = extractor(waves, sampling_rate=SAMPLING_RATE, return_tensors="pt")["input_features"]
        model(features.to(model.dtype))

    with torch.no_grad():
        with PeakMemory() as memory:
            batch()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            batch()
            times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times), memory.growth


def results_bytes(predictions) -> int:
    """The Python objects of the events in `predictions` (lists, `Event` tuples and their floats; labels are shared
    strings): the part of the memory growth that is the output itself and grows with what the model finds."""
    total = 0
    for prediction in predictions:
        total += sys.getsizeof(prediction.events)
        for event in prediction.events:
            total += sys.getsizeof(event) + sys.getsizeof(event.onset) + sys.getsizeof(event.offset)
            total += sys.getsizeof(event.score)
    return total


def run_engine(model, extractor, paths: list[Path], batch_size: int,
               workers: int) -> tuple[float, PeakMemory, int, int]:
    """`(wall seconds, its memory measurement, number of events found, bytes of the events)` of `predict_files`
    over `paths`."""
    with PeakMemory() as memory:
        start = time.perf_counter()
        predictions = predict_files([str(path) for path in paths], model, extractor, batch_size=batch_size,
                                    num_workers=workers)
        seconds = time.perf_counter() - start
    if len(predictions) != len(paths):
        raise RuntimeError(f"the engine returned {len(predictions)} results for {len(paths)} files")
    return seconds, memory, sum(len(prediction.events) for prediction in predictions), results_bytes(predictions)


def windows_of(plan: WindowPlan, num_samples: int) -> int:
    """Model windows the engine runs on a file of `num_samples` samples: full windows every hop, the last zero
    padded when the audio runs past the last full one (`sed.windows.sliding_window_scores`' rule)."""
    if num_samples <= plan.window:
        return 1
    return 1 + -(-(num_samples - plan.window) // plan.hop)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown CPU"


# ------------------------------------------------------------------------------------------------------ the runs


def build_model(tiny: bool) -> tuple[HTSATForSoundEventDetection, HTSATFeatureExtractor]:
    """The full-size model (HTSATConfig defaults, 527 classes) with random weights (seeded); `tiny` for the smoke
    test."""
    torch.manual_seed(0)
    config = HTSATConfig(**(dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8]) if tiny else {}))
    return HTSATForSoundEventDetection(config).eval(), HTSATFeatureExtractor.from_config(config)


def benchmark(args) -> dict:
    work_dir = Path(args.work_dir)
    sizes = QUICK if args.quick else FULL
    files = args.files if args.files is not None else sizes["files"]
    long_seconds = args.long_seconds if args.long_seconds is not None else sizes["long_seconds"]
    print(f"generating test files in {work_dir} (kept for later runs)", file=sys.stderr)
    clips = clip_paths(work_dir / "clips-10s", files)
    long_paths = [long_file(work_dir, seconds) for seconds in long_seconds]

    rows = []
    try:
        for label in args.dtypes:
            model = extractor = None  # the previous precision's model goes before the next is built
            _release_freed_memory()
            model, extractor = build_model(args.tiny)
            model.to(DTYPES[label])
            plan = WindowPlan.for_model(model.config, extractor)
            loaded_mb = _status_kb("VmRSS") / 1024
            # Collection row: 10 s files (one window each) against in-memory clips/s.
            clips_per_second, batch_growth = in_memory_throughput(model, extractor, args.batch_size, args.rounds)
            seconds, memory, *events = run_engine(model, extractor, clips, args.batch_size, args.workers)
            rows.append(_row(label, "collection", f"{files} x {CLIP_SECONDS} s", files, seconds, clips_per_second,
                             memory, batch_growth, loaded_mb, *events))
            for path, duration in zip(long_paths, long_seconds, strict=True):
                clips_per_second, batch_growth = in_memory_throughput(model, extractor, args.batch_size, args.rounds)
                seconds, memory, *events = run_engine(model, extractor, [path], args.batch_size, args.workers)
                rows.append(_row(label, "long", _duration_text(duration), windows_of(plan, duration * SAMPLING_RATE),
                                 seconds, clips_per_second, memory, batch_growth, loaded_mb, *events))
    finally:
        if args.delete_long:
            for path in long_paths:
                path.unlink(missing_ok=True)
    return dict(
        cpu=cpu_name(), torch_threads=torch.get_num_threads(), workers=args.workers, batch_size=args.batch_size,
        model="tiny" if args.tiny else "full-size (HTSATConfig defaults, 527 classes), random weights",
        load_average=os.getloadavg(), torch=torch.__version__, rows=rows,
    )


def _row(label: str, kind: str, audio: str, windows: int, seconds: float, clips_per_second: float,
         memory: PeakMemory, batch_growth: int, loaded_mb: float, events: int, events_bytes: int) -> dict:
    """One table row, printed as it is measured (a full run takes hours)."""
    speed = windows / seconds / clips_per_second  # engine windows/s over in-memory clips/s
    row = dict(dtype=label, row=kind, audio=audio, windows=windows, seconds=seconds,
               in_memory_clips_per_second=clips_per_second, engine_windows_per_second=windows / seconds,
               ratio=speed if kind == "collection" else 1 / speed, goal=GOALS[kind], **memory.describe(),
               in_memory_growth_mb=batch_growth / 2**20, loaded_rss_mb=loaded_mb, events=events,
               events_mb=events_bytes / 2**20,
               engine_growth_mb=memory.growth / 2**20 - events_bytes / 2**20)
    print(_format_row(row), file=sys.stderr)
    return row


def _duration_text(seconds: int) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds} s"


COLUMNS = ["dtype", "row", "audio", "windows", "seconds", "in_memory_clips_per_second", "engine_windows_per_second",
           "ratio", "goal", "memory_growth_mb", "events", "events_mb", "engine_growth_mb", "in_memory_growth_mb"]
HEADERS = ["dtype", "row", "audio", "windows", "wall s", "in-memory clips/s", "engine windows/s", "ratio", "goal",
           "memory growth MB", "events", "of which events MB", "growth less events MB", "in-memory batch growth MB"]


def _format_row(row: dict) -> str:
    cells = []
    for column in COLUMNS:
        value = row[column]
        cells.append(f"{value:.3g}" if isinstance(value, float) and column != "seconds" else
                     f"{value:.1f}" if isinstance(value, float) else str(value))
    return "| " + " | ".join(cells) + " |"


def markdown(result: dict) -> str:
    lines = [
        f"CPU: {result['cpu']}; torch {result['torch']}, {result['torch_threads']} threads; "
        f"{result['workers']} decoding workers; batch {result['batch_size']}; model: {result['model']}; "
        f"load average at the end: {', '.join(f'{x:.1f}' for x in result['load_average'])}",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += [_format_row(row) for row in result["rows"]]
    lines += ["", f"Ratio: collection = engine files/s / in-memory clips/s (goal {GOALS['collection']}); long = wall "
              f"time / (windows / in-memory clips/s) (goal {GOALS['long']}). Memory goal: growth less the events "
              f"<= {MEMORY_GOAL_MB} MB for the long files (flat in the duration)."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", required=True, help="where the test files are generated and kept")
    parser.add_argument("--quick", action="store_true", help="small sizes: 20 files, 2 and 10 minute files")
    parser.add_argument("--files", type=int, help="number of 10 s files (default 500, 20 with --quick)")
    parser.add_argument("--long-seconds", type=int, nargs="+",
                        help="durations of the long files in seconds (default 1 h and 24 h; 2 and 10 min with --quick)")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--workers", type=int, default=2, help="the engine's decoding workers")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="timed in-memory batches per measurement (median kept)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model (for the smoke test)")
    parser.add_argument("--delete-long", action="store_true", help="remove the long files at the end")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    result = benchmark(args)
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
