"""Dataset converters (`emmr convert`): hand-made fixtures of each source layout, checked record by record,
and the real CMU-MOSI utterance CSVs of ../shared/datasets (skipped outside CI when absent, failing in CI)."""

from __future__ import annotations

import csv
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from emmr.cli import main as cli_main
from emmr.convert import SPLITS, ConvertError, dataset_modalities, read_dataset_json, record_videos, split_by_video
from emmr.convert import csd as csd_convert
from emmr.convert import mmsa as mmsa_convert
from emmr.convert import mosi_csv
from schemas import validate_input

REPO = Path(__file__).resolve().parents[1]
MOSI_DIR = REPO.parent / "shared" / "datasets" / "cmu-mosi-utterance"


# ------------------------------------------------------------------------------------------------ helpers

def read_output(out) -> tuple[dict, dict]:
    """dataset.json, and per split {id: {"label": int, modality: list of frames or None}}; validates every split."""
    dataset = read_dataset_json(str(out))
    mods = dataset_modalities(dataset)
    records = {}
    for split in dataset["splits"]:
        table = pq.read_table(os.path.join(out, split, "part-00000.parquet"))
        result = validate_input(table, mods, len(dataset["label_names"]))
        assert result.valid.all(), result.errors[:3]
        assert table.num_rows == dataset["splits"][split]["records"]
        rows = table.to_pylist()
        records[split] = {r["id"]: r for r in rows}
        assert len(records[split]) == len(rows)
    return dataset, records


def all_records(records: dict) -> dict:
    out = {}
    for split in records:
        for rid, r in records[split].items():
            assert rid not in out, f"{rid} in two splits"
            out[rid] = dict(r, split=split)
    return out


def assert_frames(got, want: np.ndarray | None) -> None:
    """A record's modality (list of frames, or None) equals the expected float32 frames exactly."""
    if want is None or len(want) == 0:
        assert got is None
        return
    assert got is not None
    np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), np.asarray(want, dtype=np.float32))


def assert_disjoint_by_video(records: dict, video_of) -> None:
    sides = {}
    for split in records:
        for rid in records[split]:
            sides.setdefault(video_of(rid), set()).add(split)
    assert all(len(s) == 1 for s in sides.values()), {v: s for v, s in sides.items() if len(s) > 1}


# ------------------------------------------------------------------------------------------------ MOSI CSV

def _write_csv(path: Path, rows) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)


TRAIN_VIDEOS, DEV_VIDEOS = ["vidA", "vid_B", "c-D_e", "Fgh"], ["ii_9", "zz"]


def make_mosi_csv(folder: Path, rng: np.random.Generator) -> dict:
    """A small folder in the bc-LSTM layout (14 training and 6 dev utterances); returns what each should become."""
    folder.mkdir(parents=True, exist_ok=True)
    transcripts = []  # (id, text, count, label)
    for v in TRAIN_VIDEOS + DEV_VIDEOS:
        for clip in range(1, 5):
            transcripts.append((f"{v}_{clip}", f'SAID, "{v}" {clip}', 7, int(rng.integers(0, 2))))
    rng.shuffle(transcripts)
    expected = {}
    for part, videos, count in (("train", TRAIN_VIDEOS, 14), ("dev", DEV_VIDEOS, 6)):
        rows = [i for i, t in enumerate(transcripts) if t[0].rpartition("_")[0] in videos]
        used = rng.choice(rows, size=count, replace=False)  # some transcripts have no features
        audio, video, text = [], [], []
        for idx in used:
            uid, _, _, label = transcripts[idx]
            a = rng.normal(size=5) * 10
            vi = np.abs(rng.normal(size=4))
            t = rng.normal(size=3)
            audio.append([repr(float(x)) for x in a] + [str(label)])
            video.append([repr(float(x)) for x in vi] + [str(label)])
            text.append([str(int(idx))] + [repr(float(x)) for x in t])
            expected[uid] = {"label": label, "acoustic": a, "visual": vi, "text": t, "split": part}
        _write_csv(folder / f"audio_{part}.csv", audio)
        _write_csv(folder / f"video_{part}.csv", video)
        _write_csv(folder / f"text_{part}.csv", text)
    _write_csv(folder / "transcripts.csv", [(u, s, str(c), str(lab)) for u, s, c, lab in transcripts])
    return expected


def test_mosi_csv_fixture_every_record(tmp_path):
    expected = make_mosi_csv(tmp_path / "src", np.random.default_rng(0))
    dataset = mosi_csv.convert(str(tmp_path / "src"), str(tmp_path / "out"))
    dataset, records = read_output(tmp_path / "out")
    assert dataset["converter"] == "mosi-utterance-csv"
    assert list(dataset["splits"]) == ["train", "dev"] and sorted(os.listdir(tmp_path / "out")) == [
        "dataset.json", "dev", "split.json", "train"]
    assert dataset["modalities"] == [{"name": "visual", "dim": 4, "max_len": 1}, {"name": "acoustic", "dim": 5, "max_len": 1},
                                     {"name": "text", "dim": 3, "max_len": 1}]
    assert dataset["label_names"] == ["negative", "positive"]
    got = all_records(records)
    assert set(got) == set(expected)
    for uid, want in expected.items():
        r = got[uid]
        assert r["label"] == want["label"] and r["split"] == want["split"]
        for m in ("visual", "acoustic", "text"):
            assert_frames(r[m], want[m][None, :].astype(np.float32))
    assert_disjoint_by_video(records, lambda rid: rid.rpartition("_")[0])
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    assert split["method"] == "given"
    for s in ("train", "dev"):
        assert split["counts"][s]["records"] == len(records[s])
        assert sorted({rid.rpartition("_")[0] for rid in records[s]}) == split["videos"][s]
        assert {rid: v for v, ids in split["record_videos"][s].items() for rid in ids} == {
            rid: rid.rpartition("_")[0] for rid in records[s]}
        assert record_videos(str(tmp_path / "out" / s)) == {rid: rid.rpartition("_")[0] for rid in records[s]}
    assert set(split["videos"]["dev"]) <= set(DEV_VIDEOS) and set(split["videos"]["train"]) <= set(TRAIN_VIDEOS)
    assert set(split["source"]["files"]) == {f"{k}_{p}.csv" for k in ("audio", "video", "text") for p in ("train", "dev")} | {
        "transcripts.csv"}
    assert all(len(f["sha256"]) == 64 for f in split["source"]["files"].values())
    argv = ["convert", "mosi-utterance-csv", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "again")]
    assert cli_main(argv) == 0
    assert json.loads((tmp_path / "again" / "split.json").read_text())["videos"] == split["videos"]
    assert cli_main(["convert", "mosi-utterance-csv", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2


def test_mosi_csv_a_video_in_train_and_dev_fails(tmp_path):
    make_mosi_csv(tmp_path / "src", np.random.default_rng(4))
    dev_index = int(list(csv.reader(open(tmp_path / "src" / "text_dev.csv")))[0][0])
    train_index = int(list(csv.reader(open(tmp_path / "src" / "text_train.csv")))[0][0])
    rows = list(csv.reader(open(tmp_path / "src" / "transcripts.csv")))
    video = rows[train_index][0].rpartition("_")[0]
    rows[dev_index][0] = f"{video}_99"  # a dev utterance of a training video
    _write_csv(tmp_path / "src" / "transcripts.csv", rows)
    with pytest.raises(ConvertError, match=rf"1 videos have records in both .*audio_train.csv and .*audio_dev.csv \(e.g. '{video}'\)"):
        mosi_csv.convert(str(tmp_path / "src"), str(tmp_path / "out"))


def _rewrite(path: Path, row: int, col: int, value: str) -> None:
    rows = list(csv.reader(open(path)))
    rows[row][col] = value
    _write_csv(path, rows)


def test_mosi_csv_label_disagreement_fails_clearly(tmp_path):
    make_mosi_csv(tmp_path / "src", np.random.default_rng(1))
    rows = list(csv.reader(open(tmp_path / "src" / "video_train.csv")))
    _rewrite(tmp_path / "src" / "video_train.csv", 3, len(rows[3]) - 1, str(1 - int(rows[3][-1])))
    with pytest.raises(ConvertError, match=r"labels disagree for row 3 \(record '[^']+'\), field 'label'.*video_train.csv"):
        mosi_csv.convert(str(tmp_path / "src"), str(tmp_path / "out"))


def test_mosi_csv_transcript_label_disagreement_fails(tmp_path):
    make_mosi_csv(tmp_path / "src", np.random.default_rng(2))
    idx = int(list(csv.reader(open(tmp_path / "src" / "text_train.csv")))[4][0])
    rows = list(csv.reader(open(tmp_path / "src" / "transcripts.csv")))
    _rewrite(tmp_path / "src" / "transcripts.csv", idx, 3, str(1 - int(rows[idx][3])))
    with pytest.raises(ConvertError, match=rf"row 4 \(record '{rows[idx][0]}'\).*transcripts.csv row {idx}"):
        mosi_csv.convert(str(tmp_path / "src"), str(tmp_path / "out"))


def test_mosi_csv_non_finite_and_shape_errors(tmp_path):
    make_mosi_csv(tmp_path / "src", np.random.default_rng(3))
    _rewrite(tmp_path / "src" / "audio_train.csv", 2, 1, "nan")
    with pytest.raises(ConvertError, match=r"audio_train.csv: row 2 \(record '[^']+'\), column 1, field 'acoustic': non-finite"):
        mosi_csv.convert(str(tmp_path / "src"), str(tmp_path / "out"))
    dataset = mosi_csv.convert(str(tmp_path / "src"), str(tmp_path / "out"), non_finite="zero")
    assert dataset["non_finite"] == {"policy": "zero", "replaced": {"acoustic": 1}}
    rows = list(csv.reader(open(tmp_path / "src" / "text_train.csv")))
    _write_csv(tmp_path / "src" / "text_train.csv", rows[:-1])
    with pytest.raises(ConvertError, match="text_train.csv: 13 rows, but .*audio_train.csv has 14"):
        mosi_csv.convert(str(tmp_path / "src"), str(tmp_path / "out"))


def test_mosi_real_data():
    """The real CMU-MOSI utterance CSVs: train 1447 records (738 / 709) of 62 videos, dev 375 (150 / 225) of 16
    videos, and no video on both sides; ids, labels and values checked against an independent CSV reading."""
    if not MOSI_DIR.is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{MOSI_DIR} is absent, and CI must run the real-data conversion")
        pytest.skip(f"{MOSI_DIR} is absent")
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        dataset = mosi_csv.convert(str(MOSI_DIR), out)
        dataset, records = read_output(out)
        assert list(records) == ["train", "dev"]
        assert {s: len(r) for s, r in records.items()} == {"train": 1447, "dev": 375}
        for s, counts in (("train", [738, 709]), ("dev", [150, 225])):
            assert np.bincount([r["label"] for r in records[s].values()]).tolist() == counts
        assert [(m["name"], m["dim"], m["max_len"]) for m in dataset["modalities"]] == [
            ("visual", 100, 1), ("acoustic", 73, 1), ("text", 100, 1)]
        assert {s: dataset["splits"][s]["videos"] for s in records} == {"train": 62, "dev": 16}
        train_videos = {rid.rpartition("_")[0] for rid in records["train"]}
        dev_videos = {rid.rpartition("_")[0] for rid in records["dev"]}
        assert not train_videos & dev_videos and dataset["videos_in_more_than_one_split"] == []
        got = all_records(records)
        assert all(len(r[m]) == 1 for r in got.values() for m in ("visual", "acoustic", "text"))
        # Independent check of ids, labels and values against the CSV module's reading of the files.
        transcripts = list(csv.reader(open(MOSI_DIR / "transcripts.csv")))
        for part, step in (("train", 37), ("dev", 11)):
            audio = list(csv.reader(open(MOSI_DIR / f"audio_{part}.csv")))
            video = list(csv.reader(open(MOSI_DIR / f"video_{part}.csv")))
            text = list(csv.reader(open(MOSI_DIR / f"text_{part}.csv")))
            assert len(audio) == len(video) == len(text) == len(records[part])
            for i in range(0, len(audio), step):
                uid = transcripts[int(text[i][0])][0]
                r = records[part][uid]
                assert r["label"] == int(audio[i][-1]) == int(video[i][-1]) == int(transcripts[int(text[i][0])][3])
                assert_frames(r["acoustic"], np.array([[float(x) for x in audio[i][:-1]]]))
                assert_frames(r["visual"], np.array([[float(x) for x in video[i][:-1]]]))
                assert_frames(r["text"], np.array([[float(x) for x in text[i][1:]]]))
        split = json.loads((Path(out) / "split.json").read_text())
        assert split["videos"] == {"train": sorted(train_videos), "dev": sorted(dev_videos)}


def test_split_by_video_is_seeded_and_whole():
    videos = np.repeat(np.array([f"v{i}" for i in range(20)], dtype=object), np.arange(1, 21))
    a, _ = split_by_video(videos, 1, 0.1, 0.2)
    b, _ = split_by_video(videos[::-1], 1, 0.1, 0.2)
    assert (a == b[::-1]).all()  # independent of record order
    for v in np.unique(videos):
        assert len(set(a[videos == v])) == 1
    shares = np.bincount(a, minlength=3) / len(videos)
    assert abs(shares[2] - 0.2) < 0.1 and abs(shares[1] - 0.1) < 0.1


# ------------------------------------------------------------------------------------------------ MMSA

def make_mmsa(path: Path, rng: np.random.Generator, aligned: bool = False) -> dict:
    """A small MMSA-style pickle; returns it (the arrays the converter must reproduce)."""
    data = {}
    scores = {"train": [-2.4, 0.0, 1.6, -0.4, 2.8, 0.6], "valid": [0.0, -1.2, 3.0], "test": [-3.0, 0.2, -0.6, 1.4]}
    vid_of = {"train": ["a", "a", "b", "b", "c", "c"], "valid": ["d", "d", "d"], "test": ["e", "f", "f", "e"]}
    for split, y in scores.items():
        n = len(y)
        lt, la, lv = 6, 7, 5
        text = np.zeros((n, lt, 4), np.float32)
        audio = np.zeros((n, la, 3), np.float32)
        vision = np.zeros((n, lv, 2), np.float32)
        tlen = rng.integers(1, lt + 1, n)
        alen = rng.integers(1, la + 1, n)
        vlen = rng.integers(1, lv + 1, n)
        alen[0] = 0  # record 0 misses the acoustic modality
        for i in range(n):
            text[i, :tlen[i]] = rng.normal(size=(tlen[i], 4))
            audio[i, :alen[i]] = rng.normal(size=(alen[i], 3))
            vision[i, :vlen[i]] = rng.normal(size=(vlen[i], 2))
            vision[i, 0] = 0 if vlen[i] > 2 else vision[i, 0]  # a zero frame inside the sequence is kept
        # Text padding rows are not zero (BERT outputs for [PAD]); only the mask tells the length.
        pad = np.arange(lt)[None, :] >= tlen[:, None]
        text[pad] = 0.5
        text_bert = np.zeros((n, 3, lt), np.int64)
        text_bert[:, 0] = rng.integers(100, 1000, (n, lt))
        text_bert[:, 1] = ~pad
        split_data = {
            "id": np.array([f"{v}$_${k}" for k, v in enumerate(vid_of[split])], dtype=object),
            "raw_text": np.array(["words"] * n, dtype=object),
            "text": text, "text_bert": text_bert, "audio": audio, "vision": vision,
            "regression_labels": np.array(y, dtype=np.float32),
            "_lengths": {"text": tlen, "acoustic": alen, "visual": vlen},
        }
        if not aligned:
            split_data["audio_lengths"] = alen
            split_data["vision_lengths"] = list(vlen)
        data[split] = split_data
    with open(path, "wb") as f:
        pickle.dump({s: {k: v for k, v in d.items() if k != "_lengths"} for s, d in data.items()}, f)
    return data


@pytest.mark.parametrize("labels,zero", [("sentiment2", "positive"), ("sentiment2", "drop"), ("sentiment3", "positive"),
                                         ("sentiment7", "positive")])
def test_mmsa_fixture_every_record(tmp_path, labels, zero):
    src = make_mmsa(tmp_path / "unaligned_50.pkl", np.random.default_rng(4))
    mmsa_convert.convert(str(tmp_path / "unaligned_50.pkl"), str(tmp_path / "out"), labels=labels, zero=zero)
    dataset, records = read_output(tmp_path / "out")
    assert [(m["name"], m["dim"], m["max_len"]) for m in dataset["modalities"]] == [("visual", 2, 5), ("acoustic", 3, 7), ("text", 4, 6)]
    assert dataset["lengths"]["text"]["train"] == "text_bert mask"
    assert dataset["lengths"]["acoustic"]["val"] == "audio_lengths"
    names = {"sentiment2": ["negative", "positive"], "sentiment3": ["negative", "neutral", "positive"]}
    if labels in names:
        assert dataset["label_names"] == names[labels]
    for source_split, ours in (("train", "train"), ("valid", "val"), ("test", "test")):
        d = src[source_split]
        got = records[ours]
        kept = 0
        for i, rid in enumerate(d["id"]):
            y = float(d["regression_labels"][i])
            if labels == "sentiment2":
                want = None if (y == 0 and zero == "drop") else int(y >= 0)
            elif labels == "sentiment3":
                want = 0 if y < 0 else (1 if y == 0 else 2)
            else:
                want = int(min(3, max(-3, round(y)))) + 3
            if want is None:
                assert rid not in got
                continue
            kept += 1
            r = got[rid]
            assert r["label"] == want
            lens = d["_lengths"]
            assert_frames(r["text"], d["text"][i, :lens["text"][i]])
            assert_frames(r["acoustic"], d["audio"][i, :lens["acoustic"][i]])
            assert_frames(r["visual"], d["vision"][i, :lens["visual"][i]])
        assert kept == len(got)
    assert_disjoint_by_video(records, lambda rid: rid.split("$_$")[0])
    if zero == "drop":
        assert dataset["dropped"] == {"train:zero_score": 1, "val:zero_score": 1}


def test_mmsa_aligned_infers_lengths_and_old_label_layout(tmp_path):
    rng = np.random.default_rng(5)
    src = make_mmsa(tmp_path / "aligned.pkl", rng, aligned=True)
    raw = pickle.load(open(tmp_path / "aligned.pkl", "rb"))
    # Left-pad the test split's vision (as some aligned files do) and use the older labels dict.
    v = raw["test"]["vision"]
    raw["test"]["vision"] = v[:, ::-1].copy()
    for s in raw:
        raw[s]["labels"] = {"M": raw[s].pop("regression_labels")[:, None]}
    with open(tmp_path / "aligned.pkl", "wb") as f:
        pickle.dump(raw, f)
    mmsa_convert.convert(str(tmp_path / "aligned.pkl"), str(tmp_path / "out"))
    dataset, records = read_output(tmp_path / "out")
    assert dataset["lengths"]["visual"]["test"] == "nonzero span"
    assert dataset["source"]["label_field"] == "labels['M']"
    for source_split, ours in (("train", "train"), ("valid", "val"), ("test", "test")):
        d = raw[source_split]
        for i, rid in enumerate(d["id"]):
            r = records[ours][rid]
            a = d["audio"][i]
            nz = np.flatnonzero((a != 0).any(axis=1))
            assert_frames(r["acoustic"], a[nz[0]:nz[-1] + 1] if len(nz) else None)
            vv = d["vision"][i]
            nz = np.flatnonzero((vv != 0).any(axis=1))
            assert_frames(r["visual"], vv[nz[0]:nz[-1] + 1])
            assert r["label"] == int(src[source_split]["regression_labels"][i] >= 0)


def test_mmsa_errors(tmp_path):
    rng = np.random.default_rng(6)
    make_mmsa(tmp_path / "x.pkl", rng)
    raw = pickle.load(open(tmp_path / "x.pkl", "rb"))
    raw["valid"]["audio"][1, 0, 2] = -np.inf
    with open(tmp_path / "inf.pkl", "wb") as f:
        pickle.dump(raw, f)
    with pytest.raises(ConvertError, match=r"inf.pkl: split 'valid', record 'd\$_\$1' \(MMSA field 'audio'\).*field 'acoustic': non-finite"):
        mmsa_convert.convert(str(tmp_path / "inf.pkl"), str(tmp_path / "out"))
    dataset = mmsa_convert.convert(str(tmp_path / "inf.pkl"), str(tmp_path / "out"), non_finite="zero")
    assert dataset["non_finite"]["replaced"] == {"acoustic": 1}
    del raw["train"]["text"]
    with open(tmp_path / "bert.pkl", "wb") as f:
        pickle.dump(raw, f)
    with pytest.raises(ConvertError, match=r"bert.pkl: split 'train', field 'text_bert': holds BERT token ids"):
        mmsa_convert.convert(str(tmp_path / "bert.pkl"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="sentiment scores"):
        mmsa_convert.convert(str(tmp_path / "x.pkl"), str(tmp_path / "out"), labels="iemocap4")


# ------------------------------------------------------------------------------------------------ CSD

def write_csd(path: Path, root: str, videos: dict, metadata: dict | None = None) -> None:
    """A computational sequence in mmsdk's write_CSD layout."""
    import h5py

    with h5py.File(path, "w") as f:
        g = f.create_group(root)
        data = g.create_group("data")
        for vid, (features, intervals) in videos.items():
            v = data.create_group(vid)
            v.create_dataset("features", data=features)
            v.create_dataset("intervals", data=intervals)
        meta = g.create_group("metadata")
        for key, value in {"root name": root, **(metadata or {})}.items():
            ds = meta.create_dataset(key, (1,), dtype=h5py.special_dtype(vlen=str))
            ds[0] = json.dumps(value)


def make_csd(folder: Path, rng: np.random.Generator) -> dict:
    """Three modality sequences and a sentiment label sequence over 6 videos; returns them."""
    folder.mkdir(parents=True, exist_ok=True)
    videos = [f"vid{i}" for i in range(6)]
    labels, mods = {}, {"visual": {}, "acoustic": {}, "text": {}}
    dims, steps = {"visual": 3, "acoustic": 2, "text": 4}, {"visual": 0.25, "acoustic": 0.1, "text": 0.4}
    for k, vid in enumerate(videos):
        n_seg = 2 + k % 2
        starts = np.cumsum(rng.uniform(0.5, 1.5, n_seg)) + 0.3 * np.arange(n_seg) * 2
        seg = np.stack([starts, starts + rng.uniform(0.6, 1.2, n_seg)], axis=1)
        score = rng.choice([-2.2, -0.8, 0.0, 0.4, 1.8], n_seg).astype(np.float32)[:, None]
        labels[vid] = (score, seg)
        for m in mods:
            if m == "text" and vid == "vid3":
                continue  # this video has no text at all
            t = np.arange(0, seg[-1, 1] + 1, steps[m])
            intervals = np.stack([t, t + steps[m]], axis=1)
            perm = rng.permutation(len(t))  # frames stored out of time order
            mods[m][vid] = (rng.normal(size=(len(t), dims[m])).astype(np.float32)[perm], intervals[perm])
    # A segment that no frame of any modality falls in (too short) is dropped.
    score, seg = labels["vid0"]
    labels["vid0"] = (np.vstack([score, [[1.0]]]).astype(np.float32), np.vstack([seg, [[0.011, 0.012]]]))
    write_csd(folder / "labels.csd", "Opinion_Labels", labels, {"dimension names": ["sentiment"]})
    for m, vids in mods.items():
        write_csd(folder / f"{m}.csd", f"Seq_{m}", vids, {"dimension names": [f"f{i}" for i in range(dims[m])]})
    return {"labels": labels, "mods": mods}


def expected_frames(features, intervals, seg, tol=1e-6):
    order = np.argsort(intervals[:, 0], kind="stable")
    inside = [j for j in order if intervals[j, 0] >= seg[0] - tol and intervals[j, 1] <= seg[1] + tol]
    return features[inside]


def test_csd_fixture_every_record(tmp_path):
    src = make_csd(tmp_path / "src", np.random.default_rng(7))
    mods = [(m, str(tmp_path / "src" / f"{m}.csd")) for m in ("visual", "acoustic", "text")]
    csd_convert.convert(mods, str(tmp_path / "src" / "labels.csd"), str(tmp_path / "out"), labels="sentiment3", seed=2,
                        val_fraction=0.2, test_fraction=0.3)
    dataset, records = read_output(tmp_path / "out")
    got = all_records(records)
    n_expected = 0
    longest = {m: 0 for m, _ in mods}
    for vid, (score, seg) in src["labels"].items():
        for i in range(len(seg)):
            rid = f"{vid}[{i}]"
            frames = {m: (expected_frames(*src["mods"][m][vid], seg[i]) if vid in src["mods"][m] else None) for m, _ in mods}
            if all(f is None or len(f) == 0 for f in frames.values()):
                assert rid not in got
                continue
            n_expected += 1
            r = got[rid]
            assert r["label"] == int(np.sign(score[i, 0])) + 1
            for m, f in frames.items():
                assert_frames(r[m], f)
                longest[m] = max(longest[m], 0 if f is None else len(f))
    assert n_expected == len(got) and got["vid3[0]"]["text"] is None
    assert dataset["dropped"] == {"no_frames_in_any_modality": 1}
    assert {m["name"]: m["max_len"] for m in dataset["modalities"]} == longest
    assert {m["name"]: m["dim"] for m in dataset["modalities"]} == {"visual": 3, "acoustic": 2, "text": 4}
    assert dataset["label_names"] == ["negative", "neutral", "positive"]
    assert_disjoint_by_video(records, lambda rid: rid.split("[")[0])
    assert all(records[s] for s in SPLITS)
    assert dataset["source"]["labels"]["sequence"] == "Opinion_Labels"


def test_csd_folds_max_len_and_cli(tmp_path):
    src = make_csd(tmp_path / "src", np.random.default_rng(8))
    folds = {"train": ["vid0", "vid1", "vid2"], "valid": ["vid3"], "test": ["vid4", "nonexistent"]}  # vid5 in no fold
    (tmp_path / "folds.json").write_text(json.dumps(folds))
    argv = ["convert", "csd", "--modality", f"visual={tmp_path / 'src' / 'visual.csd'}",
            "--modality", f"acoustic={tmp_path / 'src' / 'acoustic.csd'}", "--labels-csd", str(tmp_path / "src" / "labels.csd"),
            "--out", str(tmp_path / "out"), "--labels", "sentiment2", "--zero", "drop", "--folds", str(tmp_path / "folds.json"),
            "--max-len", "acoustic=3"]
    assert cli_main(argv) == 0
    dataset, records = read_output(tmp_path / "out")
    assert [(m["name"], m["max_len"]) for m in dataset["modalities"]][1] == ("acoustic", 3)
    for split, vids in (("train", folds["train"]), ("val", folds["valid"]), ("test", ["vid4"])):
        assert {rid.split("[")[0] for rid in records[split]} <= set(vids)
    got = all_records(records)
    assert not any(rid.startswith("vid5[") for rid in got)
    for vid, (score, seg) in src["labels"].items():
        for i in range(len(seg)):
            rid = f"{vid}[{i}]"
            if rid not in got:
                continue
            assert score[i, 0] != 0 and got[rid]["label"] == int(score[i, 0] > 0)
            assert_frames(got[rid]["acoustic"], expected_frames(*src["mods"]["acoustic"][vid], seg[i])[:3])
    assert dataset["dropped"]["video_in_no_fold"] > 0 and dataset["dropped"]["zero_score"] > 0
    assert dataset["alignment"]["frames_truncated"]["acoustic"] > 0
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    assert split["method"] == "folds" and split["fold_videos_without_records"] == ["nonexistent"]


@pytest.mark.parametrize("scheme,want", [
    ("iemocap4", {"neu": "neutral", "hap": "happy", "sad": "sad", "ang": "angry"}),  # the paper: excited is not happy
    ("iemocap7", {"neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad", "ang": "angry", "fru": "frustrated",
                  "sur": "surprised"}),
    ("iemocap2", {"hap": "positive", "exc": "positive", "ang": "negative", "sad": "negative", "fru": "negative",
                  "fea": "negative", "dis": "negative"}),
])
def test_csd_iemocap_labels(tmp_path, scheme, want):
    rng = np.random.default_rng(9)
    codes = ["neu", "hap", "exc", "sad", "ang", "fru", "sur", "fea", "dis", "oth", "xxx"]
    labels, visual, acoustic = {}, {}, {}
    for k, code in enumerate(codes):
        vid = f"Ses0{k % 3 + 1}F_impro0{k}"
        seg = np.array([[1.0, 2.0], [3.0, 4.0]])
        labels[vid] = (np.array([[code.encode()], [codes[(k + 1) % len(codes)].encode()]]), seg)
        t = np.arange(0, 5, 0.5)
        visual[vid] = (rng.normal(size=(len(t), 2)).astype(np.float32), np.stack([t, t + 0.5], 1))
        acoustic[vid] = (rng.normal(size=(len(t), 3)).astype(np.float32), np.stack([t, t + 0.5], 1))
    write_csd(tmp_path / "emo.csd", "IEMOCAP_EmotionLabels", labels)
    write_csd(tmp_path / "v.csd", "v", visual)
    write_csd(tmp_path / "a.csd", "a", acoustic)
    csd_convert.convert([("visual", str(tmp_path / "v.csd")), ("acoustic", str(tmp_path / "a.csd"))], str(tmp_path / "emo.csd"),
                        str(tmp_path / "out"), labels=scheme, val_fraction=0.3, test_fraction=0.3)
    dataset, records = read_output(tmp_path / "out")
    names = dataset["label_names"]
    got = all_records(records)
    for vid, (feats, _) in labels.items():
        for i, code in enumerate(feats[:, 0]):
            rid = f"{vid}[{i}]"
            code = code.decode()
            if code in want:
                assert names[got[rid]["label"]] == want[code], (rid, code)
            else:
                assert rid not in got
    # Numeric one-hot labels with "dimension names" metadata give the same records.
    onehot = {}
    order = ["Neutral", "Happiness", "Excited", "Sadness", "Anger", "Frustration", "Surprise", "Fear", "Disgust", "Other"]
    alias = dict(zip(["neu", "hap", "exc", "sad", "ang", "fru", "sur", "fea", "dis", "oth"], range(10)))
    for vid, (feats, seg) in labels.items():
        m = np.zeros((len(feats), 10), np.float32)
        for i, code in enumerate(feats[:, 0]):
            if code.decode() in alias:
                m[i, alias[code.decode()]] = 3
        onehot[vid] = (m, seg)
    write_csd(tmp_path / "onehot.csd", "IEMOCAP_EmotionLabels", onehot, {"dimension names": order})
    csd_convert.convert([("visual", str(tmp_path / "v.csd")), ("acoustic", str(tmp_path / "a.csd"))], str(tmp_path / "onehot.csd"),
                        str(tmp_path / "out2"), labels=scheme, val_fraction=0.3, test_fraction=0.3)
    _, records2 = read_output(tmp_path / "out2")
    got2 = all_records(records2)
    assert {k: v["label"] for k, v in got2.items()} == {k: v["label"] for k, v in got.items()}


def test_csd_errors(tmp_path):
    src = make_csd(tmp_path / "src", np.random.default_rng(10))
    words = {vid: (np.array([[b"hello"]] * len(iv)), iv) for vid, (_, iv) in src["mods"]["text"].items()}
    write_csd(tmp_path / "words.csd", "TimestampedWords", words)
    mods = [("visual", str(tmp_path / "src" / "visual.csd")), ("text", str(tmp_path / "words.csd"))]
    with pytest.raises(ConvertError, match=r"words.csd: video 'vid0', field 'features': dtype .* is not numeric"):
        csd_convert.convert(mods, str(tmp_path / "src" / "labels.csd"), str(tmp_path / "out"))
    feats, iv = src["mods"]["acoustic"]["vid2"]
    order = np.argsort(iv[:, 0])
    seg = src["labels"]["vid2"][1][0]
    j = next(j for j in order if iv[j, 0] >= seg[0] and iv[j, 1] <= seg[1])
    feats = feats.copy()
    feats[j, 1] = np.nan
    write_csd(tmp_path / "nan.csd", "Seq_acoustic", {**src["mods"]["acoustic"], "vid2": (feats, iv)})
    mods = [("visual", str(tmp_path / "src" / "visual.csd")), ("acoustic", str(tmp_path / "nan.csd"))]
    with pytest.raises(ConvertError, match=rf"nan.csd: video 'vid2', record vid2\[0\] \(frame {j}, column 1\), field 'acoustic': non-finite"):
        csd_convert.convert(mods, str(tmp_path / "src" / "labels.csd"), str(tmp_path / "out"))
    dataset = csd_convert.convert(mods, str(tmp_path / "src" / "labels.csd"), str(tmp_path / "out"), non_finite="zero")
    assert dataset["non_finite"]["replaced"] == {"acoustic": 1}
    with pytest.raises(ConvertError, match="emotion name .sentiment. is unknown"):
        csd_convert.convert(mods, str(tmp_path / "src" / "labels.csd"), str(tmp_path / "out"), labels="iemocap4")
