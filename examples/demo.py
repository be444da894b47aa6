#!/usr/bin/env python
"""The offline demo (`make demo`): everything on locally generated sounds, no network, a few minutes on 2 CPU cores.

1. generate a labelled data set of five synthetic sound classes (train and held-out clips);
2. train a small HTS-AT on it with run_audio_classification.py, and evaluate it on the held-out clips;
3. classify one new clip with `pipeline("audio-classification")`;
4. detect events in a 30 s recording with several events using run_sed.py, writing the events TSV and a timeline PNG;
5. print where everything is.

    python examples/demo.py [--output-dir outputs/demo] [--epochs 12]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def step(number: int, total: int, text: str):
    print(f"\n[{number}/{total}] {text}", flush=True)


def run(command: list[str]):
    print("  $ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs" / "demo")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    out = args.output_dir.resolve()
    started = time.time()
    total = 5

    import soundfile

    from htsat_hf.synthetic import SOUND_CLASSES, make_classification_folder, make_scene

    step(1, total, f"generating {len(SOUND_CLASSES)} sound classes ({', '.join(SOUND_CLASSES)}) in {out / 'data'}")
    make_classification_folder(out / "data" / "train", SOUND_CLASSES, 12, 2.0, seed=0, background_clips=12)
    make_classification_folder(out / "data" / "eval", SOUND_CLASSES, 4, 2.0, seed=1, background_clips=4)
    rng = np.random.default_rng(7)
    scene, events = make_scene(30.0, 32000, rng, SOUND_CLASSES, num_events=6, min_event=1.0, max_event=4.0)
    events = [(float(onset), float(offset), label) for onset, offset, label in events]
    scene_path = out / "data" / "scene_30s.wav"
    soundfile.write(scene_path, scene, 32000)
    with (out / "data" / "scene_30s.events.tsv").open("w") as handle:
        handle.write("onset\toffset\tevent_label\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in events))

    model_dir = out / "model"
    # Clips and model windows of 2 s: the 2 s clips are not padded, which lets a model this small learn in minutes.
    # Multi-label (sigmoid) training with background-only clips, so that the detector stays quiet between events.
    step(2, total, "training a small HTS-AT (16-dim, depths 2-2-2-2) with run_audio_classification.py")
    run([
        sys.executable, "run_audio_classification.py",
        "--train_dir", str(out / "data" / "train"), "--eval_dir", str(out / "data" / "eval"),
        "--config_overrides", "embed_dim=16,depths=[2,2,2,2],num_heads=[1,2,4,8],drop_path_rate=0.0",
        "--multi_label", "true", "--max_length_seconds", "2", "--output_dir", str(model_dir),
        "--do_train", "--do_eval", "--num_train_epochs", str(args.epochs), "--per_device_train_batch_size", "8",
        "--learning_rate", "1e-3", "--lr_schedule", "trainer",
        "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "10", "--report_to", "none",
        "--seed", "0", "--disable_tqdm", "false",
    ])
    metrics = json.loads((model_dir / "eval_results.json").read_text())
    print(f"  held-out mAP: {metrics['eval_mAP']:.3f}, mAUC: {metrics['eval_mAUC']:.3f} (chance: mAUC 0.5)")

    step(3, total, "classifying a new clip with pipeline('audio-classification')")
    import htsat_hf  # noqa: F401  (registers the model with transformers' Auto classes)
    from htsat_hf.synthetic import synth_sound
    from transformers import pipeline

    classifier = pipeline("audio-classification", model=str(model_dir))
    clip = synth_sound("chirp", 2.0, 32000, np.random.default_rng(99))
    for result in classifier(clip, top_k=3):
        print(f"  {result['label']:>8}  {result['score']:.3f}")

    step(4, total, f"detecting events in a 30 s recording with run_sed.py (true events: {events})")
    sed_dir = out / "detection"
    run([
        sys.executable, "run_sed.py", "--model_name_or_path", str(model_dir), "--inputs", str(scene_path),
        "--threshold", "0.5", "--median_filter_seconds", "0.5", "--output_dir", str(sed_dir),
    ])

    step(5, total, f"done in {time.time() - started:.0f} s")
    print(f"  data:            {out / 'data'}")
    print(f"  trained model:   {model_dir} (eval_results.json, config.json, model.safetensors)")
    print(f"  detected events: {sed_dir / 'events.tsv'}")
    for png in sorted(sed_dir.rglob("*.png")):
        print(f"  timeline:        {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
