"""Loading what a user points a command at, with errors that name the folder or file: saved models (local folders
or Hub ids, safetensors only), their feature extractors (checked against the model's config), and output folders.

Every command and run script loads through here, so a typo'd path, a truncated `model.safetensors`, a folder with only
pickled weights or a front end that disagrees with the model gives the same one line everywhere.
"""

import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path

import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import SafetensorError, safe_open

from .errors import InputError, error_line
from .feature_extraction_htsat import HTSATFeatureExtractor
from .modeling_htsat import HTSATPreTrainedModel

# Weight files of a saved model, and the pickled ones this package refuses (unpickling can run code).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# The precisions a model can be loaded in, by the names the command lines take.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(
    model_class: type[HTSATPreTrainedModel],
    source: str | PathLike,
    dtype: str | torch.dtype | None = None,
    **kwargs,
) -> HTSATPreTrainedModel:
    """`model_class.from_pretrained(source, **kwargs)` from a saved model folder or a Hub id, reading the weights
    from `model.safetensors` only, in `dtype` (a name of `DTYPES` or a torch dtype; default: as saved).

    Raises:
        InputError: one line naming the folder or file: a path that does not exist, a file instead of a folder, a
            folder without `config.json` or without `model.safetensors` (a pickled `pytorch_model.bin` is refused:
            unpickling can run code), a truncated or corrupt weights file, or a Hub id that cannot be loaded; or
            a dtype name not in `DTYPES` (checked first).
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    if dtype is not None:
        kwargs["dtype"] = dtype
    check_model_source(source)
    try:
        return model_class.from_pretrained(source, use_safetensors=True, **kwargs)
    except SafetensorError as error:  # a shard of a sharded model (single files are checked above)
        raise InputError(f"{source}: cannot read the weights ({error_line(error)})") from None
    except OSError as error:
        if Path(source).is_dir():
            raise InputError(f"{source}: cannot load the model ({error_line(error)})") from None
        raise InputError(
            f"{source}: no such model folder, and no model of that name could be loaded from the Hub "
            f"({error_line(error)})"
        ) from None


def check_model_source(source: str | PathLike) -> None:
    """The checks of [`load_model`] that need no loading: a local folder's files, and a `model.safetensors` whose
    header covers the file (a truncated copy fails here); any other name must be a valid Hub id.

    Raises:
        InputError: as [`load_model`], naming the folder or file.
    """
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{path}: not a saved model folder (no config.json)")
        if not any((path / name).is_file() for name in WEIGHT_FILES):
            pickled = next((name for name in PICKLED_WEIGHT_FILES if (path / name).is_file()), None)
            if pickled is not None:
                raise InputError(
                    f"{path / pickled}: pickled PyTorch weights are not loaded (unpickling can run code); load them "
                    "once where you trust the file and save the model with save_pretrained, which writes "
                    "model.safetensors"
                )
            raise InputError(f"{path}: no model.safetensors in this model folder")
        weights = path / WEIGHT_FILES[0]
        if weights.is_file():
            try:
                with safe_open(weights, framework="pt"):
                    pass
            except (SafetensorError, OSError) as error:
                raise InputError(
                    f"{weights}: cannot read the weights, the file is truncated or not a safetensors file "
                    f"({error_line(error)})"
                ) from None
        return
    if path.exists():
        raise InputError(f"{path}: is a file, not a saved model folder")
    try:
        validate_repo_id(str(source))
    except HFValidationError:
        # Not a Hub id either ("/data/typo", "../models/x"): say so instead of the Hub client's complaint.
        raise InputError(f"{source}: no such model folder") from None


def load_feature_extractor(source: str | PathLike, config) -> HTSATFeatureExtractor:
    """The feature extractor saved with a model (built from `config` when the folder, or Hub model, has none),
    checked against the model's config with [`HTSATFeatureExtractor.check_matches_config`].

    Raises:
        InputError: naming the folder, for an unreadable `preprocessor_config.json` or front-end values that differ
            from the config's.
    """
    local = Path(source)
    if local.is_dir() and not (local / "preprocessor_config.json").is_file():
        extractor = HTSATFeatureExtractor.from_config(config)
    else:
        try:
            extractor = HTSATFeatureExtractor.from_pretrained(source)
        except OSError as error:
            if local.is_dir():
                saved = local / "preprocessor_config.json"
                raise InputError(f"{saved}: cannot be read ({error_line(error)})") from None
            extractor = HTSATFeatureExtractor.from_config(config)  # a Hub model saved without one
        except InputError as error:
            raise InputError(f"{source}: {error}") from None
    try:
        extractor.check_matches_config(config)
    except InputError as error:
        raise InputError(f"{source}: {error}") from None
    return extractor


def check_output_dir(path: str | PathLike) -> Path:
    """Refuse, before any work is done, an output folder that cannot be created or written.

    Returns:
        `path` as a `Path` (not created).

    Raises:
        InputError: `path` is a file, lies under a file, or its nearest existing folder is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: is a file, not a folder to write to")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{path}: cannot create this folder, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{path}: cannot write here, {existing} is not writable")
    return path


def check_outside_inputs(path: str | PathLike, inputs: Iterable[str | PathLike | None]) -> Path:
    """Refuse an output folder that is, lies inside or contains one of `inputs` (the local files and folders a
    command reads; Hub ids, missing paths and `None` are skipped): writing it would replace or mix with them.

    Returns:
        `path` as a `Path`.

    Raises:
        InputError: naming the folder and the input.
    """
    path = Path(path)
    target = path.resolve()
    for item in inputs:
        if item is None or not Path(item).exists():
            continue
        source = Path(item).resolve()  # resolved both sides: `out/../src` and symlinks name the same folder
        if target == source:
            raise InputError(f"{path}: is the input {item} itself; write the output to a new folder")
        if source in target.parents:
            raise InputError(f"{path}: lies inside the input {item}; write the output to a folder outside it")
        if target in source.parents:
            raise InputError(f"{path}: contains the input {item}, which writing the output would replace; write it to "
                             "another folder")
    return path


def check_replaceable_dir(path: str | PathLike) -> None:
    """Refuse, as a folder to be replaced or emptied as a whole, the current folder or one that contains it (which
    cannot be moved aside), the home folder and a filesystem root.

    Raises:
        InputError: naming the folder.
    """
    target = Path(path).resolve()
    here = Path.cwd().resolve()
    if target == here or target in here.parents:
        raise InputError(f"{path}: is the current folder or contains it; write the output to a new folder")
    if target == Path.home().resolve() or target == Path(target.anchor):
        place = "the home folder" if target == Path.home().resolve() else "a filesystem root"
        raise InputError(f"{path}: is {place}; write the output to a new folder inside it")


def check_new_output_dir(
    path: str | PathLike, inputs: Iterable[str | PathLike | None] = (), overwrite: bool = False
) -> Path:
    """The folder a command writes as a whole ([`staged_output_dir`]), checked before any work: writable
    ([`check_output_dir`]), not overlapping `inputs` ([`check_outside_inputs`]), not a folder that cannot be replaced
    ([`check_replaceable_dir`]), and new or empty unless `overwrite` (it is then replaced as a whole). A symbolic
    link is followed: the output is written where it points, and the link stays.

    Returns:
        The folder to write (a link's target).

    Raises:
        InputError: naming the folder and, for an overlap, the input; an empty name.
    """
    if isinstance(path, str) and not path.strip():
        raise InputError("the output folder's name is empty; give the folder to write")
    if Path(path).is_symlink():
        path = Path(os.path.realpath(path))
    path = check_outside_inputs(check_output_dir(path), inputs)
    check_replaceable_dir(path)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise InputError(
            f"{path}: the folder is not empty; write to a new or empty folder, or replace it as a whole with "
            "overwrite=True (--overwrite)"
        )
    return path


def save_checked_model(folder: str | PathLike, model: HTSATPreTrainedModel, extractor: HTSATFeatureExtractor,
                       probe: torch.Tensor, output_dir: str | PathLike, tolerance: float = 1e-5) -> float:
    """Save a converted `model` and its `extractor` into `folder` (a [`staged_output_dir`] staging folder) and check
    what loaders will read back: the model reloads with its class's `from_pretrained`, the saved extractor still
    describes the saved config's front end, and the reloaded model's logits on `probe` `(batch, frames, mel_bins)`
    equal the converted one's within `tolerance`.

    Returns:
        The largest absolute logit difference.

    Raises:
        InputError: naming `output_dir` (the folder the user asked for): a saved model that does not reload, an
            extractor that does not fit it, or logits that differ; nothing is then moved into place.
    """
    model.save_pretrained(folder)
    extractor.save_pretrained(folder)
    try:
        reloaded = type(model).from_pretrained(folder).eval()
    except (OSError, ValueError, RuntimeError) as error:  # a saved config that does not rebuild the model
        raise InputError(f"{output_dir}: the saved model does not reload ({error_line(error)}); nothing was "
                         "written") from None
    HTSATFeatureExtractor.from_pretrained(folder).check_matches_config(reloaded.config)
    with torch.no_grad():
        difference = float((reloaded(probe).logits - model(probe).logits).abs().max())
    if not difference <= tolerance:
        raise InputError(f"{output_dir}: the saved model's logits differ from the converted one's by "
                         f"{difference:.3g}; nothing was written")
    return difference


def _missing_parents(path: Path) -> list[Path]:
    """The folders above `path` that do not exist yet, deepest first: a staged output makes them and removes them
    again when it fails."""
    missing, parent = [], path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty: something else was written there meanwhile
            break


def _staging_tag() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


@contextmanager
def staged_output_dir(path: str | PathLike) -> Iterator[Path]:
    """A new folder next to `path` to write a command's whole output into. When the block ends without an exception,
    it takes `path`'s place (an existing `path` is moved aside first and deleted only once the new folder is in
    place); when the block raises (an error, a failed check, Ctrl-C), it is deleted, with the parent folders made for
    it, and `path` is left as it was. So `path` is never a partial output.

    `sed.detection.staged_outputs` swaps single files inside a results folder that keeps the user's other files;
    a model folder is replaced as a whole instead, so that no file of another model stays beside the new one.
    """
    path = Path(path)
    made = _missing_parents(path)
    tag = _staging_tag()
    staging = path.parent / f".{path.name}.partial-{tag}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()  # not mkdtemp: the folder moved into place gets the usual permissions, not 0700
        yield staging
        previous = path.parent / f".{path.name}.previous-{tag}" if path.exists() or path.is_symlink() else None
        if previous is not None:
            path.rename(previous)
        try:
            staging.rename(path)
        except BaseException:
            if previous is not None:
                previous.rename(path)
            raise
        if previous is not None and previous.is_dir() and not previous.is_symlink():
            shutil.rmtree(previous, ignore_errors=True)
        elif previous is not None:
            previous.unlink()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(made)
        raise


@contextmanager
def staged_output_file(path: str | PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary file name next to `path` (`.NAME.partial-*` + `suffix`) to write one output file into; when the
    block ends without an exception it replaces `path` in one rename (same folder), and when the block raises it is
    deleted, with the parent folders made for it, and `path` is left as it was. The single-file twin of
    [`staged_output_dir`]."""
    path = Path(path)
    made = _missing_parents(path)
    partial = path.parent / f".{path.name}.partial-{_staging_tag()}{suffix}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield partial
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        _remove_empty(made)
        raise


__all__ = [
    "PICKLED_WEIGHT_FILES",
    "WEIGHT_FILES",
    "check_model_source",
    "check_new_output_dir",
    "check_outside_inputs",
    "check_output_dir",
    "check_replaceable_dir",
    "load_feature_extractor",
    "load_model",
    "save_checked_model",
    "staged_output_dir",
    "staged_output_file",
]
