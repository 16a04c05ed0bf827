"""CMU-MOSI utterance-level CSVs (bc-LSTM release, ../shared/datasets/cmu-mosi-utterance) -> input v1 Parquet.

The source folder holds four headerless CSVs with quoted numbers (see its README):

    audio_train.csv   per utterance: 73 openSMILE features, then the label
    video_train.csv   per utterance: 100 3D-CNN features, then the label
    text_train.csv    per utterance: a 0-based row index into transcripts.csv, then 100 text-CNN features
    transcripts.csv   per MOSI utterance: id `<video id>_<clip no>`, transcript, a count, label

Row i of the three feature files is one utterance; its id comes from text_train.csv column 0 through
transcripts.csv. The converter checks that the three files have the same rows, that the labels of audio,
video and transcripts agree row by row (failing on the first disagreement, naming the row, the id and
the files), that every id is unique and well formed, and that every value is finite (or, with
`non_finite="zero"`, replaces and counts the bad ones).

Records: id = the utterance id; modalities `visual` (video, 100), `acoustic` (audio, 73), `text` (100),
each one step long; label 0 = negative, 1 = positive (the files' own binary labels, kept as they are).
The video of an utterance is its id without the trailing `_<clip no>` (video ids contain '_' too).
Splits are by video, seeded (`emmr.convert.split_by_video`); nothing is copied into the repository.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from emmr.convert import (
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    LABEL_SCHEMES,
    ConvertError,
    Converted,
    NonFinite,
    file_info,
    ragged_column,
    split_by_video,
    write_dataset,
)
from schemas.modality import ModalitySpec

FILES = {"audio": "audio_train.csv", "video": "video_train.csv", "text": "text_train.csv",
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


def load(src: str, non_finite: NonFinite) -> tuple[Converted, dict]:
    """Read and check the four CSVs; returns the records (split not yet assigned) and a source description."""
    paths = {k: os.path.join(src, f) for k, f in FILES.items()}
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
                     split=np.zeros(n, dtype=np.int64), label_names=LABEL_SCHEMES["sentiment2"])
    source = {"kind": "cmu-mosi-utterance-csv", "folder": os.path.abspath(src),
              "files": {FILES[k]: file_info(p) for k, p in paths.items()}}
    return data, source


def convert(src: str, out: str, seed: int = 0, val_fraction: float = DEFAULT_VAL_FRACTION,
            test_fraction: float = DEFAULT_TEST_FRACTION, non_finite: str = "fail") -> dict:
    """Convert the CSV folder `src` to input v1 Parquet under `out`; returns the dataset.json content."""
    nf = NonFinite(non_finite)
    data, source = load(src, nf)
    data.split, split_info = split_by_video(data.videos, seed, val_fraction, test_fraction)
    mapping = {"scheme": "sentiment2", "description": "the files' binary labels as they are: 0 = negative, 1 = positive"}
    return write_dataset(out, data, converter="mosi-utterance-csv", source=source, label_mapping=mapping,
                         split_info=split_info, extra={"non_finite": {"policy": nf.policy, "replaced": nf.replaced}})
