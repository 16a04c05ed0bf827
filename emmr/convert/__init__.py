"""Dataset converters to input record v1 Parquet (`emmr convert`), and what they share.

Every converter writes the same layout:

    OUT/<split>/part-00000.parquet input v1 records (schemas.input_schema), validated before writing, one folder
                                   per split: train, val, test (mmsa, csd) or train, dev (mosi-utterance-csv)
    OUT/dataset.json               modalities [{name, dim, max_len}], label_names, label mapping, source,
                                   split counts, what was dropped or repaired: `emmr train` reads it
    OUT/split.json                 which videos went where (and how: seed and fractions, folds, or given), and
                                   the video of every record (`record_videos`: cross-fitting splits by video)

Converters:
- `emmr.convert.mosi_csv`: the CMU-MOSI utterance-level CSVs of ../shared/datasets/cmu-mosi-utterance (train and
  dev, as the files give them);
- `emmr.convert.mmsa`: MMSA's `aligned_50.pkl` / `unaligned_50.pkl` pickles (trusted files only);
- `emmr.convert.csd`: the CMU Multimodal SDK's `.csd` HDF5 computational sequences.

Label mappings (`LABEL_SCHEMES`), shared by all converters, with their sources. The EMMR paper's own definitions
(Zeng, Zhou and Liu, EMNLP 2022, Section 4.1 and Appendix B) are followed where it gives them:
- `sentiment2`: negative (score < 0) / positive (score > 0). A score of exactly 0 is counted as positive
  by default (`zero="positive"`, MMSA's "Has0" binary convention: non-negative vs negative; also the
  convention of the bc-LSTM MOSI files, whose 2199 utterances include the zero-rated ones) or dropped
  (`zero="drop"`, MMSA's "Non0" convention, which excludes 0). The paper does not use two MOSI classes.
- `sentiment3`: negative [-3, 0), neutral (exactly 0), positive (0, 3]: the paper's CMU-MOSI setting (its
  training split: 833 positive, 81 neutral, 866 negative), also MMSA's 3-class convention.
- `sentiment7`: the score rounded and clipped to -3..3 (CMU-MOSI's Acc-7 convention), classes 0..6.
- `iemocap4`: neutral, happy, sad, angry, with *happy alone*: the paper's four classes (its training split:
  349 happy, 659 angry, 653 sad, 1,042 neutral, so excited is not merged into happy; MMIN and others merge
  it, which this converter did before it followed the paper). Other emotions, excited included, are dropped.
  Class order follows CMU's / MulT's IEMOCAP tensors (neutral, happy, sad, angry).
- `iemocap7`: the paper's seven classes: the four above plus frustrated, excited and surprised. Fear,
  disgust, other and unlabelled (`xxx`) are dropped.
- `iemocap2`: the paper's two classes: negative = frustrated, angry, sad, fear and disgust (the paper's
  "disappointing"), positive = happy and excited; neutral, surprised and other are dropped. The label names
  are the sentiment ones (negative, positive), so a model trained on it has the same heads as a MOSI model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.arrow import SCHEMA_VERSION, input_schema, modality_type
from schemas.modality import ModalitySpec, check_modalities
from schemas.validate import RecordValidationError, validate_input

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DATASET_FORMAT = "emmr.dataset"
DATASET_VERSION = 1
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.2
NON_FINITE_POLICIES = ("fail", "zero")
ZERO_POLICIES = ("positive", "drop")

SENTIMENT7_NAMES = ("strongly negative", "negative", "weakly negative", "neutral", "weakly positive", "positive",
                    "strongly positive")
LABEL_SCHEMES: dict[str, tuple[str, ...]] = {
    "sentiment2": ("negative", "positive"),
    "sentiment3": ("negative", "neutral", "positive"),
    "sentiment7": SENTIMENT7_NAMES,
    "iemocap2": ("negative", "positive"),
    "iemocap4": ("neutral", "happy", "sad", "angry"),
    "iemocap7": ("neutral", "happy", "sad", "angry", "frustrated", "excited", "surprised"),
}
SENTIMENT_SCHEMES = ("sentiment2", "sentiment3", "sentiment7")
EMOTION_SCHEMES = ("iemocap2", "iemocap4", "iemocap7")

# IEMOCAP's category codes and the spellings found in label files -> one canonical name.
EMOTION_ALIASES = {
    "ang": "angry", "anger": "angry", "angry": "angry",
    "hap": "happy", "happy": "happy", "happiness": "happy", "joy": "happy",
    "exc": "excited", "excited": "excited", "excitement": "excited",
    "sad": "sad", "sadness": "sad",
    "neu": "neutral", "neutral": "neutral", "neutral state": "neutral",
    "fru": "frustrated", "frustrated": "frustrated", "frustration": "frustrated",
    "sur": "surprised", "surprise": "surprised", "surprised": "surprised",
    "fea": "fear", "fear": "fear", "fearful": "fear",
    "dis": "disgust", "disgust": "disgust", "disgusted": "disgust",
    "oth": "other", "other": "other",
    "xxx": "", "": "",  # no agreement / unlabelled
}
# Canonical emotion -> class name, per scheme (absent = the record is dropped).
EMOTION_MAPS: dict[str, dict[str, str]] = {
    "iemocap4": {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"},  # the paper's: no excited
    "iemocap7": {e: e for e in LABEL_SCHEMES["iemocap7"]},
    "iemocap2": {"angry": "negative", "sad": "negative", "frustrated": "negative", "fear": "negative",
                 "disgust": "negative", "happy": "positive", "excited": "positive"},
}


class ConvertError(ValueError):
    """A source file cannot be converted; the message names the file, the record and the field."""


# ---------------------------------------------------------------------------------------------- labels

def canonical_emotion(name: str) -> str | None:
    """An emotion name or IEMOCAP code -> its canonical name ('' = unlabelled); None if unknown."""
    return EMOTION_ALIASES.get(str(name).strip().lower())


def map_sentiment(scores: np.ndarray, scheme: str, zero: str = "positive") -> tuple[np.ndarray, dict[str, int]]:
    """Sentiment scores -> class indices of `scheme` (-1 = dropped), and the drop counts by reason.

    Scores must be finite (callers check, naming the record).
    """
    if scheme not in SENTIMENT_SCHEMES:
        raise ValueError(f"{scheme!r} is not a sentiment scheme; choose from {SENTIMENT_SCHEMES}")
    if zero not in ZERO_POLICIES:
        raise ValueError(f"zero policy must be one of {ZERO_POLICIES}, got {zero!r}")
    scores = np.asarray(scores, dtype=np.float64)
    dropped: dict[str, int] = {}
    if scheme == "sentiment2":
        labels = (scores >= 0).astype(np.int64)
        if zero == "drop":
            labels[scores == 0] = -1
            dropped["zero_score"] = int((scores == 0).sum())
    elif scheme == "sentiment3":
        labels = (np.sign(scores) + 1).astype(np.int64)
    else:
        labels = (np.clip(np.round(scores), -3, 3) + 3).astype(np.int64)
    return labels, dropped


def map_emotions(emotions: np.ndarray, scheme: str) -> tuple[np.ndarray, dict[str, int]]:
    """Canonical emotion names (object array; '' = unlabelled) -> class indices of `scheme` (-1 = dropped)."""
    if scheme not in EMOTION_SCHEMES:
        raise ValueError(f"{scheme!r} is not an emotion scheme; choose from {EMOTION_SCHEMES}")
    names = LABEL_SCHEMES[scheme]
    table = {e: names.index(c) for e, c in EMOTION_MAPS[scheme].items()}
    emotions = np.asarray(emotions, dtype=object)
    uniq, inverse = np.unique(emotions.astype(str), return_inverse=True)
    labels = np.array([table.get(u, -1) for u in uniq], dtype=np.int64)[inverse.reshape(-1)]
    dropped = {f"emotion_{u or 'unlabelled'}": int((inverse == i).sum()) for i, u in enumerate(uniq) if u not in table}
    return labels, dropped


# ---------------------------------------------------------------------------------------------- splits

def _cut(cum: np.ndarray, target: float) -> int:
    """How many leading videos to take so that their record count is closest to target (ties: fewer)."""
    candidates = np.concatenate([[0], cum])
    return int(np.argmin(np.abs(candidates - target)))


def split_by_video(videos: np.ndarray, seed: int, val_fraction: float, test_fraction: float) -> tuple[np.ndarray, dict]:
    """Assign each record to train (0), val (1) or test (2) so that no video is on two sides.

    The distinct videos (sorted, so the result does not depend on record order) are shuffled with `seed`;
    test takes the leading videos whose record count is closest to `test_fraction` of the records, val the
    next ones for `val_fraction`, train the rest. A split with a positive fraction gets at least one video
    when there are videos to spare. Returns the per-record split index and a description for split.json.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"fractions must be in [0, 1) and sum below 1, got val {val_fraction}, test {test_fraction}")
    videos = np.asarray(videos, dtype=object).astype(str)
    uniq, inverse, counts = np.unique(videos, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    cum = np.cumsum(counts[order])
    n = int(counts.sum())
    n_test = _cut(cum, test_fraction * n)
    if test_fraction > 0 and n_test == 0 and len(uniq) > 2:
        n_test = 1
    rest = cum[n_test:] - (cum[n_test - 1] if n_test else 0)
    n_val = _cut(rest, val_fraction * n)
    if val_fraction > 0 and n_val == 0 and len(uniq) - n_test > 1:
        n_val = 1
    video_split = np.zeros(len(uniq), dtype=np.int64)
    video_split[order[:n_test]] = 2
    video_split[order[n_test:n_test + n_val]] = 1
    info = {"method": "seeded_by_video", "seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction}
    return video_split[inverse.reshape(-1)], info


def read_folds(path: str) -> dict[str, list[str]]:
    """A folds JSON file: {"train": [video ids], "val" or "valid": [...], "test": [...]}."""
    with open(path) as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ConvertError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConvertError(f"{path}: expected an object with keys train, val (or valid), test")
    folds: dict[str, list[str]] = {}
    for key, value in raw.items():
        name = {"valid": "val", "validation": "val", "dev": "val"}.get(key, key)
        if name not in SPLITS:
            raise ConvertError(f"{path}: unknown fold {key!r}; expected train, val (or valid), test")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConvertError(f"{path}: fold {key!r} must be a list of video ids (strings)")
        folds[name] = value
    seen: dict[str, str] = {}
    for name, vids in folds.items():
        for v in vids:
            if v in seen and seen[v] != name:
                raise ConvertError(f"{path}: video {v!r} is in both fold {seen[v]!r} and fold {name!r}")
            seen[v] = name
    return folds


def split_by_folds(videos: np.ndarray, folds: dict[str, list[str]], source: str) -> tuple[np.ndarray, dict]:
    """Per-record split index from given folds; -1 for records whose video is in no fold (callers drop them)."""
    videos = np.asarray(videos, dtype=object).astype(str)
    uniq, inverse = np.unique(videos, return_inverse=True)
    where = {v: SPLITS.index(name) for name, vids in folds.items() for v in vids}
    video_split = np.array([where.get(v, -1) for v in uniq], dtype=np.int64)
    unknown = sorted(set(where) - set(uniq.tolist()))
    if unknown:
        log.warning("%s: %d videos of the folds have no records: %s", source, len(unknown), unknown[:10])
    info = {"method": "folds", "folds_file": os.path.abspath(source), "fold_videos_without_records": unknown,
            "videos_in_no_fold": sorted(uniq[video_split < 0].tolist())}
    return video_split[inverse.reshape(-1)], info


# ---------------------------------------------------------------------------------------------- features

def ragged_column(frames: np.ndarray, lengths: np.ndarray, dim: int) -> pa.Array:
    """Concatenated frames (F, dim) of records with `lengths` (sum = F) -> list<fixed_size_list<float32>[dim]>.

    A record of length 0 is null (the modality is missing).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    frames = np.ascontiguousarray(frames, dtype=np.float32).reshape(-1, dim)
    if len(frames) != lengths.sum():
        raise ValueError(f"{len(frames)} frames for lengths summing to {lengths.sum()}")
    typ = modality_type(dim)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(frames.reshape(-1), type=pa.float32()), type=typ.value_type)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, inner, type=typ, mask=pa.array(lengths == 0))


def padded_column(features: np.ndarray, lengths: np.ndarray, starts: np.ndarray | None = None) -> pa.Array:
    """Padded (n, L, dim) features -> list column holding steps [start, start + length) of each record."""
    n, steps, dim = features.shape
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.zeros(n, dtype=np.int64) if starts is None else np.asarray(starts, dtype=np.int64)
    t = np.arange(steps)[None, :]
    valid = (t >= starts[:, None]) & (t < (starts + lengths)[:, None])
    return ragged_column(features[valid], lengths, dim)


def nonzero_extent(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the span from the first to the last step holding a non-zero value, per record.

    Handles padding on either side; zero steps *inside* the span are kept. All-zero records get length 0.
    """
    nz = (features != 0).any(axis=2)  # (n, L)
    steps = features.shape[1]
    any_nz = nz.any(axis=1)
    first = np.argmax(nz, axis=1)
    last = steps - 1 - np.argmax(nz[:, ::-1], axis=1)
    lengths = np.where(any_nz, last - first + 1, 0).astype(np.int64)
    return np.where(any_nz, first, 0).astype(np.int64), lengths


@dataclass
class NonFinite:
    """How non-finite feature values (NaN, +-Inf) are handled, and how many were replaced."""

    policy: str = "fail"
    replaced: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.policy not in NON_FINITE_POLICIES:
            raise ValueError(f"non-finite policy must be one of {NON_FINITE_POLICIES}, got {self.policy!r}")

    def apply(self, values: np.ndarray, field_name: str, where) -> np.ndarray:
        """Check (and under "zero", repair in place) `values` (..., dim) of `field_name`.

        `where(index)` turns the index tuple of the first bad value into "file ..., record ..." for the error.
        """
        bad = ~np.isfinite(values)
        if not bad.any():
            return values
        if self.policy == "fail":
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            value = values[first]
            raise ConvertError(f"{where(first)}, field {field_name!r}: non-finite value {value} "
                               f"(pass --non-finite zero to replace NaN and infinities by 0)")
        values[bad] = 0
        self.replaced[field_name] = self.replaced.get(field_name, 0) + int(bad.sum())
        return values


# ---------------------------------------------------------------------------------------------- output

def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_info(path: str) -> dict:
    return {"path": os.path.abspath(path), "bytes": os.path.getsize(path), "sha256": sha256_file(path)}


def parse_max_lens(items: list[str] | None, known: tuple[str, ...]) -> dict[str, int]:
    """["visual=100", ...] -> {"visual": 100}; names must be known modalities."""
    out: dict[str, int] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or name not in known or not value.isdigit() or int(value) < 1:
            raise ValueError(f"--max-len {item!r}: expected NAME=N with NAME one of {list(known)} and N >= 1")
        out[name] = int(value)
    return out


@dataclass
class Converted:
    """What a converter produced, before writing: records in source order with their split."""

    ids: np.ndarray  # (n,) object str
    videos: np.ndarray  # (n,) object str ('' where unknown)
    columns: dict[str, pa.Array]  # modality name -> list column (null = missing)
    modalities: tuple[ModalitySpec, ...]
    labels: np.ndarray  # (n,) int64
    split: np.ndarray  # (n,) int64 index into `splits`
    label_names: tuple[str, ...]
    splits: tuple[str, ...] = SPLITS  # the split names, in order


def _check_unique(ids: np.ndarray, source: str) -> None:
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise ConvertError(f"{source}: record id {dup[0]!r} occurs {counts[counts > 1][0]} times "
                           f"({len(dup)} ids repeat); ids must be unique")


def write_dataset(out: str, data: Converted, *, converter: str, source: dict, label_mapping: dict,
                  split_info: dict, dropped: dict | None = None, extra: dict | None = None) -> dict:
    """Validate and write OUT/<split>/part-00000.parquet for each of `data.splits`, OUT/dataset.json and
    OUT/split.json.

    Returns the dataset.json content. Every split is written, even an empty one, so that readers find it.
    """
    check_modalities(data.modalities)
    _check_unique(data.ids, converter)
    os.makedirs(out, exist_ok=True)
    schema = input_schema(data.modalities)
    num_classes = len(data.label_names)
    splits: dict[str, dict] = {}
    split_videos: dict[str, list[str]] = {}
    record_videos: dict[str, dict[str, list[str]]] = {}
    for s, name in enumerate(data.splits):
        rows = np.flatnonzero(data.split == s)
        idx = pa.array(rows)
        arrays = [pa.array(data.ids[rows].astype(str).tolist(), type=pa.string())]
        arrays += [data.columns[m.name].take(idx) for m in data.modalities]
        arrays += [pa.array(data.labels[rows], type=pa.int64()), pa.nulls(len(rows), type=schema.field("event_time").type)]
        table = pa.Table.from_arrays(arrays, schema=schema)
        try:
            validate_input(table, data.modalities, num_classes).raise_if_invalid()
        except RecordValidationError as e:
            raise ConvertError(f"{converter}: split {name!r}: {e}") from None
        folder = os.path.join(out, name)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "part-00000.parquet")
        bytes_per_row = max(1, sum(4 * m.dim * m.max_len for m in data.modalities))
        pq.write_table(table, path, row_group_size=max(1, min(len(rows) or 1, (32 << 20) // bytes_per_row)))
        vids = sorted(set(data.videos[rows].astype(str).tolist()) - {""})
        split_videos[name] = vids
        record_videos[name] = {}
        for rid, video in zip(data.ids[rows].astype(str), data.videos[rows].astype(str)):
            record_videos[name].setdefault(video, []).append(rid)
        present = {m.name: int(data.columns[m.name].take(idx).is_valid().to_numpy(zero_copy_only=False).sum())
                   for m in data.modalities}
        splits[name] = {
            "path": name,
            "records": int(len(rows)),
            "videos": len(vids),
            "labels": {n: int(c) for n, c in zip(data.label_names, np.bincount(data.labels[rows], minlength=num_classes))},
            "present": present,
        }
    overlap = sorted({v for i, a in enumerate(data.splits) for b in data.splits[i + 1:]
                      for v in set(split_videos[a]) & set(split_videos[b])})
    if overlap:
        log.warning("%s: %d videos are in more than one split (e.g. %s)", converter, len(overlap), overlap[:5])
    dataset = {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "schema": {"name": "input", "version": SCHEMA_VERSION},
        "converter": converter,
        "source": source,
        "modalities": [m.to_dict() for m in data.modalities],
        "label_names": list(data.label_names),
        "label_mapping": label_mapping,
        "splits": splits,
        "videos_in_more_than_one_split": overlap,
        "dropped": dropped or {},
    }
    dataset.update(extra or {})
    split_doc = {
        **split_info,
        "counts": {n: {"records": splits[n]["records"], "videos": splits[n]["videos"]} for n in data.splits},
        "videos": split_videos,
        "source": source,
        "record_videos": record_videos,  # split -> video -> record ids ('' = video unknown)
    }
    with open(os.path.join(out, "dataset.json"), "w") as f:
        json.dump(dataset, f, indent=2, sort_keys=False)
        f.write("\n")
    with open(os.path.join(out, "split.json"), "w") as f:
        json.dump(split_doc, f, indent=2, sort_keys=False)
        f.write("\n")
    log.info("%s: wrote %s to %s", converter,
             ", ".join(f"{n} {splits[n]['records']} records / {splits[n]['videos']} videos" for n in data.splits), out)
    log.info("model config modalities: %s; label_names: %s",
             ", ".join(f"{m.name} (dim {m.dim}, max_len {m.max_len})" for m in data.modalities), list(data.label_names))
    return dataset


def read_dataset_json(out: str) -> dict:
    """OUT/dataset.json of a converted data set (for `emmr train` and tests)."""
    with open(os.path.join(out, "dataset.json")) as f:
        return json.load(f)


def dataset_modalities(dataset: dict) -> tuple[ModalitySpec, ...]:
    """The ModalitySpecs recorded in a dataset.json."""
    return tuple(ModalitySpec.from_dict(m) for m in dataset["modalities"])


def find_dataset(path: str) -> tuple[str, dict] | None:
    """The converted data set that `path` is (OUT) or is a split of (OUT/<split>): (OUT, dataset.json), else None."""
    if "://" in path or not os.path.isdir(path):
        return None
    for root in (path, os.path.dirname(os.path.abspath(path.rstrip("/")))):
        if os.path.isfile(os.path.join(root, "dataset.json")):
            dataset = read_dataset_json(root)
            if root == path or os.path.basename(os.path.abspath(path.rstrip("/"))) in dataset.get("splits", {}):
                return root, dataset
    return None


def record_videos(path: str) -> dict[str, str]:
    """record id -> video, for the records of a converted split folder OUT/<split> (from OUT/split.json)."""
    found = find_dataset(path)
    split = os.path.basename(os.path.abspath(path.rstrip("/")))
    if found is None or found[0] == path or split not in found[1].get("splits", {}):
        raise ValueError(f"{path}: not a split folder of a converted data set (OUT/<split> beside OUT/dataset.json), "
                         f"so the videos of its records are unknown")
    with open(os.path.join(found[0], "split.json")) as f:
        doc = json.load(f)
    if "record_videos" not in doc:
        raise ValueError(f"{os.path.join(found[0], 'split.json')}: no `record_videos` (converted by an older version? "
                         f"convert the data again)")
    return {rid: video for video, ids in doc["record_videos"].get(split, {}).items() for rid in ids}
