"""MMSA feature pickles (`aligned_50.pkl`, `unaligned_50.pkl` of MOSI / MOSEI / SIMS) -> input v1 Parquet.

SECURITY: a pickle runs code while it loads. This converter calls `pickle.load` and is meant only for
files you trust (your own download of MMSA's features, checked against its published hashes). Nothing in
the scoring path (beam_pipeline, checkpoints) ever unpickles anything; only this offline converter does.

Layout read (MMSA, thuiar/MMSA, `data_loader.py`): a dict with splits "train", "valid", "test" (written to
OUT/train, OUT/val, OUT/test), each a dict of arrays over its N records:

- "text": (N, L_t, d_t) float features (BERT 768 or GloVe 300), used as the `text` modality.
  "text_bert" (N, 3, L_t) holds BERT *token ids*, attention mask and segment ids, not features: it is
  never used as features, only its mask (channel 1) for the text lengths. A file that has only token ids
  (no float "text") cannot be converted: extract features first (e.g. with MMSA-FET). An integer "text"
  array is refused as token ids for the same reason.
- "audio": (N, L_a, d_a) -> `acoustic`; "vision": (N, L_v, d_v) -> `visual`.
- lengths, per modality, with `lengths="auto"` (default): "audio_lengths" / "vision_lengths" /
  "text_lengths" where present (the first `length` steps are the record, MMSA's right-padding convention);
  for text, else the "text_bert" mask's sum; else inferred from the data: the span from the first to the
  last step holding a non-zero value (padding on either side is removed; aligned files have no lengths).
  `lengths="full"` keeps all L steps, `lengths="nonzero"` always infers. A length of 0 = missing modality.
- labels: "regression_labels" (N,) or (N, 1) sentiment scores, or an older "labels" dict's "M" entry;
  failing both, "classification_labels" read with MMSA's 3-class coding (0 negative, 1 neutral,
  2 positive) as scores -1 / 0 / +1. Mapped by `labels` (see emmr.convert.LABEL_SCHEMES): sentiment2
  (zero: positive = MMSA "Has0", drop = MMSA "Non0"), sentiment3, sentiment7.
- "id" (record ids, e.g. `03bSnISJMiM$_$1`, video before `$_$`; absent: `<split>-<index>`), "raw_text"
  (ignored).

The modalities' max_len is the arrays' L (so `emmr train` sees the file's padding length); dims are the
arrays' last axes. MMSA's own loader replaces -inf in audio by 0; here non-finite values fail unless
`non_finite="zero"`.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pyarrow as pa

from emmr.convert import (
    LABEL_SCHEMES,
    SENTIMENT_SCHEMES,
    SPLITS,
    ConvertError,
    Converted,
    NonFinite,
    file_info,
    map_sentiment,
    nonzero_extent,
    padded_column,
    write_dataset,
)
from schemas.modality import ModalitySpec

SOURCE_SPLITS = {"train": "train", "valid": "val", "test": "test"}
MODALITIES = (("visual", "vision"), ("acoustic", "audio"), ("text", "text"))  # (our name, MMSA key)
LENGTH_MODES = ("auto", "full", "nonzero")
ID_SEPARATOR = "$_$"


def load_pickle(path: str) -> dict:
    """Unpickle a *trusted* MMSA file (pickle runs code on load: never use this on untrusted files)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found")
    with open(path, "rb") as f:
        try:
            data = pickle.load(f)  # noqa: S301 - trusted, user-supplied file; see the module docstring
        except Exception as e:  # a pickle can fail in many ways; name the file
            raise ConvertError(f"{path}: cannot unpickle: {type(e).__name__}: {e}") from None
    if not isinstance(data, dict) or not set(SOURCE_SPLITS) & set(data):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ConvertError(f"{path}: expected a dict with splits 'train', 'valid', 'test', got {keys}")
    return data


def _array(split: dict, key: str, path: str, name: str) -> np.ndarray:
    try:
        return np.asarray(split[key])
    except KeyError:
        raise ConvertError(f"{path}: split {name!r} has no field {key!r} (fields: {sorted(split)})") from None


def _features(split: dict, key: str, path: str, name: str) -> np.ndarray:
    if key == "text" and "text" not in split and "text_bert" in split:
        raise ConvertError(f"{path}: split {name!r}, field 'text_bert': holds BERT token ids (N, 3, L), not features, "
                           f"and the split has no float 'text' features; extract features first (e.g. MMSA-FET)")
    x = _array(split, key, path, name)
    if x.ndim != 3:
        raise ConvertError(f"{path}: split {name!r}, field {key!r}: shape {x.shape}, expected (N, L, dim)")
    if not np.issubdtype(x.dtype, np.floating):
        what = " (token ids? EMMR needs feature vectors)" if key == "text" else ""
        raise ConvertError(f"{path}: split {name!r}, field {key!r}: dtype {x.dtype}, expected floats{what}")
    return x


def _labels(split: dict, path: str, name: str, n: int) -> tuple[np.ndarray, str]:
    """Sentiment scores (n,) and the field they came from."""
    if "regression_labels" in split:
        key, y = "regression_labels", np.asarray(split["regression_labels"])
    elif isinstance(split.get("labels"), dict) and "M" in split["labels"]:
        key, y = "labels['M']", np.asarray(split["labels"]["M"])
    elif "classification_labels" in split:
        key, y = "classification_labels", np.asarray(split["classification_labels"])
    else:
        raise ConvertError(f"{path}: split {name!r} has no labels: expected 'regression_labels', 'labels'['M'] or "
                           f"'classification_labels' (fields: {sorted(split)})")
    y = y.reshape(len(y), -1) if y.ndim > 1 else y
    if y.ndim != 1 and y.shape[1] != 1 or len(y) != n:
        raise ConvertError(f"{path}: split {name!r}, field {key!r}: shape {y.shape}, expected ({n},) or ({n}, 1)")
    y = y.reshape(-1).astype(np.float64)
    if key == "classification_labels":
        if not np.isin(y, (0, 1, 2)).all():
            row = int(np.flatnonzero(~np.isin(y, (0, 1, 2)))[0])
            raise ConvertError(f"{path}: split {name!r}, record {row}, field {key!r}: {y[row]}, expected 0, 1 or 2")
        y = y - 1  # 0 negative, 1 neutral, 2 positive -> -1, 0, +1
    return y, key


def _lengths(split: dict, key: str, x: np.ndarray, mode: str, path: str, name: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(starts, lengths, how) of modality `key` in one split."""
    n, steps = x.shape[:2]
    zeros = np.zeros(n, dtype=np.int64)
    if mode == "full":
        return zeros, np.full(n, steps, dtype=np.int64), "full"
    if mode == "auto":
        length_key = f"{key}_lengths"
        if length_key in split:
            lengths = np.asarray(split[length_key]).reshape(-1)
            if len(lengths) != n:
                raise ConvertError(f"{path}: split {name!r}, field {length_key!r}: {len(lengths)} values for {n} records")
            bad = (lengths < 0) | (lengths > steps) | (lengths != np.round(lengths))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ConvertError(f"{path}: split {name!r}, record {ids[row]!r}, field {length_key!r}: "
                                   f"{lengths[row]} is not a length in 0..{steps}")
            return zeros, lengths.astype(np.int64), length_key
        if key == "text" and "text_bert" in split:
            tb = np.asarray(split["text_bert"])
            if tb.ndim == 3 and tb.shape[0] == n and tb.shape[1] == 3 and tb.shape[2] == steps:
                return zeros, (tb[:, 1, :] != 0).sum(axis=1).astype(np.int64), "text_bert mask"
    starts, lengths = nonzero_extent(x)
    return starts, lengths, "nonzero span"


def convert(path: str, out: str, labels: str = "sentiment2", zero: str = "positive", lengths: str = "auto",
            non_finite: str = "fail") -> dict:
    """Convert a trusted MMSA pickle to input v1 Parquet under `out`; returns the dataset.json content."""
    if labels not in SENTIMENT_SCHEMES:
        raise ValueError(f"MMSA labels are sentiment scores: choose --labels from {SENTIMENT_SCHEMES}, got {labels!r}")
    if lengths not in LENGTH_MODES:
        raise ValueError(f"lengths must be one of {LENGTH_MODES}, got {lengths!r}")
    nf = NonFinite(non_finite)
    data = load_pickle(path)
    missing = [s for s in SOURCE_SPLITS if s not in data]
    if missing:
        raise ConvertError(f"{path}: splits {missing} absent (found {sorted(data)})")

    per_split = []  # (split index, ids, videos, {name: (x, starts, lengths)}, labels)
    dims: dict[str, int] = {}
    max_lens: dict[str, int] = {}
    how: dict[str, dict[str, str]] = {}
    dropped: dict[str, int] = {}
    label_field = None
    for source_name, ours in SOURCE_SPLITS.items():
        split = data[source_name]
        if not isinstance(split, dict):
            raise ConvertError(f"{path}: split {source_name!r} is a {type(split).__name__}, expected a dict of arrays")
        feats = {name: _features(split, key, path, source_name) for name, key in MODALITIES}
        n = len(feats["text"])
        for name, x in feats.items():
            if len(x) != n:
                raise ConvertError(f"{path}: split {source_name!r}: {len(x)} {name} records but {n} text records")
        if "id" in split:
            ids = np.asarray([i.decode() if isinstance(i, bytes) else str(i) for i in np.asarray(split["id"]).reshape(-1)],
                             dtype=object)
            if len(ids) != n:
                raise ConvertError(f"{path}: split {source_name!r}, field 'id': {len(ids)} ids for {n} records")
        else:
            ids = np.asarray([f"{source_name}-{i}" for i in range(n)], dtype=object)
        videos = np.asarray([i.split(ID_SEPARATOR)[0] if ID_SEPARATOR in i else "" for i in ids], dtype=object)
        scores, label_field = _labels(split, path, source_name, n)
        if not np.isfinite(scores).all():
            row = int(np.flatnonzero(~np.isfinite(scores))[0])
            raise ConvertError(f"{path}: split {source_name!r}, record {ids[row]!r}, field {label_field!r}: {scores[row]}")
        y, why = map_sentiment(scores, labels, zero)
        dropped.update({f"{ours}:{k}": v for k, v in why.items() if v})
        mods = {}
        for name, key in MODALITIES:
            x = feats[name]
            if name in dims and x.shape[2] != dims[name]:
                raise ConvertError(f"{path}: split {source_name!r}, field {key!r}: dim {x.shape[2]}, "
                                   f"but an earlier split has {dims[name]}")
            dims[name] = x.shape[2]
            max_lens[name] = max(max_lens.get(name, 1), x.shape[1])
            starts, lens, how_m = _lengths(split, key, x, lengths, path, source_name, ids)
            how.setdefault(name, {})[ours] = how_m
            x = np.array(x, dtype=np.float32)  # a copy: repairs must not touch the caller's arrays
            t = np.arange(x.shape[1])[None, :]
            inside = (t >= starts[:, None]) & (t < (starts + lens)[:, None])
            values = x[inside]  # only the record's own steps are checked: padding may hold anything
            nf.apply(values, name, lambda i, ids=ids, inside=inside, s=source_name, key=key:
                     f"{path}: split {s!r}, record {ids[np.repeat(np.arange(len(ids)), inside.sum(1))[i[0]]]!r} "
                     f"(MMSA field {key!r})")
            x[inside] = values
            mods[name] = (x, starts, lens)
        keep = y >= 0
        per_split.append((SPLITS.index(ours), ids[keep], videos[keep], {m: (v[0][keep], v[1][keep], v[2][keep]) for m, v in mods.items()}, y[keep]))

    modalities = tuple(ModalitySpec(name, dims[name], max_lens[name]) for name, _ in MODALITIES)
    columns = {}
    for m in modalities:
        parts = [padded_column(feats[m.name][0], feats[m.name][2], feats[m.name][1]) for _, _, _, feats, _ in per_split]
        columns[m.name] = pa.concat_arrays(parts)
    converted = Converted(
        ids=np.concatenate([p[1] for p in per_split]),
        videos=np.concatenate([p[2] for p in per_split]),
        columns=columns,
        modalities=modalities,
        labels=np.concatenate([p[4] for p in per_split]),
        split=np.concatenate([np.full(len(p[1]), p[0], dtype=np.int64) for p in per_split]),
        label_names=LABEL_SCHEMES[labels],
    )
    source = {"kind": "mmsa-pickle", "file": file_info(path), "label_field": label_field,
              "splits": {s: SOURCE_SPLITS[s] for s in SOURCE_SPLITS}}
    mapping = {"scheme": labels, "zero": zero if labels == "sentiment2" else None,
               "description": {"sentiment2": "score < 0 negative, > 0 positive; 0: " +
                               ("positive (MMSA Has0)" if zero == "positive" else "dropped (MMSA Non0)"),
                               "sentiment3": "score < 0 negative, == 0 neutral, > 0 positive",
                               "sentiment7": "round(score) clipped to -3..3, classes 0..6"}[labels]}
    split_info = {"method": "given", "note": "MMSA's own train / valid / test splits, valid written as val"}
    return write_dataset(out, converted, converter="mmsa", source=source, label_mapping=mapping, split_info=split_info,
                         dropped=dropped, extra={"lengths": how, "non_finite": {"policy": nf.policy, "replaced": nf.replaced}})
