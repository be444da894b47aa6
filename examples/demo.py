#!/usr/bin/env python
"""The offline demo (`make demo`): everything on locally generated sounds, no network, about two minutes on 2 CPU
cores.

1. generate a labelled data set of five synthetic sound classes (train and held-out clips, weakly labelled: one label
   per clip), and training scenes with strong labels (each event's onset, offset and class);
2. train a small HTS-AT on the clips with run_audio_classification.py, and evaluate it on the held-out clips;
3. classify one new clip with `pipeline("audio-classification")`;
4. fine-tune that model on the strong labels with run_sed.py (`--do_train`): clip labels never show the model where
   in a clip a sound starts and ends, so its frame scores alone place events poorly;
5. detect events in a 30 s recording with several events using run_sed.py, writing the events TSV and a timeline PNG,
   and score them against the recording's true events (collar event F1, as DCASE);
6. print how well the detection did, event by event, and where everything is.

    python examples/demo.py [--output-dir outputs/demo] [--epochs 10] [--sed-epochs 15] [--seed 0] [--scene-seed 7]

The model reads 2 s clips, so run_sed.py detects with 2 s windows (the saved feature extractor's clip length). The
scene holds every class at least once, so that every class the model can detect is scored (a detection of a class
absent from the ground truth would stop run_sed.py's scoring).
"""

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLING_RATE = 32000
CLIP_SECONDS = 2.0
SCENE_NAME = "scene_30s.wav"
# Detection settings, fixed before looking at any scene: the sigmoid's midpoint and a median filter of 0.5 s.
THRESHOLD = 0.5
MEDIAN_FILTER_SECONDS = 0.5
COLLAR_SECONDS = 0.2  # onset collar; offset collar max(0.2 s, 20 % of the event), as DCASE and run_sed.py score
OFFSET_FRACTION = 0.2
MIN_EVENT_SECONDS, MAX_EVENT_SECONDS = 1.0, 4.0  # the events' lengths, in the recording and in the training scenes


def step(number: int, total: int, text: str):
    print(f"\n[{number}/{total}] {text}", flush=True)


def run(command: list[str]):
    print("  $ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def make_data(data_dir: Path, seed: int = 0) -> None:
    """Training and held-out clips of every class and background-only clips, from seeds `seed` and `seed + 1`; and
    the strong-label training scenes (`data_dir / "strong"`), from seed `seed + 1000` (far from the scene seeds)."""
    from htsat_hf.synthetic import SOUND_CLASSES, make_classification_folder, make_detection_folder

    # The training clips are random 2 s stretches of sounds of 2 to 4 s, the events' lengths in the scenes: a
    # detector's window also sees the middle and the end of long events, where a chirp has swept far above its start.
    # overwrite=True: a second `make demo` replaces the first one's data as a whole.
    make_classification_folder(data_dir / "train", SOUND_CLASSES, 12, CLIP_SECONDS, seed=seed, background_clips=12,
                               max_sound_seconds=MAX_EVENT_SECONDS, overwrite=True)
    make_classification_folder(data_dir / "eval", SOUND_CLASSES, 4, CLIP_SECONDS, seed=seed + 1, background_clips=4,
                               overwrite=True)
    # Scenes drawn as the demo's recording is (events of 1 to 4 s, every class in each), 24 of 20 s: run_sed.py cuts
    # them into 2 s windows, in which the events start and end at every place, so the frame targets teach onsets and
    # offsets for every class; the gaps between events teach silence.
    make_detection_folder(data_dir / "strong", num_files=24, seconds=20.0, sampling_rate=SAMPLING_RATE,
                          classes=SOUND_CLASSES, events_per_file=4, seed=seed + 1000, min_event=MIN_EVENT_SECONDS,
                          max_event=MAX_EVENT_SECONDS, every_class=True, overwrite=True)


def make_scene_files(data_dir: Path, scene_seed: int = 7, name: str = SCENE_NAME) -> tuple[Path, Path, list]:
    """A 30 s scene with 6 events (every class at least once) and its true events as a ground-truth TSV
    (filename, onset, offset, event_label). Returns the audio's path, the TSV's path and the events."""
    import soundfile

    from htsat_hf.synthetic import SOUND_CLASSES, make_scene

    rng = np.random.default_rng(scene_seed)
    scene, events = make_scene(30.0, SAMPLING_RATE, rng, SOUND_CLASSES, num_events=6, min_event=MIN_EVENT_SECONDS,
                               max_event=MAX_EVENT_SECONDS, every_class=True)
    events = [(float(onset), float(offset), label) for onset, offset, label in events]
    data_dir.mkdir(parents=True, exist_ok=True)
    scene_path = data_dir / name
    soundfile.write(scene_path, scene, SAMPLING_RATE)
    truth_path = scene_path.with_suffix(".events.tsv")
    with truth_path.open("w") as handle:
        handle.write("filename\tonset\toffset\tevent_label\n")
        handle.write("".join(f"{name}\t{a}\t{b}\t{c}\n" for a, b, c in events))
    return scene_path, truth_path, events


def train_command(data_dir: Path, model_dir: Path, epochs: int, seed: int) -> list[str]:
    # Clips and model windows of 2 s: the 2 s clips are not padded, which lets a model this small learn in a minute.
    # Multi-label (sigmoid) training with background-only clips, so that the detector stays quiet between events.
    return [
        sys.executable, "run_audio_classification.py",
        "--train_dir", str(data_dir / "train"), "--eval_dir", str(data_dir / "eval"),
        "--config_overrides", "embed_dim=16,depths=[2,2,2,2],num_heads=[1,2,4,8],drop_path_rate=0.0",
        "--multi_label", "true", "--max_length_seconds", str(CLIP_SECONDS), "--output_dir", str(model_dir),
        "--do_train", "--do_eval", "--num_train_epochs", str(epochs), "--per_device_train_batch_size", "8",
        "--learning_rate", "1e-3", "--lr_schedule", "trainer",
        "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "10", "--report_to", "none",
        "--seed", str(seed), "--disable_tqdm", "false",
        "--overwrite_output_dir", "true",  # a second `make demo` replaces the first one's model
    ]


def fine_tune_command(data_dir: Path, model_dir: Path, sed_model_dir: Path, epochs: int, seed: int) -> list[str]:
    # Frame targets from the strong labels, starting from the clip-trained model (same classes, so its head is kept).
    # No SpecAugment, a learning rate of 2e-3 and 15 epochs (of 240 windows, about a minute): a short run that must
    # learn every class's onsets and offsets; chosen on 3 training seeds x 8 scene seeds, not on one scene.
    return [
        sys.executable, "run_sed.py", "--model_name_or_path", str(model_dir), "--do_train",
        "--train_dir", str(data_dir / "strong"), "--spec_augment", "false", "--output_dir", str(sed_model_dir),
        "--num_train_epochs", str(epochs), "--per_device_train_batch_size", "8", "--learning_rate", "2e-3",
        "--save_strategy", "no", "--logging_steps", "20", "--report_to", "none", "--seed", str(seed),
        "--disable_tqdm", "false",
        "--overwrite_output_dir", "true",  # a second `make demo` replaces the first one's fine-tuned model
    ]


def detect_command(model_dir: Path, scene_path: Path, truth_path: Path, sed_dir: Path) -> list[str]:
    # No --window_seconds: the windows are the saved feature extractor's clip, the 2 s the model was trained on.
    return [
        sys.executable, "run_sed.py", "--model_name_or_path", str(model_dir), "--inputs", str(scene_path),
        "--ground_truth", str(truth_path), "--threshold", str(THRESHOLD),
        "--median_filter_seconds", str(MEDIAN_FILTER_SECONDS), "--output_dir", str(sed_dir),
    ]


def read_events(path: Path) -> list[tuple[float, float, str]]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [(float(row["onset"]), float(row["offset"]), row["event_label"]) for row in rows if row["event_label"]]


def matches(truth: tuple, detected: tuple) -> bool:
    """The collar rule of the event F1: same label, onset within 200 ms, offset within max(200 ms, 20 % of the true
    event's length)."""
    onset, offset, label = truth
    collar = max(COLLAR_SECONDS, OFFSET_FRACTION * (offset - onset))
    return (label == detected[2] and abs(detected[0] - onset) <= COLLAR_SECONDS
            and abs(detected[1] - offset) <= collar)


def event_listing(truth: list[tuple], detected: list[tuple]) -> tuple[list[str], int, int, int]:
    """One line per true event (with the detection matched to it, or 'missed') and per detection matched to none
    ('false alarm'); and the counts of hits, misses and false alarms."""
    unused = list(detected)
    lines, hits = [], 0
    for event in truth:
        match = next((d for d in unused if matches(event, d)), None)
        if match is None:
            near = [d for d in unused if d[0] < event[1] and d[1] > event[0]]
            seen = ", ".join(f"{d[2]} {d[0]:.2f}-{d[1]:.2f}" for d in near)
            overlap = f" (overlaps {seen})" if seen else ""
            lines.append(f"  {event[0]:6.2f}-{event[1]:6.2f}  {event[2]:>7}   missed{overlap}")
        else:
            unused.remove(match)
            hits += 1
            lines.append(f"  {event[0]:6.2f}-{event[1]:6.2f}  {event[2]:>7}   found  {match[0]:6.2f}-{match[1]:6.2f}")
    for d in unused:
        lines.append(f"  {'':13}  {'':>7}   false alarm: {d[2]} {d[0]:.2f}-{d[1]:.2f}")
    return lines, hits, len(truth) - hits, len(unused)


def report_detection(sed_dir: Path, truth: list[tuple]) -> dict:
    """Print the collar event F1 from run_sed.py's metrics.json and the per-event listing; returns a summary."""
    metrics = json.loads((sed_dir / "metrics.json").read_text())["collar_event_f1"]
    detected = read_events(sed_dir / "events.tsv")
    lines, hits, misses, false_alarms = event_listing(truth, detected)
    print(f"  event F1 against the {len(truth)} true events (collar {1000 * COLLAR_SECONDS:.0f} ms on onsets, "
          f"max({1000 * COLLAR_SECONDS:.0f} ms, {100 * OFFSET_FRACTION:.0f} % of the event) on offsets): "
          f"{metrics['micro_f1']:.3f} (class average {metrics['macro_f1']:.3f})")
    print(f"  {hits} of {len(truth)} found, {misses} missed, {false_alarms} false alarms")
    print(f"  {'true event (s)':>13}  {'label':>7}   detection (s)")
    print("\n".join(lines))
    return {"micro_f1": metrics["micro_f1"], "macro_f1": metrics["macro_f1"], "hits": hits, "misses": misses,
            "false_alarms": false_alarms}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs" / "demo")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of clip (weak-label) training")
    parser.add_argument("--sed-epochs", type=int, default=15, help="epochs of strong-label fine-tuning")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training data and of training")
    parser.add_argument("--scene-seed", type=int, default=7, help="seed of the 30 s scene")
    args = parser.parse_args(argv)
    out = args.output_dir.resolve()
    started = time.time()
    total = 6

    from htsat_hf.synthetic import SOUND_CLASSES

    step(1, total, f"generating {len(SOUND_CLASSES)} sound classes ({', '.join(SOUND_CLASSES)}) in {out / 'data'}: "
                   "labelled clips, and scenes with strong labels")
    make_data(out / "data", args.seed)
    scene_path, truth_path, events = make_scene_files(out / "data", args.scene_seed)

    model_dir = out / "model"
    step(2, total, "training a small HTS-AT (16-dim, depths 2-2-2-2) with run_audio_classification.py")
    run(train_command(out / "data", model_dir, args.epochs, args.seed))
    metrics = json.loads((model_dir / "eval_results.json").read_text())
    print(f"  held-out mAP: {metrics['eval_mAP']:.3f}, mAUC: {metrics['eval_mAUC']:.3f} (chance: mAUC 0.5)")

    step(3, total, "classifying a new clip with pipeline('audio-classification')")
    import htsat_hf  # noqa: F401  (registers the model with transformers' Auto classes)
    from htsat_hf.synthetic import synth_sound
    from transformers import pipeline

    classifier = pipeline("audio-classification", model=str(model_dir))
    clip = synth_sound("chirp", CLIP_SECONDS, SAMPLING_RATE, np.random.default_rng(99))
    for result in classifier(clip, top_k=3):
        print(f"  {result['label']:>8}  {result['score']:.3f}")

    sed_model_dir = out / "sed_model"
    step(4, total, "fine-tuning it for detection on strong labels (each event's onset and offset) with run_sed.py "
                   "--do_train")
    run(fine_tune_command(out / "data", model_dir, sed_model_dir, args.sed_epochs, args.seed))

    step(5, total, f"detecting events in a 30 s recording with run_sed.py, scored against its {len(events)} true "
                   f"events ({truth_path.name})")
    sed_dir = out / "detection"
    run(detect_command(sed_model_dir, scene_path, truth_path, sed_dir))

    step(6, total, "how well the detection did")
    report_detection(sed_dir, events)
    print(f"\n  done in {time.time() - started:.0f} s")
    print(f"  data:            {out / 'data'} (true events: {truth_path})")
    print(f"  trained model:   {model_dir} (eval_results.json, config.json, model.safetensors)")
    print(f"  detection model: {sed_model_dir} (fine-tuned on {out / 'data' / 'strong'})")
    print(f"  detected events: {sed_dir / 'events.tsv'} (scores: {sed_dir / 'metrics.json'})")
    for png in sorted(sed_dir.rglob("*.png")):
        print(f"  timeline:        {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
