"""CMU Multimodal SDK computational sequences (`.csd`, HDF5) -> input v1 Parquet, aligned per labelled segment.

A `.csd` file (mmsdk's `write_CSD`) has one top-level group, the sequence's root name, holding:

    data/<video id>/features    (T, d) one row per frame (or word, or segment)
    data/<video id>/intervals   (T, 2) start and end time of each row, in seconds
    metadata/<key>              (1,) string datasets holding JSON (or attributes), e.g. "dimension names"

The converter takes one `.csd` per modality (e.g. visual = CMU_MOSI_Visual_Facet_41, acoustic =
CMU_MOSI_COVAREP, text = CMU_MOSI_TimestampedWordVectors) and a labels `.csd` whose rows are labelled
segments (e.g. CMU_MOSI_Opinion_Labels: one sentiment score per opinion segment). Each labelled segment
becomes one record, id `<video>[<segment index>]` (the index of the row in the labels file's video, the
SDK's own naming), holding for every modality the frames whose interval lies *within* the segment
(start >= segment start and end <= segment end, with a tolerance of `tolerance` seconds), in time order.
A modality with no frames in the segment (or a video absent from that modality's file) is missing (null);
a segment with no frames in any modality is dropped and counted in dataset.json.

Labels (`labels`, see emmr.convert.LABEL_SCHEMES for the mappings and their sources):
- sentiment2 / sentiment3 / sentiment7: the sentiment score is column `label_column` (default 0) of the
  label features (CMU-MOSEI's All_Labels has sentiment in column 0, then six emotions);
- iemocap2 / iemocap4 / iemocap7: the emotion of a segment is either a string (IEMOCAP code such as
  `ang`, `hap`, `exc`, `neu`, `sad`, `fru`, `sur`, `fea`, `dis`, `oth`, `xxx`, or its name) in a
  one-column label sequence, or, for numeric label features (S, K), the emotion with the largest value,
  the K names coming from `emotion_names` or else the labels file's "dimension names" metadata. A row
  whose largest value is 0 or shared by two emotions is unlabelled (dropped, counted).

Non-numeric modality features (e.g. CMU_MOSI_TimestampedWords, which holds the words themselves) are
refused: use a vector sequence (word vectors or BERT features). `max_len` truncates a modality to its
first N frames (counted); otherwise max_len is the longest aligned sequence. Splits: by video, seeded, or
by a folds JSON file of video ids (videos in no fold are dropped, counted).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa

from emmr.convert import (
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    EMOTION_ALIASES,
    EMOTION_SCHEMES,
    LABEL_SCHEMES,
    ConvertError,
    Converted,
    NonFinite,
    canonical_emotion,
    file_info,
    map_emotions,
    map_sentiment,
    ragged_column,
    read_folds,
    split_by_folds,
    split_by_video,
    write_dataset,
)
from schemas.modality import ModalitySpec

DEFAULT_TOLERANCE = 1e-6  # seconds


def _h5py():
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is in the train and dev extras
        raise ConvertError("reading .csd files needs h5py: pip install 'emmr-scoring[train]'") from None
    return h5py


def _decode(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _metadata(group) -> dict:
    """A csd's metadata group (datasets holding JSON strings, or attributes) -> dict."""
    out = {}
    if group is None:
        return out
    items = [(k, group.attrs[k]) for k in group.attrs]
    items += [(k, group[k][()]) for k in group if not hasattr(group[k], "keys")]
    for key, raw in items:
        text = _decode(raw)
        try:
            out[key] = json.loads(text)
        except (json.JSONDecodeError, ValueError):
            out[key] = text
    return out


class Sequence:
    """An open computational sequence: its root name, videos and metadata."""

    def __init__(self, path: str):
        h5py = _h5py()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: not found")
        try:
            self.file = h5py.File(path, "r")
        except OSError as e:
            raise ConvertError(f"{path}: not an HDF5 computational sequence: {e}") from None
        roots = list(self.file.keys())
        if len(roots) != 1:
            raise ConvertError(f"{path}: expected one top-level group (the sequence name), found {roots}")
        self.path, self.name = path, roots[0]
        root = self.file[self.name]
        if "data" not in root:
            raise ConvertError(f"{path}: group {self.name!r} has no 'data' group")
        self.data = root["data"]
        self.metadata = _metadata(root["metadata"] if "metadata" in root else None)

    def close(self) -> None:
        self.file.close()

    def videos(self) -> list[str]:
        return sorted(self.data.keys())

    def read(self, video: str, numeric: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(features (T, d), intervals (T, 2) float64) of a video, checked; names file, video and field."""
        where = f"{self.path}: video {video!r}"
        group = self.data[video]
        for f in ("features", "intervals"):
            if f not in group:
                raise ConvertError(f"{where}, field {f!r}: absent")
        feats, intervals = group["features"][()], group["intervals"][()]
        if feats.ndim == 1:
            feats = feats[:, None]
        if feats.ndim != 2:
            raise ConvertError(f"{where}, field 'features': shape {feats.shape}, expected (T, d)")
        if numeric and not (np.issubdtype(feats.dtype, np.number) or feats.dtype == bool):
            raise ConvertError(f"{where}, field 'features': dtype {feats.dtype} is not numeric (a word or text sequence?); "
                               f"use a vector sequence such as word vectors or BERT features")
        if intervals.ndim != 2 or intervals.shape[1] != 2 or len(intervals) != len(feats):
            raise ConvertError(f"{where}, field 'intervals': shape {intervals.shape}, expected ({len(feats)}, 2)")
        intervals = intervals.astype(np.float64)
        bad = ~np.isfinite(intervals).all(axis=1) | (intervals[:, 1] < intervals[:, 0])
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ConvertError(f"{where}, field 'intervals': row {row} is {intervals[row].tolist()}, "
                               f"expected finite start <= end")
        return feats, intervals


def _emotions(labels: Sequence, video: str, feats: np.ndarray, names: list[str] | None) -> tuple[np.ndarray, dict]:
    """Canonical emotion per segment ('' = unlabelled) and counts of unlabelled reasons."""
    where = f"{labels.path}: video {video!r}"
    reasons: dict[str, int] = {}
    if not np.issubdtype(feats.dtype, np.number):
        if feats.shape[1] != 1:
            raise ConvertError(f"{where}, field 'features': {feats.shape[1]} string columns, expected one emotion per segment")
        out = np.empty(len(feats), dtype=object)
        for i, raw in enumerate(feats[:, 0]):
            emotion = canonical_emotion(_decode(raw))
            if emotion is None:
                raise ConvertError(f"{where}, record {video}[{i}], field 'features': unknown emotion {_decode(raw)!r}")
            out[i] = emotion
        return out, reasons
    if names is None or len(names) != feats.shape[1]:
        raise ConvertError(f"{where}, field 'features': {feats.shape[1]} numeric emotion columns but "
                           f"{'no' if names is None else len(names)} emotion names; pass --emotion-names or "
                           f"give the labels file 'dimension names' metadata")
    values = feats.astype(np.float64)
    top = values.max(axis=1)
    ties = (values == top[:, None]).sum(axis=1) > 1
    none = top <= 0
    out = np.asarray(names, dtype=object)[values.argmax(axis=1)]
    out[ties | none] = ""
    reasons["emotion_tie"] = int((ties & ~none).sum())
    reasons["emotion_none"] = int(none.sum())
    return out, reasons


def _emotion_names(labels: Sequence, given: list[str] | None) -> list[str] | None:
    raw = given if given else labels.metadata.get("dimension names")
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ConvertError(f"{labels.path}: metadata 'dimension names' is {raw!r}, expected a list of emotion names")
    names = []
    for n in raw:
        c = canonical_emotion(n)
        if c is None:
            raise ConvertError(f"{labels.path}: emotion name {n!r} is unknown; known: {sorted(k for k in EMOTION_ALIASES if k)}")
        names.append(c)
    return names


def _within(intervals: np.ndarray, segments: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """(segment, frame) index pairs of frames lying within segments, by segment then by frame start time."""
    order = np.argsort(intervals[:, 0], kind="stable")
    iv = intervals[order]
    inside = (iv[None, :, 0] >= segments[:, None, 0] - tolerance) & (iv[None, :, 1] <= segments[:, None, 1] + tolerance)
    seg, pos = np.nonzero(inside)
    return seg, order[pos]


def convert(modalities: list[tuple[str, str]], labels_path: str, out: str, labels: str = "sentiment2",
            zero: str = "positive", label_column: int = 0, emotion_names: list[str] | None = None,
            seed: int = 0, val_fraction: float = DEFAULT_VAL_FRACTION, test_fraction: float = DEFAULT_TEST_FRACTION,
            folds: str | None = None, max_len: dict[str, int] | None = None, non_finite: str = "fail",
            tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Align the modality sequences to the labelled segments and write input v1 Parquet under `out`."""
    if labels not in LABEL_SCHEMES:
        raise ValueError(f"--labels must be one of {sorted(LABEL_SCHEMES)}, got {labels!r}")
    names = [n for n, _ in modalities]
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"give at least two modalities with distinct names, got {names}")
    for n in names:
        ModalitySpec(n, 1, 1)  # checks the name
    max_len = dict(max_len or {})
    nf = NonFinite(non_finite)
    label_seq = Sequence(labels_path)
    seqs = [Sequence(p) for _, p in modalities]
    try:
        return _convert(names, seqs, label_seq, out, labels, zero, label_column, emotion_names, seed, val_fraction,
                        test_fraction, folds, max_len, nf, tolerance)
    finally:
        for s in [label_seq, *seqs]:
            s.close()


def _convert(names, seqs, label_seq, out, labels, zero, label_column, emotion_names, seed, val_fraction,
             test_fraction, folds, max_len, nf, tolerance) -> dict:
    dropped: dict[str, int] = {}

    def count(reason: str, k: int) -> None:
        if k:
            dropped[reason] = dropped.get(reason, 0) + int(k)

    emo_names = _emotion_names(label_seq, emotion_names) if labels in EMOTION_SCHEMES else None
    ids, videos, y = [], [], []
    segments: dict[str, np.ndarray] = {}
    for video in label_seq.videos():
        feats, intervals = label_seq.read(video, numeric=labels not in EMOTION_SCHEMES)
        segments[video] = intervals
        if labels in EMOTION_SCHEMES:
            emotions, reasons = _emotions(label_seq, video, feats, emo_names)
            for k, v in reasons.items():
                count(k, v)
            lab, why = map_emotions(emotions, labels)
        else:
            if not 0 <= label_column < feats.shape[1]:
                raise ConvertError(f"{label_seq.path}: video {video!r}, field 'features': no column {label_column} "
                                   f"(it has {feats.shape[1]})")
            scores = feats[:, label_column].astype(np.float64)
            if not np.isfinite(scores).all():
                i = int(np.flatnonzero(~np.isfinite(scores))[0])
                raise ConvertError(f"{label_seq.path}: video {video!r}, record {video}[{i}], field 'features': "
                                   f"label {scores[i]} is not finite")
            lab, why = map_sentiment(scores, labels, zero)
        for k, v in why.items():
            count(k, v)
        ids += [f"{video}[{i}]" for i in range(len(intervals))]
        videos += [video] * len(intervals)
        y.append(lab)
    ids_arr = np.asarray(ids, dtype=object)
    n = len(ids_arr)
    y_arr = np.concatenate(y) if y else np.zeros(0, dtype=np.int64)

    columns, dims, observed, truncated = {}, {}, {}, {}
    record_offset = {}
    offset = 0
    for video in label_seq.videos():
        record_offset[video] = offset
        offset += len(segments[video])
    for name, seq in zip(names, seqs):
        frames, lengths = [], np.zeros(n, dtype=np.int64)
        dim = None
        cut = 0
        for video in label_seq.videos():
            if video not in seq.data:
                continue
            feats, intervals = seq.read(video)
            if dim is None:
                dim = feats.shape[1]
            elif feats.shape[1] != dim:
                raise ConvertError(f"{seq.path}: video {video!r}, field 'features': dim {feats.shape[1]}, "
                                   f"other videos have {dim}")
            seg, frame = _within(intervals, segments[video], tolerance)
            if name in max_len and len(seg):
                counts = np.bincount(seg, minlength=len(segments[video]))
                step = np.arange(len(seg)) - np.repeat(np.cumsum(counts) - counts, counts)
                keep = step < max_len[name]
                cut += int((~keep).sum())
                seg, frame = seg[keep], frame[keep]
            values = feats[frame].astype(np.float32)
            base = record_offset[video]
            nf.apply(values, name, lambda i, seg=seg, frame=frame, video=video, seq=seq:
                     f"{seq.path}: video {video!r}, record {video}[{seg[i[0]]}] (frame {frame[i[0]]}, column {i[1]})")
            frames.append(values)
            lengths[base:base + len(segments[video])] = np.bincount(seg, minlength=len(segments[video]))
        if dim is None:
            raise ConvertError(f"{seq.path}: none of its videos has a labelled segment in {label_seq.path}")
        dims[name] = dim
        truncated[name] = cut
        observed[name] = int(lengths.max()) if n else 0
        columns[name] = ragged_column(np.concatenate(frames) if frames else np.zeros((0, dim), np.float32), lengths, dim)

    present = np.stack([columns[m].is_valid().to_numpy(zero_copy_only=False) for m in names], axis=1)
    no_modality = ~present.any(axis=1)
    count("no_frames_in_any_modality", int((no_modality & (y_arr >= 0)).sum()))
    keep = (y_arr >= 0) & ~no_modality
    videos_arr = np.asarray(videos, dtype=object)
    if folds:
        split, split_info = split_by_folds(videos_arr, read_folds(folds), folds)
        count("video_in_no_fold", int((keep & (split < 0)).sum()))
        keep &= split >= 0
    else:
        split, split_info = split_by_video(videos_arr[keep], seed, val_fraction, test_fraction)
        full = np.full(n, -1, dtype=np.int64)
        full[keep] = split
        split = full
    rows = pa.array(np.flatnonzero(keep))
    mods = tuple(ModalitySpec(m, dims[m], max_len.get(m, max(1, observed[m]))) for m in names)
    data = Converted(ids=ids_arr[keep], videos=videos_arr[keep], columns={m: columns[m].take(rows) for m in names},
                     modalities=mods, labels=y_arr[keep], split=split[keep], label_names=LABEL_SCHEMES[labels])
    source = {"kind": "cmu-sdk-csd",
              "modalities": {m: {**file_info(s.path), "sequence": s.name} for m, s in zip(names, seqs)},
              "labels": {**file_info(label_seq.path), "sequence": label_seq.name},
              "tolerance_s": tolerance}
    mapping = {"scheme": labels, "zero": zero if labels == "sentiment2" else None,
               "label_column": label_column if labels not in EMOTION_SCHEMES else None,
               "emotion_names": emo_names}
    extra = {"alignment": {"rule": "frame interval within segment interval (+- tolerance)",
                           "longest_aligned": observed, "max_len_given": max_len, "frames_truncated": truncated},
             "non_finite": {"policy": nf.policy, "replaced": nf.replaced}}
    return write_dataset(out, data, converter="csd", source=source, label_mapping=mapping, split_info=split_info,
                         dropped=dropped, extra=extra)
