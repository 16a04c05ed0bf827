"""What `emmr evaluate` and `emmr compare` write for a reader (issue 15): a word when the data already miss
modalities (rates at or below that share drop nothing more), the flag table from rate 0 like the plots, and line
plots split so that eight methods stay readable."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from emmr import synth
from emmr.cli import main
from emmr.config import preset
from emmr.evaluate import aggregate
from emmr.methods import METHODS
from emmr.report import already_missing_note, plot_groups, write_all
from test_pipeline import trained  # noqa: F401 - the session fixture: data (30 % missing) and a model


def test_evaluate_says_when_the_data_already_miss_modalities(trained, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.INFO)
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", trained["model"], "--data", trained["data"], "--out", str(out),
                 "--seeds", "1", "--missing-rates", "0,0.1,0.3,0.5"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("already miss a modality in 30.0% of the records" in w and "rates 0, 0.1, 0.3 drop nothing more" in w
               for w in warnings), warnings
    assert any("missing rate 0.5 (records missing a modality: 0.500)" in r.getMessage() for r in caplog.records)
    table = (out / "metrics.md").read_text()
    assert "already miss a modality in 30.0% of the records" in table
    flag_table = table.split("## key-missing flag")[1].split("\n## ")[0]
    flag_rows = [line for line in flag_table.splitlines() if line.startswith("| emmr | ")]
    assert [row.split(" | ")[1] for row in flag_rows] == ["0", "0.1", "0.3", "0.5"]  # rate 0 too, like the plots


def test_complete_data_get_no_note(trained, tmp_path, caplog):  # noqa: F811
    data = tmp_path / "complete"
    synth.write(synth.SynthParams(records=40, seed=5, missing_rate=0.0), preset("small").modalities, str(data))
    caplog.set_level(logging.INFO)
    assert main(["evaluate", "--checkpoint", trained["model"], "--data", str(data), "--out", str(tmp_path / "e"),
                 "--seeds", "1", "--missing-rates", "0,0.5"]) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "already miss" not in (tmp_path / "e" / "metrics.md").read_text()


def fake_results(methods, rates=(0.0, 0.25, 0.5), seeds=2, own=0.0) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for m in methods:
        runs = [{"rate": r, "seed": s, "accuracy": float(rng.uniform(0.6, 0.9)), "macro_f1": float(rng.uniform(0.6, 0.9)),
                 "missing_fraction": max(r, own), "flag_rate": 0.1, "confusion": [[5, 1], [2, 4]]}
                for r in rates for s in range(seeds)]
        out[m] = {"runs": runs, "by_rate": aggregate(runs)}
    return out


def test_the_note_names_exactly_the_rates_that_add_nothing():
    assert already_missing_note(fake_results(["emmr"])) is None
    note = already_missing_note(fake_results(["emmr"], own=0.25))
    assert "in 25.0% of the records" in note and "rates 0, 0.25 drop nothing more and give the same results" in note


def test_many_methods_are_plotted_in_two_readable_plots(tmp_path):
    groups = plot_groups(list(METHODS))
    assert [(suffix, methods) for suffix, _, methods in groups] == [
        ("", ["emmr", "tf", "ae", "mmin"]),
        ("_ablations", ["emmr", "emmr-max", "emmr-average", "emmr-no-forward", "emmr-no-backward"])]
    paths = write_all(fake_results(list(METHODS)), str(tmp_path), "t", ["negative", "positive"])
    for metric in ("accuracy", "macro_f1"):
        assert f"{metric}_vs_missing_rate.png" in paths and f"{metric}_vs_missing_rate_ablations.png" in paths
    assert all((tmp_path / p).stat().st_size > 0 for p in paths)


@pytest.mark.parametrize("methods", [["emmr"], ["emmr", "tf", "emmr-max"]])
def test_few_methods_share_one_plot(methods, tmp_path):
    assert plot_groups(methods) == [("", "", methods)]
    paths = write_all(fake_results(methods), str(tmp_path), "t", ["negative", "positive"])
    assert not [p for p in paths if "ablations" in p]
