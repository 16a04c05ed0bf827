"""Cross-fitting (emmr/crossfit.py): halves by whole video, each record scored by the model selected on the other
half, and `emmr compare --cross-fit` end to end on a converted MOSI-layout data set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emmr.batch import ModalityBatch
from emmr.cli import main as cli_main
from emmr.crossfit import CrossFitScorer, video_halves
from emmr.scorer import Scores
from tests.test_dataspec import mosi_like  # noqa: F401  (fixture)


def test_halves_are_whole_videos_about_half_the_records_and_seeded():
    videos = [f"v{i}" for i in range(16) for _ in range(i % 5 + 1)]
    ids = np.array([f"{v}_{k}" for k, v in enumerate(videos)], dtype=object)
    video_of = dict(zip(ids, videos))
    for seed in range(5):
        half = video_halves(ids, video_of, seed)
        assert set(half.tolist()) == {0, 1}
        for v in set(videos):
            assert len({h for h, w in zip(half, videos) if w == v}) == 1
        assert abs((half == 0).sum() - len(ids) / 2) <= 5  # the largest video has 5 records
        assert (video_halves(ids[::-1], video_of, seed) == half[::-1]).all()  # order does not matter
    assert len({tuple(video_halves(ids, video_of, s)) for s in range(5)}) > 1
    with pytest.raises(ValueError, match="record 'x_1': its video is unknown"):
        video_halves(np.array(["x_1"], dtype=object), video_of, 0)


class ConstantScorer:
    """Predicts one label for every record: tells which model scored a record."""

    def __init__(self, label: int):
        self.label, self.meta, self.config = label, {"model_version": f"const{label}"}, None

    @property
    def version(self) -> str:
        return self.meta["model_version"]

    def score(self, batch: ModalityBatch) -> Scores:
        n = len(batch)
        probs = np.zeros((n, 2), dtype=np.float32)
        probs[:, self.label] = 1
        full = np.full(n, self.label, dtype=np.int64)
        return Scores(probs, full, np.zeros(n, bool), np.zeros(n, np.float32), np.full(n, -1), full, np.full(n, -1),
                      np.zeros(n, bool))


def test_each_record_is_scored_by_the_model_selected_on_the_other_half():
    ids = np.array([f"r{i}" for i in range(7)], dtype=object)
    half_of = {i: int(k % 3 == 0) for k, i in enumerate(ids)}
    batch = ModalityBatch(ids=ids, features={"a": np.zeros((7, 1, 1), np.float32)}, lengths={"a": np.ones(7, np.int64)},
                          labels=np.zeros(7, np.int64))
    scores = CrossFitScorer((ConstantScorer(0), ConstantScorer(1)), half_of).score(batch)
    # half 0 is scored by the model selected on half 1 (label 1), and the other way round
    assert scores.label_index.tolist() == [1 - half_of[i] for i in ids]
    assert scores.probabilities[np.arange(7), scores.label_index].tolist() == [1.0] * 7


@pytest.mark.slow
def test_compare_cross_fit_writes_dev_and_cross_fitted_tables(mosi_like, tmp_path):  # noqa: F811
    out = tmp_path / "cmp"
    argv = ["compare", "--train", str(mosi_like / "train"), "--val", str(mosi_like / "dev"), "--cross-fit",
            "--out", str(out), "--methods", "tf", "--seeds", "1", "--first-seed", "1", "--epochs", "1", "--teacher-epochs", "1",
            "--missing-rates", "0,0.5"]
    assert cli_main(argv) == 0
    dev = json.loads((out / "metrics.json").read_text())
    crossed = json.loads((out / "cross-fitted" / "metrics.json").read_text())
    assert dev["test"] == dev["val"] == str(mosi_like / "dev") and crossed["cross_fitted"] is True
    for res in (dev, crossed):
        assert list(res["methods"]["tf"]["by_rate"]) == ["0", "0.5"]
        # real data carry no key columns: the flag is scored against the frozen teacher's key modalities
        assert {"flag_precision", "flag_recall", "flag_auroc", "key_truth_rate"} <= set(res["methods"]["tf"]["runs"][1])
        assert all(0 <= r["accuracy"] <= 1 for r in res["methods"]["tf"]["runs"])
        assert sum(map(sum, res["methods"]["tf"]["by_rate"]["0"]["confusion"])) == 6  # every dev record, once
    for res in (dev, crossed):  # --first-seed 1: both tables are of seed 1
        assert {r["seed"] for r in res["methods"]["tf"]["runs"]} == {1}
    assert dev["methods"]["tf"]["training"] == [{"seed": 1, "ensemble": None}]  # one member: no gate
    assert crossed["methods"]["tf"]["training"] == [{"seed": 1, "half": h, "ensemble": None} for h in (0, 1)]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["tf-seed1", "tf-seed1-half0", "tf-seed1-half1"]
    assert cli_main(["compare", "--train", str(mosi_like / "train"), "--test", str(mosi_like / "dev"), "--cross-fit",
                     "--out", str(out)]) == 2
