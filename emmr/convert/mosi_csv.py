"""CMU-MOSI utterance-level CSVs (bc-LSTM release, ../shared/datasets/cmu-mosi-utterance) -> input v1 Parquet.

The source folder holds headerless CSVs with quoted numbers (see its README), for PART = train and dev:

    audio_PART.csv    per utterance: 73 openSMILE features, then the label
    video_PART.csv    per utterance: 100 3D-CNN features, then the label
    text_PART.csv     per utterance: a 0-based row index into transcripts.csv, then 100 text-CNN features
    transcripts.csv   per MOSI utterance: id `<video id>_<clip no>`, transcript, a count, label

Row i of the three feature files of a part is one utterance; its id comes from text_PART.csv column 0
through transcripts.csv. The converter checks that the three files have the same rows, that the labels of
audio, video and transcripts agree row by row (failing on the first disagreement, naming the row, the id
and the files), that every id is unique and well formed, that every value is finite (or, with
`non_finite="zero"`, replaces and counts the bad ones), and that no video is in both parts.

Records: id = the utterance id; modalities `visual` (video, 100), `acoustic` (audio, 73), `text` (100),
each one step long; label 0 = negative, 1 = positive (the files' own binary labels, kept as they are).
The video of an utterance is its id without the trailing `_<clip no>` (video ids contain '_' too).

Splits, as the files give them: `train` = every training video (*_train.csv), `dev` = the part of the
official test split published as *_dev.csv (16 of its 31 videos). Select and stop early on dev; never
carve a validation or test set out of train: its text and video features were fit to its labels (the data
set's README), so rows of training videos measure fit, not generalisation. Nothing is copied into the
repository.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from emmr.convert import (
    LABEL_SCHEMES,
    ConvertError,
    Converted,
    NonFinite,
    file_info,
    ragged_column,
    write_dataset,
)
from schemas.modality import ModalitySpec

PARTS = ("train", "dev")  # the split names, and the files' suffixes


def files(part: str) -> dict[str, str]:
    """The source files of one part (feature file key -> file name)."""
    return {"audio": f"audio_{part}.csv", "video": f"video_{part}.csv", "text": f"text_{part}.csv",
            "transcripts": "transcripts.csv"}

MODALITY_OF = (("visual", "video"), ("acoustic", "audio"), ("text", "text"))  # (modality, file key), in order


def _read_csv(path: str) -> pa.Table:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (expected the CMU-MOSI utterance CSV layout, see emmr convert mosi-utterance-csv --help)")
    try:
        # Only an empty field is null: "nan" and "inf" stay numbers, so the finiteness check can name them.
        return pacsv.read_csv(path, read_options=pacsv.ReadOptions(autogenerate_column_names=True),
                              convert_options=pacsv.ConvertOptions(null_values=[""]))
    except pa.ArrowInvalid as e:
        raise ConvertError(f"{path}: cannot parse as a headerless CSV: {e}") from None


def _numeric(table: pa.Table, path: str, first: int = 0) -> np.ndarray:
    """Columns first.. of a table as a (rows, cols) float64 matrix; a non-numeric column fails, named."""
    cols = []
    for j in range(first, table.num_columns):
        col = table.column(j)
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            raise ConvertError(f"{path}: column {j} holds {col.type}, expected numbers")
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise ConvertError(f"{path}: row {row}, column {j}: empty value")
        cols.append(col.to_numpy().astype(np.float64, copy=False))
    return np.stack(cols, axis=1) if cols else np.zeros((table.num_rows, 0))


def _integral(values: np.ndarray, path: str, what: str) -> np.ndarray:
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ConvertError(f"{path}: row {row}, {what}: {values[row]!r} is not an integer")
    return values.astype(np.int64)


def video_of(utterance_ids: np.ndarray, path: str) -> np.ndarray:
    """`<video id>_<clip no>` -> video id (the part before the last '_'); a malformed id fails, named."""
    videos = np.empty(len(utterance_ids), dtype=object)
    for i, uid in enumerate(utterance_ids):
        video, sep, clip = uid.rpartition("_")
        if not sep or not video or not clip.isdigit():
            raise ConvertError(f"{path}: row {i}: utterance id {uid!r} is not <video id>_<clip no>")
        videos[i] = video
    return videos


def load(src: str, non_finite: NonFinite, part: str = "train") -> tuple[Converted, dict]:
    """Read and check the CSVs of one part; returns its records and a description of its files."""
    paths = {k: os.path.join(src, f) for k, f in files(part).items()}
    tables = {k: _read_csv(p) for k, p in paths.items()}
    n = tables["audio"].num_rows
    for k in ("video", "text"):
        if tables[k].num_rows != n:
            raise ConvertError(f"{paths[k]}: {tables[k].num_rows} rows, but {paths['audio']} has {n}; "
                               f"row i of the feature files must be the same utterance")
    for k, minimum in (("audio", 2), ("video", 2), ("text", 2), ("transcripts", 4)):
        if tables[k].num_columns < minimum:
            raise ConvertError(f"{paths[k]}: {tables[k].num_columns} columns, expected at least {minimum}")

    audio, video = _numeric(tables["audio"], paths["audio"]), _numeric(tables["video"], paths["video"])
    text_all = _numeric(tables["text"], paths["text"])
    feats = {"audio": audio[:, :-1], "video": video[:, :-1], "text": text_all[:, 1:]}
    label_audio = _integral(audio[:, -1], paths["audio"], "label (last column)")
    label_video = _integral(video[:, -1], paths["video"], "label (last column)")
    index = _integral(text_all[:, 0], paths["text"], "column 0 (row index into transcripts.csv)")

    tr = tables["transcripts"]
    tr_path = paths["transcripts"]
    if not (pa.types.is_string(tr.column(0).type) or pa.types.is_large_string(tr.column(0).type)):
        raise ConvertError(f"{tr_path}: column 0 holds {tr.column(0).type}, expected utterance ids")
    all_ids = np.asarray(tr.column(0).to_pylist(), dtype=object)
    tr_labels = _integral(_numeric(tr, tr_path, first=tr.num_columns - 1)[:, 0], tr_path, "label (last column)")
    bad = (index < 0) | (index >= len(all_ids))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ConvertError(f"{paths['text']}: row {row}, column 0: index {index[row]} outside transcripts.csv "
                           f"(rows 0..{len(all_ids) - 1})")
    ids = all_ids[index]
    missing_id = np.array([not isinstance(i, str) or not i for i in ids])
    if missing_id.any():
        row = int(np.flatnonzero(missing_id)[0])
        raise ConvertError(f"{tr_path}: row {index[row]} (for {paths['text']} row {row}): empty utterance id")
    label_tr = tr_labels[index]

    for other, other_path in ((label_video, paths["video"]), (label_tr, tr_path)):
        differ = label_audio != other
        if differ.any():
            row = int(np.flatnonzero(differ)[0])
            where = f"row {index[row]}" if other_path == tr_path else f"row {row}"
            raise ConvertError(f"labels disagree for row {row} (record {ids[row]!r}), field 'label': "
                               f"{paths['audio']} row {row} says {label_audio[row]}, {other_path} {where} says "
                               f"{other[row]} ({int(differ.sum())} rows disagree)")
    if not np.isin(label_audio, (0, 1)).all():
        row = int(np.flatnonzero(~np.isin(label_audio, (0, 1)))[0])
        raise ConvertError(f"{paths['audio']}: row {row} (record {ids[row]!r}), field 'label': {label_audio[row]}, "
                           f"expected 0 (negative) or 1 (positive)")
    videos = video_of(ids, tr_path)

    modalities, columns = [], {}
    for name, key in MODALITY_OF:
        values = feats[key]
        non_finite.apply(values, name, lambda i, key=key: f"{paths[key]}: row {i[0]} (record {ids[i[0]]!r}), "
                         f"column {i[1] + (1 if key == 'text' else 0)}")
        modalities.append(ModalitySpec(name, values.shape[1], 1))
        columns[name] = ragged_column(values, np.ones(n, dtype=np.int64), values.shape[1])
    data = Converted(ids=ids, videos=videos, columns=columns, modalities=tuple(modalities), labels=label_audio,
                     split=np.full(n, PARTS.index(part), dtype=np.int64), label_names=LABEL_SCHEMES["sentiment2"],
                     splits=PARTS)
    return data, {os.path.basename(p): file_info(p) for p in paths.values()}


def _concat(parts: list[Converted]) -> Converted:
    first = parts[0]
    for other in parts[1:]:
        if other.modalities != first.modalities:
            raise ConvertError(f"the parts' feature sizes differ: {first.modalities} against {other.modalities}")
    return Converted(ids=np.concatenate([p.ids for p in parts]), videos=np.concatenate([p.videos for p in parts]),
                     columns={m.name: pa.concat_arrays([p.columns[m.name] for p in parts]) for m in first.modalities},
                     modalities=first.modalities, labels=np.concatenate([p.labels for p in parts]),
                     split=np.concatenate([p.split for p in parts]), label_names=first.label_names, splits=PARTS)


def convert(src: str, out: str, non_finite: str = "fail") -> dict:
    """Convert the CSV folder `src` (train and dev parts) to input v1 Parquet under `out`; returns dataset.json."""
    nf = NonFinite(non_finite)
    loaded = [load(src, nf, part) for part in PARTS]
    data = _concat([d for d, _ in loaded])
    shared = sorted(set(loaded[0][0].videos) & set(loaded[1][0].videos))
    if shared:
        raise ConvertError(f"{src}: {len(shared)} videos have records in both {files('train')['audio']} and "
                           f"{files('dev')['audio']} (e.g. {shared[0]!r}); dev must hold videos never trained on")
    source = {"kind": "cmu-mosi-utterance-csv", "folder": os.path.abspath(src),
              "files": {name: info for _, part_files in loaded for name, info in part_files.items()}}
    split_info = {"method": "given", "description": "train = *_train.csv (every training video), "
                  "dev = *_dev.csv (16 videos of the official test split)"}
    mapping = {"scheme": "sentiment2", "description": "the files' binary labels as they are: 0 = negative, 1 = positive"}
    return write_dataset(out, data, converter="mosi-utterance-csv", source=source, label_mapping=mapping,
                         split_info=split_info, extra={"non_finite": {"policy": nf.policy, "replaced": nf.replaced}})
