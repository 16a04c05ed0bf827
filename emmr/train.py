"""Training: the full-modality network first (Eq. 3) on complete records, frozen; then EMMR (or a baseline)
with simulated missingness re-drawn every epoch, selected on validation only.

One loop serves every method of emmr/methods.py.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import nn

from emmr.augment import perturb
from emmr.batch import ModalityBatch
from emmr.config import ModelConfig
from emmr.metrics import accuracy, macro_f1
from emmr.missing import seeded_rng, simulate_missing
from emmr.progress import Progress
from emmr.nn.emmr import EMMR
from emmr.nn.losses import backward_loss, forward_loss, task_loss, total_loss
from emmr.nn.teacher import FullModalityNetwork
from emmr.tensors import model_inputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; the defaults are the paper's where it gives them (Adam 1e-3, batch 32, 0.1, 0.1)."""

    method: str = "emmr"
    epochs: int = 30
    teacher_epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    lambda_forward: float = 0.1  # Eq. 14
    lambda_backward: float = 0.1  # Eq. 14
    aux_weight: float = 1.0  # the heads' own cross-entropy (emmr/nn/losses.py)
    missing_rate: float = 0.3  # simulated in training, re-drawn each epoch
    missing_probs: tuple[float, ...] | None = None  # which modality to drop; None = uniform
    val_fraction: float = 0.2  # carved from the training data when no validation set is given
    patience: int = 10  # stop after this many epochs without a better validation score
    select_metric: str = "macro_f1"
    # Generalisation knobs (emmr/standardize.py, emmr/augment.py), off by default; docs/results.md has the search.
    standardize: bool = False  # each modality scaled by its training mean and std (saved, applied when scoring)
    feature_noise: float = 0.0  # Gaussian noise on observed input features, in training
    feature_dropout: float = 0.0  # dropout on observed input feature values, in training
    label_smoothing: float = 0.0  # of every cross-entropy (teacher, outputs, heads)
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.select_metric not in ("macro_f1", "accuracy"):
            raise ValueError(f"select_metric must be macro_f1 or accuracy, got {self.select_metric!r}")
        if self.missing_probs is not None:
            object.__setattr__(self, "missing_probs", tuple(float(p) for p in self.missing_probs))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown train config keys {sorted(unknown)}")
        return cls(**d)


@dataclass
class TrainResult:
    model: EMMR
    teacher: FullModalityNetwork
    metrics: dict = field(default_factory=dict)  # best validation metrics and the epoch they came from
    history: list[dict] = field(default_factory=list)


def split_validation(batch: ModalityBatch, fraction: float, seed: int) -> tuple[ModalityBatch, ModalityBatch]:
    """Carve a validation set out of the training records, by seed."""
    perm = seeded_rng(seed, 7).permutation(len(batch))
    n_val = max(1, round(fraction * len(batch)))
    return batch.take(np.sort(perm[n_val:])), batch.take(np.sort(perm[:n_val]))


def _check_labels(batch: ModalityBatch, classes: int, what: str) -> None:
    bad = np.flatnonzero((batch.labels < 0) | (batch.labels >= classes))
    if len(bad):
        raise ValueError(f"{what}: record {batch.ids[bad[0]]!r}, field 'label': expected 0 <= label < {classes}, "
                         f"got {batch.labels[bad[0]]} ({len(bad)} records)")


def _minibatches(n: int, size: int, rng: np.random.Generator):
    perm = rng.permutation(n)
    return [perm[i : i + size] for i in range(0, n, size)]


def _predict(model: nn.Module, batch: ModalityBatch, names, device, size: int = 512) -> np.ndarray:
    preds = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(batch), size):
            part = batch.take(np.arange(i, min(i + size, len(batch))))
            features, lengths = model_inputs(part, names, device)
            out = model(features, lengths)
            logits = out[0] if isinstance(out, tuple) else out.logits
            preds.append(logits.argmax(-1).cpu().numpy())
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def _scores(labels: np.ndarray, preds: np.ndarray) -> dict:
    return {"accuracy": accuracy(labels, preds), "macro_f1": macro_f1(labels, preds)}


def _fit(model, params, batch_fn, n, epochs, cfg, validate, desc, progress):
    """The shared optimisation loop: Adam, minibatches, per-epoch validation, best state kept."""
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_state, history, since_best = None, None, [], 0
    for epoch in range(epochs):
        model.train()
        rng = seeded_rng(cfg.seed, 11, epoch)
        prepare = batch_fn(epoch)
        started, total, count = time.perf_counter(), 0.0, 0
        with Progress(f"{desc} epoch {epoch + 1}/{epochs}", total=n, logger=log, enabled=progress) as meter:
            for idx in _minibatches(n, cfg.batch_size, rng):
                loss = prepare(idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, count = total + loss.item() * len(idx), count + len(idx)
                meter.update(len(idx))
        scores = validate()
        history.append({"epoch": epoch + 1, "loss": total / max(count, 1), **scores, "seconds": time.perf_counter() - started})
        improved = best is None or scores[cfg.select_metric] > best[cfg.select_metric]
        log.info("%s epoch %d/%d: loss %.4f, val accuracy %.4f, val macro-F1 %.4f%s (%.1f s, %.0f records/s)", desc,
                 epoch + 1, epochs, history[-1]["loss"], scores["accuracy"], scores["macro_f1"],
                 " (best)" if improved else "", history[-1]["seconds"], count / max(history[-1]["seconds"], 1e-9))
        if improved:
            best, best_state, since_best = {**scores, "epoch": epoch + 1}, copy.deepcopy(model.state_dict()), 0
        else:
            since_best += 1
            if since_best >= cfg.patience:
                log.info("%s: no better validation score for %d epochs, stopping", desc, cfg.patience)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return best or {}, history


def train_teacher(train: ModalityBatch, val: ModalityBatch, config: ModelConfig, cfg: TrainConfig, progress: bool = True):
    """Eq. 3: the full-modality network on the complete records, selected on complete validation records."""
    device = torch.device(cfg.device)
    names = config.modality_names
    complete = train.take(np.flatnonzero(train.present().all(axis=1)))
    val_complete = val.take(np.flatnonzero(val.present().all(axis=1)))
    if len(complete) < 2 or len(val_complete) < 1:
        raise ValueError(f"the full-modality network needs complete records: {len(complete)} for training, "
                         f"{len(val_complete)} for validation")
    torch.manual_seed(cfg.seed)
    teacher = FullModalityNetwork(config).to(device)
    labels = torch.from_numpy(complete.labels).to(device)

    def batch_fn(epoch):
        def step(idx):
            features, lengths = model_inputs(complete.take(idx), names, device)
            logits, _ = teacher(perturb(features, lengths, cfg.feature_noise, cfg.feature_dropout), lengths)
            return nn.functional.cross_entropy(logits, labels[idx], label_smoothing=cfg.label_smoothing)
        return step

    best, history = _fit(teacher, teacher.parameters(), batch_fn, len(complete), cfg.teacher_epochs, cfg,
                         lambda: _scores(val_complete.labels, _predict(teacher, val_complete, names, device)),
                         "teacher", progress)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, best, history


def train_emmr(train: ModalityBatch, val: ModalityBatch, config: ModelConfig, cfg: TrainConfig, progress: bool = True,
               teacher: tuple[FullModalityNetwork, dict] | None = None) -> TrainResult:
    """The whole procedure: teacher, freeze, then the student with simulated missingness.

    `teacher` (network, its validation metrics) reuses a frozen full-modality network trained on the same
    data, so that several methods of one comparison share it.
    """
    _check_labels(train, config.num_classes, "training data")
    _check_labels(val, config.num_classes, "validation data")
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    names = config.modality_names
    teacher, teacher_best = teacher or train_teacher(train, val, config, cfg, progress)[:2]
    torch.manual_seed(cfg.seed)
    model = EMMR(config).to(device)
    probs = np.asarray(cfg.missing_probs) if cfg.missing_probs else None
    present = train.present()
    complete_rows = present.all(axis=1)
    labels = torch.from_numpy(train.labels).to(device)
    # Validation masks are fixed per seed, drawn the same way as in training.
    val_masked = val.drop(simulate_missing(val.present(), cfg.missing_rate, seeded_rng(cfg.seed, 13), probs))

    def batch_fn(epoch):
        drop = simulate_missing(present, cfg.missing_rate, seeded_rng(cfg.seed, 17, epoch), probs)  # re-drawn each epoch
        masked = train.drop(drop)

        def step(idx):
            features, lengths = model_inputs(masked.take(idx), names, device)
            full_features, full_lengths = model_inputs(train.take(idx), names, device)
            out = model(perturb(features, lengths, cfg.feature_noise, cfg.feature_dropout), lengths)
            rows = torch.from_numpy(complete_rows[idx]).to(device)  # the teacher saw these complete
            with torch.no_grad():
                _, teacher_rep = teacher(full_features, full_lengths)
                target, full_masks = model.embed(full_features, full_lengths)  # complete features, fixed
            fwd = forward_loss(teacher_rep, out.reps, rows)
            bwd = backward_loss(out.decoded, target, full_masks.observed & rows[:, None])
            task = task_loss(out, labels[idx], cfg.aux_weight, cfg.label_smoothing)
            return total_loss(task, fwd, bwd, cfg.lambda_forward, cfg.lambda_backward)
        return step

    best, history = _fit(model, model.parameters(), batch_fn, len(train), cfg.epochs, cfg,
                         lambda: _scores(val_masked.labels, _predict(model, val_masked, names, device)),
                         cfg.method, progress)
    model.eval()
    metrics = {"validation": best, "teacher_validation": teacher_best, "train_records": len(train),
               "validation_records": len(val)}
    return TrainResult(model=model, teacher=teacher, metrics=metrics, history=history)
