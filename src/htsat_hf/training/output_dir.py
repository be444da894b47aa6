"""The output folder of a training run (`run_audio_classification.py`, `run_sed.py --do_train`): new or empty, unless
the run continues an earlier one there (`--resume_from_checkpoint`) or replaces it (`--overwrite_output_dir true`).

Trainer (transformers 5 has no `overwrite_output_dir` and checks nothing) writes `checkpoint-N` folders into whatever
is there, rotates them (`--save_total_limit`) by step number over both runs' checkpoints (keeping the earlier run's
later ones as "most recent" and deleting the new run's), finds the last checkpoint to resume from among both, and
leaves the earlier run's other files beside the new model. Both scripts check their `--output_dir` here, with the
same options and the same one-line refusals; every run of either (evaluation and detection alone included) refuses
an `--output_dir` that is, contains or lies inside one of its data inputs. `--resume_from_checkpoint` is checked here
too ([`resolve_resume_checkpoint`]), before any folder is created.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from os import PathLike
from pathlib import Path

from transformers.trainer import FSDP_MODEL_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import (
    ADAPTER_SAFE_WEIGHTS_NAME,
    ADAPTER_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

from ..errors import InputError
from ..loading import check_outside_inputs, check_output_dir, check_replaceable_dir

logger = logging.getLogger(__name__)

# The weight files `Trainer._load_from_checkpoint` (transformers 5) looks for in a checkpoint it resumes.
CHECKPOINT_WEIGHTS = (WEIGHTS_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_INDEX_NAME,
                      ADAPTER_WEIGHTS_NAME, ADAPTER_SAFE_WEIGHTS_NAME)

__all__ = ["OVERWRITE_HELP", "check_overwrite_options", "clear_output_dir", "prepare_training_output_dir",
           "resolve_resume_checkpoint"]

# The help of both scripts' `--overwrite_output_dir` (a field of their own argument dataclasses: TrainingArguments no
# longer has it in transformers 5, and never used it itself).
OVERWRITE_HELP = ("Training into an --output_dir that holds files (an earlier run's): delete them first (default: "
                  "refuse; --resume_from_checkpoint continues such a run instead).")


def check_overwrite_options(overwrite: bool, do_train: bool, resume_from_checkpoint) -> None:
    """Refuse `--overwrite_output_dir` without training, or with `--resume_from_checkpoint`, in one line."""
    if overwrite and not do_train:
        raise InputError("--overwrite_output_dir replaces the folder a training run writes: it needs --do_train "
                         "(a run without training writes its results beside what the folder holds)")
    if overwrite and resume_from_checkpoint:
        raise InputError("give --resume_from_checkpoint (continue the run in --output_dir) or --overwrite_output_dir "
                         "(replace it), not both")


def resolve_resume_checkpoint(resume_from_checkpoint, output_dir: str | PathLike) -> str | None:
    """Check `--resume_from_checkpoint` before any work is done or any folder created, as `Trainer.train`
    (transformers 5) takes it: a path to a checkpoint that an earlier `Trainer` saved (`checkpoint-N`: its
    `trainer_state.json` and the model's weights), or `True`/`"true"` (any case): the last `checkpoint-N` in
    `output_dir`. `None`, `False` and `""` mean no resuming.

    Returns:
        the checkpoint folder to pass to `Trainer.train` (`"true"` resolved to a path), or None.

    Raises:
        InputError: one line naming the path: it does not exist, is not a folder, or is not a Trainer checkpoint;
            for `true`, `output_dir` holds no checkpoint.
    """
    if resume_from_checkpoint is None or resume_from_checkpoint is False or resume_from_checkpoint == "":
        return None
    if resume_from_checkpoint is True or str(resume_from_checkpoint).lower() == "true":
        last = get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
        if last is None:
            raise InputError(f"--resume_from_checkpoint true continues the last checkpoint-N folder in --output_dir, "
                             f"and {output_dir} holds none; give the checkpoint's path")
        resume_from_checkpoint = last
    path = Path(resume_from_checkpoint)
    if not path.exists():
        raise InputError(f"--resume_from_checkpoint {path}: no such checkpoint folder")
    if not path.is_dir():
        raise InputError(f"--resume_from_checkpoint {path}: is a file, not a checkpoint folder")
    if not (path / TRAINER_STATE_NAME).is_file():
        raise InputError(f"--resume_from_checkpoint {path}: not a Trainer checkpoint (no {TRAINER_STATE_NAME}; "
                         "give a checkpoint-N folder of an earlier run)")
    if not (any((path / name).is_file() for name in CHECKPOINT_WEIGHTS)
            or any(FSDP_MODEL_NAME in entry.name or entry.name.startswith("global_step") for entry in path.iterdir()
                   if entry.is_dir() or entry.name == f"{FSDP_MODEL_NAME}.bin")):
        raise InputError(f"--resume_from_checkpoint {path}: not a Trainer checkpoint (no model weights in it)")
    return str(path)


def prepare_training_output_dir(
    output_dir: str | PathLike,
    data_inputs: Iterable[str | PathLike | None],
    model_inputs: Iterable[str | PathLike | None],
    do_train: bool,
    resume_from_checkpoint,
    overwrite: bool,
) -> tuple[Path, bool]:
    """Check a run's `--output_dir` before any data is read (nothing is created or deleted here; `overwrite` empties
    it later: [`clear_output_dir`]).

    Every run (training, resumed training, evaluation or detection alone) refuses a folder that is, contains or lies
    inside one of `data_inputs`: its outputs would be written into the data (and later reads of it fail, or a data
    file is replaced). `model_inputs` are refused the same way by a new training run; a resumed one continues in
    `output_dir`, which may contain the checkpoint (and model) it resumes, but may not be or lie inside one; a run
    without training writes its results beside a model's files, as before.

    Training needs a new or empty folder. A folder with files is refused unless `resume_from_checkpoint` (the run
    continues there) or `overwrite` (its contents are deleted by [`clear_output_dir`] once the data and model are
    ready, just before training). A run without training only needs a folder it can write.

    Args:
        data_inputs: the local data the run reads (data folders, dataset folders, index, label, annotation files);
            Hub ids, missing paths and `None` are skipped.
        model_inputs: the local models the run reads (`--model_name_or_path`, config, the checkpoint resumed).

    Returns:
        the folder, and whether `overwrite` is to empty it.

    Raises:
        InputError: one line naming the folder: it cannot be created or written, it overlaps an input as above, or
            it is not empty and the run neither resumes nor overwrites.
    """
    output_dir = check_outside_inputs(check_output_dir(output_dir), data_inputs)
    if not do_train:
        return output_dir, False
    if resume_from_checkpoint:
        target = output_dir.resolve()
        model_inputs = [item for item in model_inputs
                        if item is None or not Path(item).exists() or target not in Path(item).resolve().parents]
        return check_outside_inputs(output_dir, model_inputs), False
    # The overlap checks first (with overwrite the folder's contents are deleted), then the used-folder message, which
    # names the options.
    output_dir = check_outside_inputs(output_dir, model_inputs)
    if overwrite:
        check_replaceable_dir(output_dir)  # its contents are deleted
    used = output_dir.is_dir() and any(output_dir.iterdir())
    if used and not overwrite:
        last = get_last_checkpoint(str(output_dir))
        resume = f"--resume_from_checkpoint {last}" if last else "--resume_from_checkpoint CHECKPOINT"
        raise InputError(f"{output_dir}: the folder is not empty (an earlier run's outputs?); train into a new or "
                         f"empty folder, continue that run with {resume}, or replace its contents with "
                         "--overwrite_output_dir true")
    return output_dir, used


def clear_output_dir(output_dir: str | PathLike, should_save: bool) -> None:
    """Delete the contents of `output_dir` (`--overwrite_output_dir`), in the process that saves (`should_save`; the
    others, under `accelerate launch`, write nothing there and do nothing). Call it inside
    `htsat_hf.distributed.together()`, which every process enters, so that a failure ends them all with its line."""
    if not should_save:
        return
    output_dir = Path(output_dir)
    logger.warning("--overwrite_output_dir: deleting the contents of %s (an earlier run's outputs)", output_dir)
    for entry in output_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)
