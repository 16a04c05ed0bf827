"""Arguments shared by the commands (not a subcommand itself): the evaluation protocol, the training settings
with their defaults, and the check that an output folder can be written before any work starts."""

from __future__ import annotations

import argparse
import os

from emmr.missing import DEFAULT_RATES

PRESET_HELP = ("model sizes: modality names, dimensions and lengths, hidden size, classes (paper: the paper's "
               "CMU-MOSI features; small: seconds on a CPU, three TF members on their own encoders, training keeps "
               "the weights' moving average; mosi: the MOSI utterance features, with its training settings); it must "
               "fit the data (default: the preset that fits the data, else small's sizes with the data's modalities "
               "and labels)")

# TrainConfig field -> (type, help); the default is read from TrainConfig, so the help cannot drift from it.
TRAINING_FLAGS = {
    "epochs": (int, "training epochs of the method; the epoch with the best validation score is kept"),
    "teacher_epochs": (int, "training epochs of the full-modality network (Eq. 3), trained first, then frozen"),
    "batch_size": (int, "records per optimisation step"),
    "lr": (float, "Adam learning rate"),
    "seed": (int, "seed of the validation split, the initialisation and the simulated missingness"),
    "missing_rate": (float, "share of training records that miss a modality (simulated, re-drawn every epoch)"),
    "patience": (int, "stop after this many epochs without a better validation score"),
    "device": (str, "cpu, cuda or cuda:N; cuda without a GPU is an error, never a CPU fallback"),
}


def add_training_arguments(p: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """--epochs, --teacher-epochs, ...: each overrides the preset, the --config file and the method (None = keep)."""
    from dataclasses import fields

    from emmr.train import TrainConfig  # imported only by the commands that train (it imports torch)

    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for name in names:
        kind, text = TRAINING_FLAGS[name]
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"{text} (default {defaults[name]}, unless --config sets it)")


def add_protocol_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--missing-rates", default=",".join(f"{r:g}" for r in DEFAULT_RATES),
                   help="comma-separated missing rates (default 0,0.1,...,0.5)")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (at least 5 for the paper's protocol; default 5)")


def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--missing-rates: expected comma-separated numbers, got {text!r}") from None
    if not rates or any(not 0 <= r <= 1 for r in rates):
        raise ValueError(f"--missing-rates: expected rates in [0, 1], got {text!r}")
    return rates


def check_output_folder(path: str, flag: str) -> None:
    """Raise ValueError, before any work, when the folder `path` cannot be created or written (local paths;
    remote ones are checked by their first write)."""
    if "://" in path:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a file; expected a folder")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{flag} {path!r}: {parent!r} is a file, so the folder cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path!r}: {parent!r} is not writable")
