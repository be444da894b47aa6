"""Shared test fixtures. Data from `../shared` (reference vectors, AudioSet files, DESED baseline) is read in place;
tests that need it skip when it is absent, and fail instead under CI (`CI=true`)."""

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HTSAT_SHARED_DIR", REPO_ROOT.parent / "shared"))
REFERENCE_CASES = ("tiny-audioset", "tiny-esc50", "tiny-scv2", "tiny-notscam")


def require_shared(relative: str) -> Path:
    """Path of `../shared/<relative>`; skips the test when absent, or fails under CI."""
    path = SHARED / relative
    if not path.exists():
        message = f"{path} is absent: these tests compare with data in ../shared (set HTSAT_SHARED_DIR to move it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def tiny_config(**overrides):
    """An HTS-AT small enough for CPU tests that still has every code path of the full model (shifted windows,
    patch merging, the last 8x8 stage without shift)."""
    from htsat_hf import HTSATConfig

    kwargs = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], num_labels=5)
    kwargs.update(overrides)
    return HTSATConfig(**kwargs)


# tiny_config overrides of valid configs whose model reads fewer log-mel frames than a 10 s clip gives (1001; 2001 at
# hop 160): 512 with 100 or 128 mel bins (the image folds 2 chunks, not 4), 256 with spec_size 128, 1024 at hop 160.
SHORT_CLIP_CONFIGS = {
    "100-mel-bins": dict(num_mel_bins=100),
    "128-mel-bins": dict(num_mel_bins=128),
    "spec-size-128": dict(spec_size=128, patch_size=2),
    "hop-160": dict(hop_length=160),
}


def pytest_configure(config):
    # Marked tests still run by default (`make test`); `-m "not slow"` leaves them out for a quick run.
    config.addinivalue_line("markers", "slow: takes tens of seconds (full-size model, benchmark scripts)")
