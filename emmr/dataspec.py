"""What a training data path holds: its modalities (name, dim, max_len), label names, and where its splits are.

`emmr train` and `emmr compare` build the model for the data they are given, so that a user needs no preset
name to train on their own data. The modalities come from the converted data set's dataset.json (the folder
itself, or its parent for OUT/<split>), else from the Parquet schema (every `list<fixed_size_list<float32>[d]>`
column is a modality; max_len = the longest sequence in the data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emmr.batch import parquet_files
from emmr.config import ModelConfig
from emmr.convert import dataset_modalities, find_dataset
from schemas.modality import RESERVED_COLUMNS, ModalitySpec

VALIDATION_SPLITS = ("dev", "val")  # a converted data set's validation split, in order of preference


@dataclass(frozen=True)
class DataSpec:
    modalities: tuple[ModalitySpec, ...]
    label_names: tuple[str, ...] | None  # None when the data do not say (no dataset.json)
    source: str  # where the spec came from, for messages

    def describe(self) -> str:
        mods = ", ".join(f"{m.name} {m.dim}x{m.max_len}" for m in self.modalities)
        labels = f" and labels {list(self.label_names)}" if self.label_names else ""
        return f"modalities {mods}{labels}"


def _is_modality(typ: pa.DataType) -> bool:
    return (pa.types.is_list(typ) and pa.types.is_fixed_size_list(typ.value_type)
            and pa.types.is_float32(typ.value_type.value_type))


def from_parquet(path: str) -> DataSpec:
    """The modalities of a Parquet folder or glob, from its schema and its longest sequences."""
    files = parquet_files(path)
    schema = pq.read_schema(files[0])
    names = [f.name for f in schema if _is_modality(f.type) and f.name not in RESERVED_COLUMNS
             and not f.name.startswith(("key_", "evidence_"))]
    if not names:
        raise ValueError(f"{path}: no modality columns (list<fixed_size_list<float32>[dim]>) in {files[0]}")
    longest = dict.fromkeys(names, 0)
    for f in files:
        table = pq.read_table(f, columns=names)
        for n in names:
            lengths = pc.list_value_length(table.column(n))
            longest[n] = max(longest[n], int(pc.max(lengths).as_py() or 0))
    mods = tuple(ModalitySpec(n, schema.field(n).type.value_type.list_size, max(1, longest[n])) for n in names)
    return DataSpec(mods, None, f"the Parquet schema of {path}")


def data_spec(path: str) -> DataSpec:
    """dataset.json's modalities and labels when `path` is a converted data set or one of its splits, else the schema's."""
    found = find_dataset(path)
    if found is None:
        return from_parquet(path)
    root, dataset = found
    return DataSpec(dataset_modalities(dataset), tuple(dataset["label_names"]), os.path.join(root, "dataset.json"))


def splits_of(path: str, val: str | None) -> tuple[str, str | None]:
    """(training folder, validation folder or None) for `--data path [--val val]`.

    A converted data set's root (OUT, with dataset.json) trains on OUT/train and validates on OUT/dev (or
    OUT/val) unless --val says otherwise; any other path is the training data itself.
    """
    found = find_dataset(path)
    if found is None or os.path.abspath(found[0]) != os.path.abspath(path):
        return path, val
    root, dataset = found
    if "train" not in dataset["splits"]:
        raise ValueError(f"{root}/dataset.json: no `train` split (splits: {sorted(dataset['splits'])})")
    if val is None:
        val = next((os.path.join(root, s) for s in VALIDATION_SPLITS if dataset["splits"].get(s, {}).get("records")), None)
    return os.path.join(root, "train"), val


def fits(config: ModelConfig, spec: DataSpec) -> bool:
    """Whether a model config can read the data: same modality names and dims in order, long enough, same labels."""
    if [(m.name, m.dim) for m in config.modalities] != [(m.name, m.dim) for m in spec.modalities]:
        return False
    if any(c.max_len < d.max_len for c, d in zip(config.modalities, spec.modalities)):
        return False
    return spec.label_names is None or tuple(config.label_names) == spec.label_names


def mismatch(what: str, config: ModelConfig, spec: DataSpec) -> str:
    """The one-line error for a config that cannot read the data, naming both."""
    have = DataSpec(config.modalities, config.label_names, what).describe()
    return (f"{what} has {have}, but the data ({spec.source}) have {spec.describe()}; leave out --preset "
            f"(and `model.modalities` / `model.label_names` in the YAML) to take them from the data")
