"""Shared fixtures: small modality specs and synthetic data sets."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from emmr import synth
from emmr.config import preset

pytest_plugins = ["servers"]  # real test servers: tests/servers.py

# CI explores the same examples every run (a red CI means a change broke something, not a new random draw);
# developers' runs keep exploring new ones and remember failures in .hypothesis/.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def local_job_store(tmp_path_factory):
    """Local runs record themselves (beam_pipeline/jobs.py) in a store of the session, not the user's."""
    folder = tmp_path_factory.mktemp("jobs")
    previous = os.environ.get("EMMR_JOBS_DIR")
    os.environ["EMMR_JOBS_DIR"] = str(folder)
    yield str(folder)
    if previous is None:
        os.environ.pop("EMMR_JOBS_DIR", None)
    else:
        os.environ["EMMR_JOBS_DIR"] = previous


@pytest.fixture(scope="session")
def small_config():
    return preset("small")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory, small_config):
    """400 small-preset records, 30 % missing one modality."""
    out = tmp_path_factory.mktemp("synth")
    synth.write(synth.SynthParams(records=400, seed=3, missing_rate=0.3), small_config.modalities, str(out))
    return str(out)
