"""Test-suite settings: hypothesis draws the same examples on every run, so CI is reproducible
(a failure found while developing is kept as an explicit example, not left to chance).

numpy's BLAS runs on one thread (set before anything imports numpy; an explicit setting in the
environment wins): the suite's matrices are small, and on a busy 2-core machine OpenBLAS's
threads spin against ORT's and each other (the batched least-squares refits of the
compensation tests took about ten times the CPU)."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402  (the imports below may load numpy)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("deterministic", derandomize=True, print_blob=True)
settings.load_profile("deterministic")

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


@pytest.fixture(scope="session")
def sample_subset(tmp_path_factory):
    """``sample_subset("lenet300_test", 200)``: the path of an .npz with the first 200 samples of
    sample_models/lenet300_test.npz (written once per session), for tests whose point does not
    need all the samples: every search of the pipeline evaluates the model on all of them."""
    folder = tmp_path_factory.mktemp("sample_subsets")

    def subset(name: str, n: int) -> Path:
        path = folder / f"{name}_{n}.npz"
        if not path.exists():
            with np.load(SAMPLES / f"{name}.npz") as full:
                np.savez(path, **{key: full[key][:n] for key in full.files})
        return path

    return subset
