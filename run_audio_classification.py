#!/usr/bin/env python
"""Train and evaluate HTS-AT on labelled audio with transformers' Trainer (CPU, one GPU, or `accelerate launch`).

    python run_audio_classification.py configs/esc50.json
    python run_audio_classification.py --train_dir data/train --eval_dir data/eval \
        --model_name_or_path htsat-audioset --output_dir out --do_train --do_eval
    accelerate launch --num_processes 4 run_audio_classification.py configs/audioset.json

Arguments are those of the dataclasses below plus transformers' `TrainingArguments`; a single JSON file may hold
them all. The logic lives in `htsat_hf.training`; this script only wires it.

Output folder: training (`--do_train`) writes into a new or empty `--output_dir`. A folder that holds files (the
checkpoints of an earlier run, whose `checkpoint-N` folders Trainer would rotate and resume from together with the
new run's) is refused, unless the run continues it (`--resume_from_checkpoint`) or replaces it
(`--overwrite_output_dir true`: its contents are deleted before training starts). It may not be, contain or lie
inside one of the run's inputs (a resumed run's may contain the checkpoint it continues). Evaluation alone
(`--do_eval`) writes its metrics files beside what is there (a model folder's files included), but no run writes
into its data: an `--output_dir` that is, contains or lies inside a data folder, index or label file is refused.
`--resume_from_checkpoint` is a `checkpoint-N` folder of an earlier run, or `true` (the last one in `--output_dir`),
checked before anything is created.

Errors: bad input (an option out of range, a missing or unreadable file, folder, model or config, data with bad
labels or undecodable audio, an output folder that cannot be written or holds an earlier run) is printed as one line
`run_audio_classification.py: error: MESSAGE` on stderr, and the script exits with status 2; options are checked
before any data or model is loaded.
"""

import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import transformers
from transformers import HfArgumentParser, TrainingArguments, set_seed

from htsat_hf import HTSATConfig, HTSATFeatureExtractor, HTSATForAudioClassification
from htsat_hf.distributed import together
from htsat_hf.errors import InputError, error_line
from htsat_hf.feature_extraction_htsat import PAD_MODES
from htsat_hf.loading import load_feature_extractor
from htsat_hf.training import BalancedClassSampler, make_compute_metrics, time_shift_offsets
from htsat_hf.training.data import (
    AudioClassificationCollator,
    LabelSpec,
    check_audio_files,
    check_labels,
    audiofolder_row_name,
    default_row_name,
    infer_label_spec,
    label_column_is_list,
    load_audio_splits,
    read_label_names,
)
from htsat_hf.training.model_setup import build_config, load_for_labels, load_swin_weights
from htsat_hf.training.output_dir import (
    OVERWRITE_HELP,
    check_overwrite_options,
    clear_output_dir,
    prepare_training_output_dir,
    resolve_resume_checkpoint,
)
from htsat_hf.training.trainer import HTSATTrainer

logger = logging.getLogger("run_audio_classification")
PROG = "run_audio_classification.py"
LR_SCHEDULES = ("htsat", "trainer")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Converted or trained model directory, or a Hub id, to start from."}
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "Config to train from scratch: a config.json (as save_pretrained writes it), a folder "
                          "holding one, or a Hub id (default config if omitted)."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Config fields for training from scratch: 'embed_dim=16,depths=[2,2,2,2],num_heads=[1,2,4,8]'."},
    )
    swin_checkpoint: str | None = field(
        default=None, metadata={"help": "Local ImageNet Swin-T (window 8, 256 px) checkpoint to initialise from."}
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "Hub id or local dataset directory."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    train_split_name: str = field(default="train", metadata={"help": "Training split of dataset_name."})
    eval_split_name: str = field(default="validation", metadata={"help": "Evaluation split (falls back to 'test')."})
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset instead of downloading it whole."})
    train_dataset_size: int | None = field(
        default=None,
        metadata={"help": "Examples per epoch of a streamed training set, for --lr_schedule htsat (streamed data has no "
                          "length; without it an epoch is --max_steps / --num_train_epochs steps)."},
    )
    train_dir: str | None = field(default=None, metadata={"help": "audiofolder directory (metadata.csv) to train on."})
    audioset_train_index: str | None = field(
        default=None, metadata={"help": "PANNs AudioSet hdf5 index to train on (waveform packs at 32 kHz)."}
    )
    audioset_eval_index: str | None = field(default=None, metadata={"help": "PANNs AudioSet hdf5 index to evaluate on."})
    label_names_file: str | None = field(
        default=None,
        metadata={"help": "The classes, in id order: AudioSet's class_labels_indices.csv (index,display_name) or a "
                          "plain list with one label per line (.txt)."},
    )
    eval_dir: str | None = field(default=None, metadata={"help": "audiofolder directory to evaluate on."})
    audio_column_name: str = field(default="audio", metadata={"help": "Column holding the audio."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the label(s)."})
    multi_label: bool | None = field(
        default=None, metadata={"help": "Several labels per clip (BCE); inferred from the label column if unset."}
    )
    label_separator: str = field(default=";", metadata={"help": "Separator of several labels in one string."})
    fold_column_name: str | None = field(default=None, metadata={"help": "Fold column for cross-validation (ESC-50)."})
    eval_fold: int | None = field(default=None, metadata={"help": "Fold held out for evaluation."})
    max_length_seconds: float | None = field(
        default=None,
        metadata={"help": "Clip length in seconds (default: the feature extractor's: 10 s, or the longest clip the "
                          "model reads when that is shorter)."},
    )
    pad_mode: str | None = field(
        default=None,
        metadata={"help": "How short clips are padded: 'zeros', 'repeat' (tiled) or 'repeatpad' (whole copies, then "
                          "zeros: CLAP's, for converted CLAP towers) (default: the extractor's)."},
    )
    random_crop: bool = field(default=True, metadata={"help": "Crop longer training clips at random positions."})
    balanced_sampling: bool = field(
        default=False, metadata={"help": "Class-balanced sampling (the AudioSet recipe), redrawn every epoch."}
    )
    balanced_samples_per_epoch: int | None = field(
        default=None, metadata={"help": "Samples per epoch with balanced sampling (default: the training set size)."}
    )
    mixup_alpha: float = field(default=0.0, metadata={"help": "Mixup Beta(alpha, alpha); 0.5 in the AudioSet recipe."})
    mix_targets: bool = field(
        default=False, metadata={"help": "Mix the targets too (standard mixup; the original mixes features only)."}
    )
    spec_augment: bool = field(default=True, metadata={"help": "SpecAugment in training (the config's stripes)."})
    lr_schedule: str = field(
        default="htsat",
        metadata={"help": "'htsat': the original per-epoch table; 'trainer': TrainingArguments.lr_scheduler_type."},
    )
    time_shift_tta: int = field(
        default=1, metadata={"help": "Evaluate on this many time-shifted copies (10 in the AudioSet recipe)."}
    )
    skip_bad_audio: bool = field(default=False, metadata={"help": "Skip undecodable files (counted) instead of failing."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many evaluation examples."})
    # Here rather than in TrainingArguments, which no longer has it (transformers 5), and never used it itself.
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": OVERWRITE_HELP},
    )

    def __post_init__(self):
        """Refuse option values that would fail later, or silently do nothing, before any data is loaded."""
        if self.pad_mode is not None and self.pad_mode not in PAD_MODES:
            raise InputError(f"--pad_mode must be one of {', '.join(PAD_MODES)}, got {self.pad_mode!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(f"--lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.max_length_seconds is not None and not (
            math.isfinite(self.max_length_seconds) and self.max_length_seconds > 0
        ):
            raise InputError(f"--max_length_seconds must be a positive number of seconds, got {self.max_length_seconds}")
        if not (math.isfinite(self.mixup_alpha) and self.mixup_alpha >= 0):
            raise InputError(f"--mixup_alpha must be >= 0 (0 turns mixup off), got {self.mixup_alpha}")
        for option, value, smallest in (
            ("time_shift_tta", self.time_shift_tta, 1),
            ("balanced_samples_per_epoch", self.balanced_samples_per_epoch, 1),
            ("max_train_samples", self.max_train_samples, 1),
            ("max_eval_samples", self.max_eval_samples, 1),
            ("train_dataset_size", self.train_dataset_size, 1),
            ("eval_fold", self.eval_fold, 0),
        ):
            if value is not None and value < smallest:
                raise InputError(f"--{option} must be >= {smallest}, got {value}")
        if self.eval_fold is not None and self.fold_column_name is None:
            raise InputError("--eval_fold needs --fold_column_name (the column holding each example's fold)")
        if not self.label_separator or not self.label_separator.strip():
            raise InputError(f"--label_separator must be a non-blank string, got {self.label_separator!r}")
        if self.balanced_samples_per_epoch is not None and not self.balanced_sampling:
            raise InputError("--balanced_samples_per_epoch needs --balanced_sampling (it sizes the balanced epochs)")
        if self.mix_targets and self.mixup_alpha == 0:
            raise InputError("--mix_targets needs --mixup_alpha > 0 (mixup is off)")
        if self.train_dataset_size is not None and not self.streaming:
            raise InputError("--train_dataset_size is for --streaming data (other datasets have a length)")
        if self.streaming and self.balanced_sampling:
            raise InputError("--balanced_sampling needs the whole training set, it cannot draw from --streaming data")
        if self.streaming and (self.audioset_train_index or self.audioset_eval_index):
            raise InputError("--streaming reads --dataset_name or --train_dir/--eval_dir, not AudioSet hdf5 indexes")
        if self.dataset_config_name is not None and self.dataset_name is None:
            raise InputError("--dataset_config_name needs --dataset_name")


class _Parser(HfArgumentParser):
    """Raises a bad argument as an `InputError`, so that it is reported in the script's one error line."""

    def error(self, message):
        raise InputError(message)


def main(argv=None) -> int:
    """Run the script; returns 0, or 2 after printing bad input as one line (see the module docstring)."""
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except (InputError, OSError) as error:
        print(f"{PROG}: error: {error_line(error)}", file=sys.stderr)
        return 2


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """The three argument groups from the command line, or from one JSON file holding them all.

    Raises:
        InputError: an unknown or malformed argument or key, or a value an argument group refuses.
        OSError: a JSON file that cannot be read.
    """
    parser = _Parser((ModelArguments, DataArguments, TrainingArguments))
    try:
        if len(argv) == 1 and argv[0].endswith(".json"):
            return parser.parse_json_file(argv[0])
        return parser.parse_args_into_dataclasses(argv)
    except InputError:
        raise
    except ValueError as error:  # unknown keys, TrainingArguments' own checks, a JSON syntax error
        raise InputError(error_line(error)) from None


def check_options(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments):
    """Refuse combinations of options that would fail later, or silently do nothing, before any data is read.

    Raises:
        InputError: one line naming the option.
    """
    if not (training_args.do_train or training_args.do_eval):
        raise InputError("nothing to do: give --do_train and/or --do_eval")
    if model_args.model_name_or_path and model_args.config_name:
        raise InputError("give --model_name_or_path (a saved model) or --config_name (train from scratch), not both")
    if model_args.model_name_or_path and model_args.config_overrides:
        raise InputError("--config_overrides set up a model trained from scratch; they do not apply to "
                         "--model_name_or_path")
    if data_args.label_names_file and not Path(data_args.label_names_file).is_file():
        raise InputError(f"--label_names_file {data_args.label_names_file}: no such file")
    sources = dict(dataset_name=data_args.dataset_name, train_dir=data_args.train_dir, eval_dir=data_args.eval_dir,
                   audioset_train_index=data_args.audioset_train_index,
                   audioset_eval_index=data_args.audioset_eval_index)
    if not any(sources.values()):
        raise InputError("no data: give --train_dir/--eval_dir, --dataset_name or --audioset_train_index/"
                         "--audioset_eval_index")
    folds = data_args.fold_column_name is not None
    if training_args.do_train:
        if not (data_args.dataset_name or data_args.train_dir or data_args.audioset_train_index):
            raise InputError("--do_train needs training data: --train_dir, --dataset_name or --audioset_train_index")
        if training_args.learning_rate <= 0:
            raise InputError(f"--learning_rate must be > 0, got {training_args.learning_rate}")
        if training_args.max_steps <= 0 and training_args.num_train_epochs <= 0:
            raise InputError(f"--num_train_epochs must be > 0 (or give --max_steps), got "
                             f"{training_args.num_train_epochs}")
        if data_args.streaming and training_args.max_steps <= 0:
            raise InputError("--streaming training needs --max_steps (a streamed dataset has no length)")
    wants_eval = training_args.do_eval or (training_args.do_train and training_args.eval_strategy != "no")
    if wants_eval and not (data_args.dataset_name or data_args.eval_dir or data_args.audioset_eval_index or folds):
        strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
        option = f"--eval_strategy {strategy}" if training_args.do_train and strategy != "no" else "--do_eval"
        raise InputError(f"{option} needs evaluation data: --eval_dir, --audioset_eval_index, --dataset_name or "
                         "--fold_column_name with --eval_fold")
    if folds and not (data_args.dataset_name or data_args.train_dir):
        raise InputError("--fold_column_name divides --train_dir or --dataset_name data")
    check_overwrite_options(data_args.overwrite_output_dir, training_args.do_train,
                            training_args.resume_from_checkpoint)
    if training_args.do_train:  # a path, or "true": the last checkpoint in --output_dir
        training_args.resume_from_checkpoint = resolve_resume_checkpoint(training_args.resume_from_checkpoint,
                                                                         training_args.output_dir)


def prepare_output_dir(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments):
    """Check `--output_dir` before any data is read (`--overwrite_output_dir` empties it later, just before training):
    `htsat_hf.training.output_dir.prepare_training_output_dir`, with this run's data and model inputs. Every run
    refuses a folder that overlaps its data; evaluation alone writes its metrics files beside what is there (a model
    folder included), as `run_sed.py` writes its results into a folder that keeps other files.

    Returns:
        the folder, and whether `--overwrite_output_dir` is to empty it.

    Raises:
        InputError: one line naming the folder: it cannot be created or written, it is, contains or lies inside an
            input of the run (data folder or index, label file, model, config, Swin checkpoint), or it is not empty
            and the run neither resumes nor overwrites.
    """
    data_inputs = (data_args.dataset_name, data_args.train_dir, data_args.eval_dir, data_args.audioset_train_index,
                   data_args.audioset_eval_index, data_args.label_names_file)
    model_inputs = (model_args.model_name_or_path, model_args.config_name, model_args.swin_checkpoint,
                    training_args.resume_from_checkpoint if training_args.do_train else None)
    return prepare_training_output_dir(training_args.output_dir, data_inputs, model_inputs, training_args.do_train,
                                       training_args.resume_from_checkpoint, data_args.overwrite_output_dir)


def run(argv: list[str]) -> int:
    """Train and/or evaluate as the arguments say.

    Raises:
        InputError, OSError: bad input, naming the option, file, split or row.
    """
    model_args, data_args, training_args = parse_arguments(argv)
    check_options(model_args, data_args, training_args)
    output_dir, clear = prepare_output_dir(model_args, data_args, training_args)
    training_args.remove_unused_columns = False  # the collator reads the raw audio and label columns
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)

    splits = load_audio_splits(
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        train_dir=data_args.train_dir,
        eval_dir=data_args.eval_dir,
        train_split=data_args.train_split_name if training_args.do_train else None,
        eval_split=data_args.eval_split_name if training_args.do_eval else None,
        streaming=data_args.streaming,
        audio_column=data_args.audio_column_name,
        label_column=data_args.label_column_name,
        fold_column=data_args.fold_column_name,
        eval_fold=data_args.eval_fold,
        audioset_train_index=data_args.audioset_train_index,
        audioset_eval_index=data_args.audioset_eval_index,
    )
    for role, limit in (("train", data_args.max_train_samples), ("eval", data_args.max_eval_samples)):
        if limit is not None and role in splits:
            splits[role] = splits[role].take(limit) if data_args.streaming else splits[role].select(range(min(limit, len(splits[role]))))

    row_names = {role: row_namer(data_args, role, split) for role, split in splits.items()}
    label_spec = resolve_labels(model_args, data_args, splits, row_names)
    for role, split in splits.items():
        if not data_args.streaming:
            check_labels(split, label_spec, data_args.label_column_name, role, row_names[role])
    skipped_before_training = 0
    if training_args.do_train and "eval" in splits and not data_args.streaming:
        # A broken evaluation file should stop the run now, not after the first epoch.
        splits["eval"], skipped_before_training = check_audio_files(
            splits["eval"], data_args.audio_column_name, data_args.skip_bad_audio, "eval"
        )
    logger.info("%d classes (%s), splits: %s", len(label_spec.names), label_spec.problem_type,
                {role: getattr(split, "num_rows", "streamed") for role, split in splits.items()})

    model, feature_extractor = build_model_and_extractor(model_args, data_args, label_spec)
    collator_args = dict(
        feature_extractor=feature_extractor,
        label_spec=label_spec,
        audio_column=data_args.audio_column_name,
        label_column=data_args.label_column_name,
        skip_bad_audio=data_args.skip_bad_audio,
    )
    train_collator = AudioClassificationCollator(random_crop=data_args.random_crop, **collator_args)
    eval_collator = AudioClassificationCollator(
        tta_offsets=time_shift_offsets(data_args.time_shift_tta) if data_args.time_shift_tta > 1 else None,
        **collator_args,
    )
    sampler = None
    if data_args.balanced_sampling and "train" in splits:
        targets = [label_spec.encode(v) for v in splits["train"].select_columns([data_args.label_column_name])[
            data_args.label_column_name]]
        sampler = BalancedClassSampler(
            [list(t.nonzero()[0]) if label_spec.multi_label else [t] for t in targets],
            num_samples=data_args.balanced_samples_per_epoch or len(targets),
            seed=training_args.seed,
        )

    # Every process enters (the saving one empties the folder): a failure there ends them all with its line,
    # none is left waiting for it at training's first collective step.
    with together():
        if clear:  # only now: a run stopped by bad data or a bad model leaves the earlier run as it was
            clear_output_dir(output_dir, training_args.should_save)
    trainer = HTSATTrainer(
        model=model,
        args=training_args,
        train_dataset=splits.get("train"),
        eval_dataset=splits.get("eval"),
        data_collator=train_collator,
        eval_data_collator=eval_collator,
        processing_class=feature_extractor,
        compute_metrics=make_compute_metrics(label_spec.problem_type),
        lr_schedule="htsat" if data_args.lr_schedule == "htsat" else None,
        train_sampler=sampler,
        mixup_alpha=data_args.mixup_alpha,
        mix_targets=data_args.mix_targets,
        train_dataset_size=data_args.train_dataset_size,
    )
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    skipped = skipped_before_training + train_collator.skipped + eval_collator.skipped
    if skipped:
        logger.warning("%d undecodable audio files were skipped in this process (--skip_bad_audio)", skipped)
    return 0


def row_namer(data_args: DataArguments, role: str, split):
    """How errors name a row of `split`: the line of `metadata.csv` for audiofolder data, else the split's row."""
    folder = data_args.eval_dir if role == "eval" and data_args.fold_column_name is None else data_args.train_dir
    if folder is None or data_args.streaming:
        return default_row_name(role)
    return audiofolder_row_name(split, data_args.audio_column_name, Path(folder) / "metadata.csv", role)


def resolve_labels(model_args: ModelArguments, data_args: DataArguments, splits: dict,
                   row_names: dict | None = None) -> LabelSpec:
    """The task's label set: from `--label_names_file`, read from the data, or for streamed data from ClassLabel
    features or the model."""
    role = "train" if "train" in splits else "eval"
    reference = splits.get(role)
    column = data_args.label_column_name
    if data_args.label_names_file:
        names = read_label_names(data_args.label_names_file)
        multi = data_args.multi_label
        if multi is None:  # lists of labels (AudioSet) are multi-label; one label or name per clip is not
            multi = label_column_is_list(reference, column) in (True, None)
        return LabelSpec(names, multi_label=multi, separator=data_args.label_separator,
                         source=f"--label_names_file {data_args.label_names_file}")
    if not data_args.streaming:
        return infer_label_spec(reference, column, data_args.multi_label, data_args.label_separator,
                                row_name=(row_names or {}).get(role))
    feature = reference.features[column] if reference.features is not None else None
    names = getattr(feature, "names", None) or getattr(getattr(feature, "feature", None), "names", None)
    if names is None and model_args.model_name_or_path:
        config = HTSATConfig.from_pretrained(model_args.model_name_or_path)
        names = [config.id2label[i] for i in range(config.num_labels)]
    if names is None:
        raise InputError("streamed labels need a ClassLabel column, --label_names_file (one label per line, or "
                         "AudioSet's class_labels_indices.csv) or a --model_name_or_path whose labels they use")
    multi = data_args.multi_label if data_args.multi_label is not None else not hasattr(feature, "names")
    return LabelSpec(list(names), multi_label=multi, separator=data_args.label_separator)


def build_model_and_extractor(model_args: ModelArguments, data_args: DataArguments, label_spec: LabelSpec):
    """The model to train and its feature extractor (checked against the model's config), with the data options
    that set clip handling (`--max_length_seconds`, `--pad_mode`) applied.

    Raises:
        InputError: see `load_for_labels`, `load_feature_extractor` and `HTSATFeatureExtractor.check_matches_config`
            (a `--max_length_seconds` whose clips give more frames than the model reads).
    """
    if model_args.model_name_or_path:
        model = load_for_labels(
            model_args.model_name_or_path, label_spec.names, label_spec.problem_type
        )
        feature_extractor = load_feature_extractor(model_args.model_name_or_path, model.config)
    else:
        config = build_config(model_args.config_name, model_args.config_overrides, label_spec.names,
                              label_spec.problem_type)
        model = HTSATForAudioClassification(config)
        feature_extractor = HTSATFeatureExtractor.from_config(config)
    if model_args.swin_checkpoint:
        load_swin_weights(model, model_args.swin_checkpoint)
    if not data_args.spec_augment:
        model.config.spec_augment_time_stripes = model.config.spec_augment_freq_stripes = 0
    if data_args.max_length_seconds is not None:
        feature_extractor.max_length_seconds = data_args.max_length_seconds
    if data_args.pad_mode is not None:
        feature_extractor.pad_mode = data_args.pad_mode
    # Before training starts: a clip length the model cannot read would fail on the first batch, deep in the model.
    feature_extractor.check_matches_config(model.config)
    return model, feature_extractor


if __name__ == "__main__":
    sys.exit(main())
