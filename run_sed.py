#!/usr/bin/env python
"""Sound event detection with HTS-AT: detect events in recordings, score them against DCASE-format ground truth,
score existing detections, or fine-tune on strong labels (CPU, one GPU, or `accelerate launch` for training).

    python run_sed.py --model_name_or_path htsat-audioset --class_map desed --inputs recordings/ --output_dir out
    python run_sed.py configs/desed.json
    python run_sed.py --score_only --predictions out/events.tsv --psds_predictions out/scores \
        --ground_truth gt.tsv --durations durations.tsv --output_dir scored
    python run_sed.py --do_train --train_dir data/train --eval_dir data/eval --model_name_or_path htsat-audioset \
        --output_dir finetuned --num_train_epochs 20 --learning_rate 1e-4

Arguments are those of the dataclasses below plus transformers' `TrainingArguments` (`--output_dir`, and the
training options); a single JSON file may hold them all. The logic lives in `htsat_hf.sed` (`detection` for runs and
scoring, `targets` for strong-label training data) and `htsat_hf.inputs`; this script wires it. The outputs of a run
are listed in `htsat_hf.sed.detection`'s docstring. Every problem with the inputs ends the run with one line,
`run_sed.py: error: ...`, and exit status 2.

Output folder: detection and scoring write their results into `--output_dir` beside the other files there, replacing
an earlier run's results only once all are written (`htsat_hf.sed.detection.staged_outputs`); no run writes into its
data (an `--output_dir` that is, contains or lies inside `--inputs`, `--train_dir`, `--eval_dir`, the ground truth or
another data file is refused). Training (`--do_train`) needs a new or empty `--output_dir`, as
`run_audio_classification.py` does (the same check, `htsat_hf.training.output_dir`): a folder that holds files (an
earlier run's `checkpoint-N` folders, which Trainer would rotate and resume from together with the new run's) is
refused, unless the run continues it
(`--resume_from_checkpoint`) or replaces it (`--overwrite_output_dir true`: its contents are deleted just before
training starts); it may not be, contain or lie inside one of the run's inputs (a resumed run's may contain the
checkpoint it continues). `--resume_from_checkpoint` is a `checkpoint-N` folder of an earlier run, or `true` (the last
one in `--output_dir`), checked before anything is created.

Several processes (`accelerate launch`): training runs in all of them; detection (of `--inputs`/`--dataset_name`,
and of `--eval_dir` after training) and scoring run in the main process only, which writes the same files as a
one-process run, while the others wait for it (`htsat_hf.distributed.together`: an error in it ends every process
with its line). They wait at most the process group's timeout, `--ddp_timeout` (default 1800 s): raise it for
longer detection runs, or detect with one process (`htsat-hf predict` shares inputs out across processes).
"""

import logging
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

import transformers
from transformers import HfArgumentParser, TrainingArguments, set_seed

from htsat_hf import HTSATFeatureExtractor, HTSATForSoundEventDetection
from htsat_hf.distributed import is_main_process, together
from htsat_hf.engine import InferenceEngine
from htsat_hf.errors import InputError, Stopped, error_line, stop_signals_raise
from htsat_hf.inputs import collect_inputs, dataset_items
from htsat_hf.loading import DTYPES, load_feature_extractor
from htsat_hf.sed.detection import (
    SHORT_AUDIO_MODES,
    check_audio_items,
    check_reference_audio,
    load_detection_model,
    metrics_table,
    prepare_output_dir,
    read_reference,
    resolve_settings,
    run_detection,
    score_predictions,
)
from htsat_hf.sed.io import read_thresholds
from htsat_hf.sed.postprocessing import load_class_map
from htsat_hf.sed.targets import (
    TARGET_MODES,
    StrongLabelCollator,
    compute_frame_metrics,
    read_strong_label_dir,
    read_strong_labels,
    strong_label_inputs,
)
from htsat_hf.training.model_setup import build_config, load_for_labels
from htsat_hf.training.output_dir import (
    OVERWRITE_HELP,
    check_overwrite_options,
    clear_output_dir,
    prepare_training_output_dir,
    resolve_resume_checkpoint,
)
from htsat_hf.training.trainer import HTSATTrainer

logger = logging.getLogger("run_sed")


# --------------------------------------------------------------------------------------------------------- arguments


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "HTS-AT model directory or Hub id (loaded as HTSATForSoundEventDetection); the start of "
                          "fine-tuning with --do_train."},
    )
    config_name: str | None = field(
        default=None, metadata={"help": "HTSATConfig JSON file to train from scratch (with --do_train)."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Config fields to train from scratch: 'embed_dim=16,depths=[2,2,2,2],num_heads=[1,2,4,8]'."},
    )
    device: str | None = field(
        default=None, metadata={"help": "Device for detection, e.g. 'cpu', 'cuda', 'cuda:1' (default: cuda if any)."}
    )


@dataclass
class DetectionArguments:
    inputs: list[str] = field(
        default_factory=list,
        metadata={"help": "Audio files, folders (their audio files, searched recursively; a file in a sub-folder is "
                          "named by its path inside the folder, e.g. sub/a.wav) or list files (one path per line, "
                          "relative to the list file; '#' starts a comment)."},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "A `datasets` dataset (Hub id or local directory) to detect events in."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration name."})
    split: str = field(default="test", metadata={"help": "Its split."})
    audio_column_name: str = field(default="audio", metadata={"help": "Its audio column."})
    class_map: str | None = field(
        default=None,
        metadata={"help": "Map the model's classes to target classes: 'desed' (AudioSet to DESED, with the paper's "
                          "per-class thresholds) or a class map JSON file."},
    )
    threshold: float | None = field(
        default=None, metadata={"help": "One threshold for every class (default 0.5, or the class map's thresholds)."}
    )
    thresholds_file: str | None = field(
        default=None, metadata={"help": "Per-class thresholds: JSON {label: threshold} or TSV label<TAB>threshold."}
    )
    median_filter_seconds: float | None = field(
        default=None, metadata={"help": "Median filter length in seconds (default none; odd number of steps)."}
    )
    min_duration: float = field(default=0.0, metadata={"help": "Drop events shorter than this (seconds)."})
    min_gap: float = field(default=0.0, metadata={"help": "Join events of a class closer than this (seconds)."})
    window_seconds: float | None = field(
        default=None, metadata={"help": "Sliding window length (default: the model's clip, 10 s)."}
    )
    hop_seconds: float | None = field(
        default=None, metadata={"help": "Distance between windows (default: half a window); overlaps are averaged."}
    )
    batch_size: int = field(default=8, metadata={"help": "Windows per forward pass (packed across files)."})
    num_workers: int = field(
        default=0, metadata={"help": "Processes decoding audio, block by block, for detection (0: the main process)."}
    )
    dtype: str | None = field(
        default=None,
        metadata={"help": "Precision to load the detection model in (default: as saved).",
                  "choices": list(DTYPES)},
    )
    short_audio: str = field(
        default="stretch",
        metadata={"help": "Audio shorter than a window: 'stretch' it over the model's 32 steps (the pipeline's "
                          "behaviour) or 'pad' it with zeros to a full window (the original DESED protocol, and how "
                          "training clips are presented).", "choices": list(SHORT_AUDIO_MODES)},
    )
    plot: bool = field(default=True, metadata={"help": "Save a PNG per file (spectrogram, activity, events)."})
    max_plots: int | None = field(default=None, metadata={"help": "Plot at most this many files."})
    plot_top_k: int = field(default=5, metadata={"help": "Classes shown besides those with events."})
    skip_bad_audio: bool = field(
        default=False, metadata={"help": "Skip missing, unreadable, empty or too short audio (counted and logged)."}
    )


@dataclass
class EvaluationArguments:
    ground_truth: str | None = field(
        default=None, metadata={"help": "Ground truth TSV (filename, onset, offset, event_label) to score against."}
    )
    durations: str | None = field(
        default=None,
        metadata={"help": "Durations TSV (filename, duration); default for detection runs: the audio's lengths."},
    )
    threshold_sweep: int = field(
        default=0,
        metadata={"help": "Also compute PSDS from this many operating points (thresholds (k + 0.5) / N), as DCASE "
                          "did before scores-based PSDS; 0: off."},
    )
    score_only: bool = field(
        default=False, metadata={"help": "Score existing detections (--predictions) without running a model."}
    )
    predictions: str | None = field(
        default=None,
        metadata={"help": "With --score_only: an events TSV/CSV, a directory of per-threshold TSVs "
                          "(predictions_th_0.50.tsv) or a directory of sed_scores_eval score TSVs."},
    )
    psds_predictions: str | None = field(
        default=None,
        metadata={"help": "With --score_only: the directory (operating points or scores) to compute PSDS from, when "
                          "--predictions is an events file."},
    )


@dataclass
class StrongLabelArguments:
    train_dir: str | None = field(
        default=None, metadata={"help": "Training folder: audio/ and annotations.tsv (strong labels)."}
    )
    eval_dir: str | None = field(
        default=None, metadata={"help": "Evaluation folder, same layout; scored with the detection metrics after "
                                        "training (into <output_dir>/eval_detection)."}
    )
    target_mode: str = field(
        default="fraction",
        metadata={"help": "Frame targets: 'fraction' of each model step covered by an event, or 'majority' (1 where "
                          ">= half is covered).", "choices": list(TARGET_MODES)},
    )
    spec_augment: bool = field(default=True, metadata={"help": "SpecAugment in training (the config's stripes)."})
    # Here rather than in TrainingArguments, which no longer has it (transformers 5); as run_audio_classification.py's.
    overwrite_output_dir: bool = field(default=False, metadata={"help": OVERWRITE_HELP})


def parse_arguments(argv=None):
    parser = HfArgumentParser(
        (ModelArguments, DetectionArguments, EvaluationArguments, StrongLabelArguments, TrainingArguments)
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])
    return parser.parse_args_into_dataclasses(argv)


# ------------------------------------------------------------------------------------------------------------- wiring


def _number(name: str, value, minimum: float | None = 0.0, strict: bool = True, maximum: float | None = None,
            integer: bool = False) -> None:
    """Refuse an option value that is not a finite number in range, naming the option."""
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise InputError(f"--{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise InputError(f"--{name} must be a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise InputError(f"--{name} must be {'above' if strict else 'at least'} {minimum:g}, got {value!r}")
    if maximum is not None and value > maximum:
        raise InputError(f"--{name} must be at most {maximum:g}, got {value!r}")


def check_options(model_args: ModelArguments, args: DetectionArguments, evaluation: EvaluationArguments,
                  data_args: StrongLabelArguments, training_args: TrainingArguments) -> None:
    """Refuse, before a model is loaded or anything is written, every option value that cannot work, with one line
    naming the option (values that depend on the model, such as a window longer than its clip or a class map for
    another class count, are checked once it is loaded, still before anything is written)."""
    _number("batch_size", args.batch_size, integer=True)
    _number("num_workers", args.num_workers, strict=False, integer=True)
    for name in ("window_seconds", "hop_seconds"):
        if getattr(args, name) is not None:
            _number(name, getattr(args, name))
    if args.window_seconds is not None and args.hop_seconds is not None and args.hop_seconds > args.window_seconds:
        raise InputError(f"--hop_seconds ({args.hop_seconds:g}) must not exceed --window_seconds "
                         f"({args.window_seconds:g}): audio between windows would not be scored")
    if args.median_filter_seconds is not None:
        _number("median_filter_seconds", args.median_filter_seconds, strict=False)
    _number("min_duration", args.min_duration, strict=False)
    _number("min_gap", args.min_gap, strict=False)
    if args.max_plots is not None:
        _number("max_plots", args.max_plots, strict=False, integer=True)
    _number("plot_top_k", args.plot_top_k, strict=False, integer=True)
    _number("threshold_sweep", evaluation.threshold_sweep, strict=False, integer=True)
    if args.threshold is not None:
        _number("threshold", args.threshold, minimum=0.0, strict=False, maximum=1.0)
    if args.thresholds_file is not None:
        read_thresholds(args.thresholds_file)  # its format and values; its labels once the model is loaded
    threshold_option(args)
    if args.short_audio not in SHORT_AUDIO_MODES:
        raise InputError(f"--short_audio must be one of {list(SHORT_AUDIO_MODES)}, got {args.short_audio!r}")
    if data_args.target_mode not in TARGET_MODES:
        raise InputError(f"--target_mode must be one of {list(TARGET_MODES)}, got {data_args.target_mode!r}")
    if args.class_map is not None:
        load_class_map(args.class_map)  # its format; its fit to the model once loaded
    for name in ("ground_truth", "durations", "predictions", "psds_predictions"):
        value = getattr(evaluation, name)
        if value is not None and not Path(value).exists():
            raise InputError(f"--{name} {value}: no such file or folder")
    for name in ("train_dir", "eval_dir"):
        value = getattr(data_args, name)
        if value is not None and not Path(value).is_dir():
            raise InputError(f"--{name} {value}: no such folder")
    if model_args.device is not None:
        try:
            device = torch.device(model_args.device)
        except (RuntimeError, ValueError):
            raise InputError(f"--device {model_args.device!r} is not a device (e.g. cpu, cuda, cuda:1)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {model_args.device}: no CUDA device is available here")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {model_args.device}: there are {torch.cuda.device_count()} CUDA devices")
    score_only = evaluation.score_only
    if not score_only:
        for name in ("predictions", "psds_predictions"):
            if getattr(evaluation, name) is not None:
                raise InputError(f"--{name} is for --score_only (scoring existing detections)")
    if score_only:
        used = [name for name, value in (("inputs", args.inputs), ("dataset_name", args.dataset_name),
                                          ("do_train", training_args.do_train), ("train_dir", data_args.train_dir))
                if value]
        if used:
            raise InputError(f"--score_only scores existing detections; it does not take --{used[0]}")
    if not training_args.do_train:
        for name in ("train_dir", "eval_dir"):
            if getattr(data_args, name) is not None:
                raise InputError(f"--{name} is for training: add --do_train")
    check_overwrite_options(data_args.overwrite_output_dir, training_args.do_train,
                            training_args.resume_from_checkpoint)
    if training_args.do_train:  # a path, or "true": the last checkpoint in --output_dir
        training_args.resume_from_checkpoint = resolve_resume_checkpoint(training_args.resume_from_checkpoint,
                                                                         training_args.output_dir)


def prepare_output(model_args: ModelArguments, args: DetectionArguments, evaluation: EvaluationArguments,
                   data_args: StrongLabelArguments, training_args: TrainingArguments) -> tuple[Path, bool]:
    """Check `--output_dir` before anything is read or written, with
    `htsat_hf.training.output_dir.prepare_training_output_dir` as `run_audio_classification.py` checks its own: no
    run writes into its data (a folder that is, contains or lies inside `--inputs`, `--dataset_name`, `--train_dir`,
    `--eval_dir`, the ground truth, durations, class map or thresholds file is refused); a training run's folder is
    new or empty, unless resumed or `--overwrite_output_dir true`, and does not overlap the model it starts from; a
    detection or scoring run's is then created and checked for writing (its outputs replace an earlier run's in
    place, beside the folder's other files: a model's, or the detections being scored).

    Returns:
        the folder, and whether `--overwrite_output_dir` is to empty it (just before training).
    """
    data_inputs = (data_args.train_dir, data_args.eval_dir, *args.inputs, args.dataset_name, args.class_map,
                   args.thresholds_file, evaluation.ground_truth, evaluation.durations)
    model_inputs = (model_args.model_name_or_path, model_args.config_name,
                    training_args.resume_from_checkpoint if training_args.do_train else None)
    # Not created here: under `accelerate launch` another process may still be checking that the folder is empty.
    output_dir, clear = prepare_training_output_dir(training_args.output_dir, data_inputs, model_inputs,
                                                    training_args.do_train, training_args.resume_from_checkpoint,
                                                    data_args.overwrite_output_dir)
    if not training_args.do_train:
        return prepare_output_dir(output_dir), False
    return output_dir, clear


def threshold_option(args: DetectionArguments):
    """`--threshold` or `--thresholds_file`, as `resolve_thresholds` takes it (None: the default)."""
    if args.threshold is not None and args.thresholds_file is not None:
        raise InputError("give --threshold or --thresholds_file, not both")
    return args.thresholds_file if args.thresholds_file is not None else args.threshold


def detect_and_score(model, extractor, items, args: DetectionArguments, evaluation: EvaluationArguments, output_dir,
                     where: str, progress: bool, skipped=()) -> dict | None:
    """Detect events in `items` (checked by `check_audio_items`, which left out `skipped`) with the options of
    `args` (scored against `evaluation`'s ground truth, when given), print the metrics table, and return the
    metrics. The outputs replace those of a previous run in `output_dir` only once all are written."""
    settings = resolve_settings(
        model,
        class_map=args.class_map,
        threshold=threshold_option(args),
        median_filter_seconds=args.median_filter_seconds,
        min_duration=args.min_duration,
        min_gap=args.min_gap,
        window_seconds=args.window_seconds,
        hop_seconds=args.hop_seconds,
        batch_size=args.batch_size,
        short_audio=args.short_audio,
    )
    result = run_detection(
        model,
        extractor,
        items,
        settings,
        output_dir,
        where,
        ground_truth=evaluation.ground_truth,
        durations=evaluation.durations,
        threshold_sweep=evaluation.threshold_sweep,
        skip_bad_audio=args.skip_bad_audio,
        max_plots=args.max_plots if args.plot else 0,
        plot_top_k=args.plot_top_k,
        progress=progress,
        check_audio=False,
        skipped=skipped,
        # Decoding in workers, windows of many files per batch, memory flat in each file's duration.
        detector=InferenceEngine(model, extractor, settings, top_k=0, num_workers=args.num_workers).detections,
    )
    if result.metrics is not None:
        print(metrics_table(result.metrics))
    return result.metrics


def train(model_args: ModelArguments, data_args: StrongLabelArguments, detection_args: DetectionArguments,
          training_args: TrainingArguments, clear_output: bool = False):
    """Strong-label fine-tuning with `HTSATTrainer`; returns `(model, feature_extractor, trainer)`. With
    `clear_output` (`--overwrite_output_dir` on a used folder), the folder's contents are deleted once the data and
    model are ready, just before training.

    The label set is the training annotations'; a `--model_name_or_path` with other labels gets a re-initialised head
    (`load_for_labels`), otherwise a model is built from `--config_name`/`--config_overrides`.
    """
    if data_args.train_dir is None:
        raise InputError("--do_train needs --train_dir (a folder with audio/ and annotations.tsv)")
    problem_type = "multi_label_classification"
    _, labels, _ = read_strong_labels(data_args.train_dir)
    if model_args.model_name_or_path:
        model = load_for_labels(
            model_args.model_name_or_path, labels, problem_type, model_class=HTSATForSoundEventDetection
        )
        extractor = load_feature_extractor(model_args.model_name_or_path, model.config)
    else:
        config = build_config(model_args.config_name, model_args.config_overrides, labels, problem_type)
        model = HTSATForSoundEventDetection(config)
        extractor = HTSATFeatureExtractor.from_config(config)
    if not data_args.spec_augment:
        model.config.spec_augment_time_stripes = model.config.spec_augment_freq_stripes = 0

    window = extractor.max_length_seconds
    train_examples, _, skipped = read_strong_label_dir(data_args.train_dir, labels, window, detection_args.skip_bad_audio)
    eval_examples = None
    if data_args.eval_dir is not None:
        eval_examples, _, more = read_strong_label_dir(data_args.eval_dir, labels, window, detection_args.skip_bad_audio)
        skipped += more
    logger.info("strong-label training on %d clips (%s), %d classes: %s; evaluation on %s clips", len(train_examples),
                data_args.train_dir, len(labels), labels, len(eval_examples) if eval_examples else 0)
    collator = StrongLabelCollator(
        extractor, labels, model.config.num_time_steps, data_args.target_mode, detection_args.skip_bad_audio
    )
    training_args.remove_unused_columns = False
    # Every process enters (the saving one empties the folder): a failure there ends them all with its line.
    with together():
        if clear_output:  # only now: a run stopped by bad data or a bad model leaves the earlier run as it was
            clear_output_dir(training_args.output_dir, training_args.should_save)
    trainer = HTSATTrainer(
        model=model,
        args=training_args,
        train_dataset=train_examples,
        eval_dataset=eval_examples,
        data_collator=collator,
        processing_class=extractor,
        compute_metrics=compute_frame_metrics,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if eval_examples is not None:
        metrics = trainer.evaluate(ignore_keys=["clip_logits", "hidden_states", "attentions"])
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return trainer.model.eval(), extractor, trainer


def run(
    model_args: ModelArguments,
    detection_args: DetectionArguments,
    evaluation_args: EvaluationArguments,
    data_args: StrongLabelArguments,
    training_args: TrainingArguments,
    model=None,
    feature_extractor=None,
) -> dict:
    """What the script does: score only, or train (then score on the evaluation folder), and/or detect events in
    the inputs (and score them against the ground truth). `model`/`feature_extractor` replace
    `--model_name_or_path` for detection (tests, notebooks). Under several processes, every process checks the
    options and inputs and trains; the main process alone detects, scores and writes their outputs, while the others
    wait for it in `distributed.together` (see the module's docstring).

    Returns:
        `{"metrics": ..., "eval_detection_metrics": ...}`, the parts that ran (empty in the other processes of several).
    """
    check_options(model_args, detection_args, evaluation_args, data_args, training_args)
    output_dir, clear_output = prepare_output(model_args, detection_args, evaluation_args, data_args, training_args)
    progress = not getattr(training_args, "disable_tqdm", False)
    summary: dict = {}
    if evaluation_args.score_only:
        if evaluation_args.predictions is None:
            raise InputError("--score_only needs --predictions")
        if evaluation_args.ground_truth is None or evaluation_args.durations is None:
            raise InputError("--score_only needs --ground_truth and --durations")
        with together():  # the main process scores and writes, as detection below
            if is_main_process():
                metrics = score_predictions(
                    evaluation_args.predictions,
                    evaluation_args.ground_truth,
                    evaluation_args.durations,
                    output_dir,
                    psds_predictions=evaluation_args.psds_predictions,
                    threshold=threshold_option(detection_args),
                    class_map=detection_args.class_map,
                    median_filter_seconds=detection_args.median_filter_seconds,
                    min_duration=detection_args.min_duration,
                    min_gap=detection_args.min_gap,
                    threshold_sweep=evaluation_args.threshold_sweep,
                )
                print(metrics_table(metrics))
                summary["metrics"] = metrics
        return summary

    has_inputs = bool(detection_args.inputs) or detection_args.dataset_name is not None
    if not has_inputs and not training_args.do_train:
        raise InputError("nothing to do: give --inputs, --dataset_name, --do_train or --score_only")
    if detection_args.inputs and detection_args.dataset_name is not None:
        raise InputError("give --inputs or --dataset_name, not both")
    if evaluation_args.ground_truth is None and (evaluation_args.durations is not None
                                                 or evaluation_args.threshold_sweep):
        raise InputError("--durations and --threshold_sweep are for scoring: give --ground_truth too")
    items = None
    if has_inputs:  # before loading or training a model: input errors first
        if detection_args.inputs:
            items = collect_inputs(detection_args.inputs, skip_missing=detection_args.skip_bad_audio)
            where = ", ".join(detection_args.inputs)
        else:
            items = dataset_items(detection_args.dataset_name, detection_args.dataset_config_name,
                                  detection_args.split, detection_args.audio_column_name)
            where = f"dataset {detection_args.dataset_name} ({detection_args.split})"
        if evaluation_args.ground_truth is not None:  # format and missing files; labels once the model is known
            reference, _ = read_reference(evaluation_args.ground_truth, evaluation_args.durations, None)
            check_reference_audio(reference, evaluation_args.ground_truth, items, where, detection_args.skip_bad_audio)
        items, skipped = check_audio_items(items, detection_args.skip_bad_audio)  # decodable headers, lengths
    if data_args.eval_dir is not None:  # the evaluation after training: its folder, before training
        eval_items, annotations, eval_durations = strong_label_inputs(data_args.eval_dir)
        read_reference(annotations, eval_durations, None)
        eval_items, eval_skipped = check_audio_items(eval_items, detection_args.skip_bad_audio)

    if training_args.do_train:
        model, feature_extractor, _ = train(model_args, data_args, detection_args, training_args, clear_output)

    # Detection runs in the main process only (under `accelerate launch`, the others wait for it here, and every
    # process ends with its error line if it fails): one process writes the outputs, as a one-process run does.
    with together():
        if is_main_process():
            if training_args.do_train and data_args.eval_dir is not None:
                # The trained model has the annotations' classes: no class map; plots only when asked for.
                eval_detection_args = replace(
                    detection_args, class_map=None, max_plots=detection_args.max_plots or 0
                )
                summary["eval_detection_metrics"] = detect_and_score(
                    model, feature_extractor, eval_items, eval_detection_args,
                    EvaluationArguments(ground_truth=str(annotations),
                                        durations=str(eval_durations) if eval_durations else None),
                    output_dir / "eval_detection", f"{data_args.eval_dir}/audio", progress, eval_skipped,
                )
            if not training_args.do_train and model is None:
                model, feature_extractor = load_detection_model(
                    model_args.model_name_or_path, model_args.device, detection_args.dtype
                )
            if items is not None:
                summary["metrics"] = detect_and_score(
                    model, feature_extractor, items, detection_args, evaluation_args, output_dir, where, progress,
                    skipped,
                )
    return summary


def main(argv=None) -> int:
    model_args, detection_args, evaluation_args, data_args, training_args = parse_arguments(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)
    try:
        with stop_signals_raise():
            run(model_args, detection_args, evaluation_args, data_args, training_args)
    except (InputError, OSError) as error:
        print(f"run_sed.py: error: {error_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Outputs are staged (see sed.detection.staged_outputs): an interrupted run leaves the previous ones as they were.
        print("run_sed.py: interrupted; the output folder holds the previous run's results", file=sys.stderr)
        return 130
    except Stopped as stop:
        print(f"run_sed.py: stopped by {stop}; the output folder holds the previous run's results", file=sys.stderr)
        return 128 + stop.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
