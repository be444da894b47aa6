"""The output folder of a training run (`run_audio_classification.py`, `run_sed.py --do_train`): new or empty, unless
the run continues an earlier one there (`--resume_from_checkpoint`) or replaces it (`--overwrite_output_dir true`).

Trainer (transformers 5 has no `overwrite_output_dir` and checks nothing) writes `checkpoint-N` folders into whatever
is there, rotates them (`--save_total_limit`) by step number over both runs' checkpoints (keeping the earlier run's
later ones as "most recent" and deleting the new run's), finds the last checkpoint to resume from among both, and
leaves the earlier run's other files beside the new model. Both scripts check their `--output_dir` here, with the
same options and the same one-line refusals.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from os import PathLike
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

from ..errors import InputError
from ..loading import check_new_output_dir, check_output_dir

logger = logging.getLogger(__name__)

__all__ = ["OVERWRITE_HELP", "check_overwrite_options", "clear_output_dir", "prepare_training_output_dir"]

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


def prepare_training_output_dir(
    output_dir: str | PathLike,
    inputs: Iterable[str | PathLike | None],
    do_train: bool,
    resume_from_checkpoint,
    overwrite: bool,
) -> tuple[Path, bool]:
    """Check a run's `--output_dir` before any data is read (nothing is created or deleted here; `overwrite` empties
    it later: [`clear_output_dir`]).

    Training needs a new or empty folder. A folder with files is refused unless `resume_from_checkpoint` (the run
    continues there) or `overwrite` (its contents are deleted by [`clear_output_dir`] once the data and model are
    ready, just before training). A run without training (evaluation, detection) only needs a folder it can write.

    Args:
        inputs: the local files and folders the run reads (data folders, label files, models, configs); Hub ids and
            `None` are skipped.

    Returns:
        the folder, and whether `overwrite` is to empty it.

    Raises:
        InputError: one line naming the folder: it cannot be created or written, it is, contains or lies inside one of
            `inputs` (when training), or it is not empty and the run neither resumes nor overwrites.
    """
    if not do_train or resume_from_checkpoint:
        return check_output_dir(output_dir), False
    # The overlap checks first (with overwrite the folder's contents are deleted), then the used-folder message, which
    # names the options.
    output_dir = check_new_output_dir(output_dir, inputs, overwrite=True)
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
