"""Shared fixtures: small modality specs and synthetic data sets."""

from __future__ import annotations

import pytest

from emmr import synth
from emmr.config import preset

pytest_plugins = ["servers"]  # real test servers: tests/servers.py


@pytest.fixture(scope="session")
def small_config():
    return preset("small")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory, small_config):
    """400 small-preset records, 30 % missing one modality."""
    out = tmp_path_factory.mktemp("synth")
    synth.write(synth.SynthParams(records=400, seed=3, missing_rate=0.3), small_config.modalities, str(out))
    return str(out)
