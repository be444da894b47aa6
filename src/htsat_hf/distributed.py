"""Runs of several processes (`accelerate launch`, torchrun): this process's share of the run, and steps that succeed
or fail in every process together.

A check made in one process (rank 0 refusing a used output) or work done by one (rank 0 emptying an output folder),
followed by a barrier or by any collective step (the first step of distributed training), left the other processes
waiting for the one that failed: forever while it stayed alive (a caller that catches the error and goes on, a
launcher that does not end the others, NCCL, processes on other machines), or until it exited, when they crashed
with a connection error instead of its message. Such a step runs inside [`together`], which every process enters.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .errors import InputError, error_line

__all__ = ["distributed_state", "end_process_group", "is_main_process", "together"]


def distributed_state():
    """accelerate's `PartialState` when this process is one of several (`accelerate launch`, torchrun), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState  # an extra (train), needed only by runs of several processes

    # accelerate sets up several CPU processes (gloo) only when asked for the CPU; without a GPU, that is the CPU.
    # (Once set up, by this or by transformers' TrainingArguments, PartialState is that one state.)
    state = PartialState(cpu=not torch.cuda.is_available())
    atexit.unregister(end_process_group)  # registered once, however often the state is asked for
    atexit.register(end_process_group)
    return state


def is_main_process() -> bool:
    """Whether this process is the only one, or the main one of several: the one that writes a run's shared outputs
    (inside [`together`], which the others wait in)."""
    state = distributed_state()
    return state is None or state.is_main_process


def end_process_group() -> None:
    """Tear down this process's process group, if one is set up (registered to run at exit by
    [`distributed_state`]). A process that exits with it still attached can abort after printing its last line:
    gloo's threads are destroyed unjoined ("terminate called without an active exception", exit -6 instead of the
    run's own status; 3 in 40 two-process refusals did)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextmanager
def together() -> Iterator[None]:
    """Run the block in this process (all of it, or a part only some processes run), then wait for every process,
    and fail in every process when the block failed in any. Every process must enter it: it is the barrier.

    The processes exchange their outcomes (`accelerate.utils.gather_object`) instead of only waiting: a process whose
    block raised re-raises its own error; the others raise an `InputError` with the line of the first process that
    failed (an `InputError`'s or `OSError`'s message as it is; another error's prefixed with its type and the
    process's rank), so that each exits with the same one line. Outside several processes it is the block alone.
    Ctrl-C and `SystemExit` are not exchanged: they end every process anyway.
    """
    error = None
    try:
        yield
    except Exception as caught:  # noqa: BLE001 - raised below, once the other processes know
        error = caught
    state = distributed_state()
    if state is not None:
        from accelerate.utils import gather_object

        # From every process: None, or (whether it is the user's problem, its one line).
        mine = None
        if error is not None:
            users = isinstance(error, (InputError, OSError))
            mine = (users, error_line(error) if users else f"{type(error).__name__}: {error_line(error)}")
        try:
            outcomes = gather_object([mine])
        except RuntimeError as lost:  # the process group broke: another process ended (killed, crashed) before here
            if error is not None:
                raise error from None  # this process's own failure is the line to print
            raise InputError(
                f"another process of this run ended before this step ({error_line(lost)}); this one stops too"
            ) from None
        if error is None:
            for rank, outcome in enumerate(outcomes):
                if outcome is not None:
                    users, line = outcome
                    raise InputError(line) if users else RuntimeError(f"process {rank} failed: {line}")
    if error is not None:
        raise error
