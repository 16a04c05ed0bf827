"""Checkpoint directories: weights in safetensors, everything else in JSON. Loading never unpickles.

  model.safetensors   the EMMR (or baseline) weights served by the pipeline
  teacher.safetensors the frozen full-modality network (Eq. 3), kept for provenance and further training
  standardize.safetensors  (with train.standardize) each modality's training mean and std, applied to every
                      input before the network, in training and by the Scorer
  checkpoint.json     format, schema version, resolved model and training configs, label names, method,
                      training-data fingerprint, validation metrics, and the SHA-256 of each weight file
The model version is the first 12 hex digits of model.safetensors' SHA-256; loading checks both hashes.
Paths may be local or any filesystem Beam knows (gs://).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from emmr import __version__
from emmr.config import ModelConfig
from emmr.nn.emmr import EMMR
from schemas.arrow import SCHEMA_VERSION

FORMAT = "emmr-checkpoint"
FORMAT_VERSION = 2  # bumped whenever the network's parameters change shape or meaning (2: MMIN's last block)
META_FILE, MODEL_FILE, TEACHER_FILE = "checkpoint.json", "model.safetensors", "teacher.safetensors"
STANDARDIZE_FILE = "standardize.safetensors"  # per-modality training mean and std (emmr/standardize.py), if used
MAX_META_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 2 << 30


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or not one of ours; the message says which file and why."""


def _join(path: str, name: str) -> str:
    return path.rstrip("/") + "/" + name if "://" in path else os.path.join(path, name)


def _read(path: str, limit: int) -> bytes:
    try:
        if "://" in path:
            from apache_beam.io.filesystems import FileSystems

            with FileSystems.open(path) as f:
                data = f.read(limit + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
    except Exception as e:  # noqa: BLE001 - every failure to read is the same error to the caller
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if len(data) > limit:
        raise CheckpointError(f"{path} is larger than the limit of {limit} bytes")
    return data


def exists(path: str) -> bool:
    """Whether `path` holds (part of) a checkpoint: checkpoint.json or a weights file."""
    files = [_join(path, name) for name in (META_FILE, MODEL_FILE, TEACHER_FILE)]
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems

        return any(FileSystems.exists(f) for f in files)
    return any(os.path.exists(f) for f in files)


def _write(path: str, data: bytes) -> None:
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(path) as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save(path: str, model: EMMR, *, method: str, train_config: dict, metrics: dict, data_fingerprint: dict,
         teacher: torch.nn.Module | None = None, standardizer=None) -> str:
    """Write a checkpoint directory; returns the model version."""
    if "://" not in path:
        os.makedirs(path, exist_ok=True)
    weights = save_safetensors(_state(model))
    files = {MODEL_FILE: hashlib.sha256(weights).hexdigest()}
    _write(_join(path, MODEL_FILE), weights)
    if teacher is not None:
        teacher_weights = save_safetensors(_state(teacher))
        files[TEACHER_FILE] = hashlib.sha256(teacher_weights).hexdigest()
        _write(_join(path, TEACHER_FILE), teacher_weights)
    if standardizer is not None:  # the inputs the weights were trained on: the Scorer applies the same
        stats = save_safetensors({k: torch.from_numpy(v) for k, v in standardizer.tensors().items()})
        files[STANDARDIZE_FILE] = hashlib.sha256(stats).hexdigest()
        _write(_join(path, STANDARDIZE_FILE), stats)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "schema_version": SCHEMA_VERSION,
        "model_version": files[MODEL_FILE][:12],
        "method": method,
        "label_names": list(model.config.label_names),
        "model": model.config.to_dict(),
        "train": train_config,
        "data": data_fingerprint,
        "metrics": metrics,
        "files": files,
        "emmr_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write(_join(path, META_FILE), json.dumps(meta, indent=2, sort_keys=True, default=str).encode())
    return meta["model_version"]


def read_meta(path: str) -> dict:
    raw = _read(_join(path, META_FILE), MAX_META_BYTES)
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise CheckpointError(f"{_join(path, META_FILE)} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{_join(path, META_FILE)} is not an EMMR checkpoint (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION or meta.get("schema_version") != SCHEMA_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format_version')} / schema "
                              f"{meta.get('schema_version')}, this code reads {FORMAT_VERSION} / {SCHEMA_VERSION}")
    return meta


def _load_weights(path: str, name: str, meta: dict) -> dict[str, torch.Tensor]:
    data = _read(_join(path, name), MAX_WEIGHTS_BYTES)
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta.get("files", {}).get(name):
        raise CheckpointError(f"{_join(path, name)}: SHA-256 {digest[:12]}... does not match the recorded "
                              f"{str(meta.get('files', {}).get(name))[:12]}...; the file is corrupt or was replaced")
    try:
        return load_safetensors(data)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{_join(path, name)} is not a readable safetensors file: {e}") from e


def load(path: str, device: str | torch.device = "cpu") -> tuple[EMMR, dict]:
    """-> (model in eval mode on `device`, metadata). Raises CheckpointError naming what is wrong."""
    meta = read_meta(path)
    try:
        config = ModelConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{_join(path, META_FILE)}: bad model config: {e}") from e
    model = EMMR(config)
    try:
        model.load_state_dict(_load_weights(path, MODEL_FILE, meta))
    except RuntimeError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{_join(path, MODEL_FILE)} does not fit the recorded config: {e}") from e
    return model.to(device).eval(), meta


def load_standardizer(path: str, meta: dict):
    """The checkpoint's input standardisation (emmr.standardize.Standardizer), or None when it has none."""
    from emmr.standardize import Standardizer

    if STANDARDIZE_FILE not in meta.get("files", {}):
        return None
    names = tuple(m["name"] for m in meta["model"]["modalities"])
    try:
        return Standardizer.from_tensors({k: v.numpy() for k, v in _load_weights(path, STANDARDIZE_FILE, meta).items()}, names)
    except ValueError as e:
        raise CheckpointError(f"{_join(path, STANDARDIZE_FILE)}: {e}") from e


def load_teacher(path: str, device: str | torch.device = "cpu"):
    from emmr.nn.teacher import FullModalityNetwork

    meta = read_meta(path)
    teacher = FullModalityNetwork(ModelConfig.from_dict(meta["model"]))
    teacher.load_state_dict(_load_weights(path, TEACHER_FILE, meta))
    return teacher.to(device).eval()
