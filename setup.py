"""Packaging for EMMR scoring: the model (emmr), the scoring job (beam_pipeline) and the data contracts (schemas)."""

from setuptools import find_packages, setup

# One Beam version for packaging, the worker image (deploy/Dockerfile reads it from a test) and CI.
BEAM_VERSION = "2.77.0"

setup(
    name="emmr-scoring",
    version="0.1.0",
    description="EMMR sentiment scoring with key-missing-modality flags, as an Apache Beam job",
    python_requires=">=3.10",
    packages=find_packages(include=["emmr", "emmr.*", "beam_pipeline", "beam_pipeline.*", "schemas", "schemas.*"]),
    package_data={"schemas": ["*.md"], "emmr": ["configs/*.yaml"]},
    install_requires=[
        # Never apache-beam[torch]: it pins torch<2.8 and pip then silently downgrades Beam.
        f"apache-beam[gcp]=={BEAM_VERSION}",
        "torch>=2.4",
        "numpy>=1.26",
        "pyarrow>=16,<26",
        "safetensors>=0.4",
        "prometheus-client>=0.20",
        "scipy>=1.11",
        "PyYAML>=6",
        "tqdm>=4.66",
    ],
    extras_require={
        "train": ["matplotlib>=3.8", "h5py>=3.10"],
        "dev": ["matplotlib>=3.8", "h5py>=3.10", "pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100",
                "gcp-storage-emulator>=2024.1"],
    },
    entry_points={"console_scripts": ["emmr=emmr.cli:main", "emmr-score=beam_pipeline.run:main"]},
)
