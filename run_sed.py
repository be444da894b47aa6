#!/usr/bin/env python
"""Sound event detection with HTS-AT: detect events in recordings, score them against DCASE-format ground truth,
score existing detections, or fine-tune on strong labels (CPU, one GPU, or `accelerate launch` for training).

    python run_sed.py --model_name_or_path htsat-audioset --class_map desed --inputs recordings/ --output_dir out
    python run_sed.py configs/desed.json
    python run_sed.py --score_only --predictions out/events.tsv --psds_predictions out/scores \
        --ground_truth gt.tsv --durations durations.tsv --output_dir scored
    python run_sed.py --do_train --train_dir data/train --eval_dir data/eval --model_name_or_path htsat-audioset \
        --output_dir finetuned --num_train_epochs 20 --learning_rate 1e-4

Arguments are those of the dataclasses in `htsat_hf.sed_run` plus transformers' `TrainingArguments` (`--output_dir`,
and the training options); a single JSON file may hold them all. The logic lives in `htsat_hf.sed_run`.
"""

import logging
import sys

import transformers
from transformers import HfArgumentParser, TrainingArguments, set_seed

from htsat_hf.sed_run import (
    DetectionArguments,
    EvaluationArguments,
    ModelArguments,
    SEDRunError,
    StrongLabelArguments,
    run,
)
from htsat_hf.training.data import DataError

logger = logging.getLogger("run_sed")


def parse_arguments(argv=None):
    parser = HfArgumentParser(
        (ModelArguments, DetectionArguments, EvaluationArguments, StrongLabelArguments, TrainingArguments)
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])
    return parser.parse_args_into_dataclasses(argv)


def main(argv=None) -> int:
    model_args, detection_args, evaluation_args, data_args, training_args = parse_arguments(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)
    try:
        run(model_args, detection_args, evaluation_args, data_args, training_args)
    except (SEDRunError, DataError) as error:
        print(f"run_sed.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
