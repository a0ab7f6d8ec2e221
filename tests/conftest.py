"""Shared fixtures: one tiny simulated world per test session (per xdist worker), written once.

Tests that modify a dataset folder copy it first (``tiny_copy``); the session folder stays pristine.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from bgmrec.data.dataset import Dataset, load_dataset
from bgmrec.data.simulate import WorldTruth, simulate, world_config

pytest.register_assert_rewrite("bgmrec.testing")  # the contract mixin's asserts explain their failures
from bgmrec.testing import tiny_world_folder  # noqa: E402


def pytest_configure(config) -> None:
    # under pytest-xdist every worker is one process per core: one torch thread each avoids oversubscription
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
    elif (config.pluginmanager.hasplugin("xdist") and config.getoption("numprocesses", None)
          and importlib.util.find_spec("librosa") and importlib.util.find_spec("opensmile")):
        # before any xdist worker starts: compile librosa's numba functions once, here, so that workers
        # never write numba's cache at the same time (numba/numba#10128 crashes them on a fresh install);
        # without workers there is no race, and a run of one test file skips these 5 s
        from bgmrec.features.audio import AudioExtractor

        AudioExtractor().warm_up()


@pytest.fixture(autouse=True)
def torch_generator_given_back():
    """Every test leaves torch's global generator as it found it (several seed it): what a test draws does
    not depend on which tests ran before it in its worker."""
    import torch

    with torch.random.fork_rng(devices=[]):
        yield


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> tuple[Dataset, WorldTruth]:
    """The ``tiny`` world in memory (seed 0), as :func:`bgmrec.data.simulate.simulate` returns it."""
    return simulate(world_config("tiny"))


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """The ``tiny`` world saved with its truth (the contract mixin's, one per process); never modify it
    (use ``tiny_copy``)."""
    return tiny_world_folder()


@pytest.fixture(scope="session")
def tiny_ds(tiny_dir) -> Dataset:
    """The ``tiny`` world loaded back from disk (memory-mapped, ``root`` set: the oracle can fit)."""
    return load_dataset(tiny_dir)


@pytest.fixture(scope="session")
def tiny_spec(tiny_ds):
    from bgmrec.models.base import FeatureSpec

    return FeatureSpec.of(tiny_ds)


@pytest.fixture
def tiny_copy(tiny_dir, tmp_path) -> Path:
    """A private copy of the tiny dataset folder that a test may damage."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "tiny"))


@pytest.fixture
def stop_training(monkeypatch):
    """``stop_training(n)``: the ``n``-th training (``bgmrec.runs.train_model``) from now stops as Ctrl-C would;
    returns the list of each training's positional arguments, in order (the stopped one's too)."""
    import bgmrec.runs

    def at(n: int) -> list[tuple]:
        real, calls = bgmrec.runs.train_model, []

        def stopped(*args, **kwargs):
            calls.append(args)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(bgmrec.runs, "train_model", stopped)
        return calls

    return at
