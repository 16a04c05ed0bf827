"""Arguments shared by the evaluation commands (not a subcommand itself)."""

from __future__ import annotations

import argparse

from emmr.missing import DEFAULT_RATES


def add_protocol_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--missing-rates", default=",".join(f"{r:g}" for r in DEFAULT_RATES),
                   help="comma-separated missing rates (default 0,0.1,...,0.5)")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (at least 5 for the paper's protocol)")


def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--missing-rates: expected comma-separated numbers, got {text!r}") from None
    if not rates or any(not 0 <= r <= 1 for r in rates):
        raise ValueError(f"--missing-rates: expected rates in [0, 1], got {text!r}")
    return rates
