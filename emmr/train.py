"""Training: the full-modality network first (Eq. 3) on complete records, frozen; then EMMR (or a baseline)
with simulated missingness re-drawn every epoch, selected on validation only.

EMMR trains in two stages: (1) the backbone (shared encoders, slot embeddings, the first member and its
heads) alone, which is the single-member baseline (`tf` for EMMR); its flag threshold is then chosen on
validation; (2) with the backbone frozen, the other members, their heads and the ensemble, kept only if it
beats the backbone alone on validation (keep_ensemble). One loop serves every method of emmr/methods.py.
"""

from __future__ import annotations

import copy
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import nn

from emmr.augment import perturb
from emmr.batch import ModalityBatch
from emmr.config import ModelConfig
from emmr.flag import FlagTarget, choose_threshold
from emmr.keytruth import teacher_truth
from emmr.metrics import accuracy, macro_f1
from emmr.missing import seeded_rng, simulate_missing
from emmr.progress import Progress
from emmr.nn.emmr import EMMR
from emmr.nn.losses import backward_loss, ensemble_loss, forward_loss, heads_loss, total_loss
from emmr.nn.teacher import FullModalityNetwork
from emmr.tensors import model_inputs
from emmr.weight_average import WeightAverage

log = logging.getLogger(__name__)
IGNORE = -100  # cross-entropy's ignore_index: no pair target for records that were not complete
SELECT_METRICS = ("macro_f1", "accuracy", "log_likelihood")  # validation scores an epoch can be selected on


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
    aux_weight: float = 1.0  # the pair heads' cross-entropy (emmr/nn/losses.py)
    missing_rate: float = 0.3  # simulated in training, re-drawn each epoch
    missing_probs: tuple[float, ...] | None = None  # which modality to drop; None = uniform
    flag_target: str = "precision:0.5"  # how the flag threshold is chosen on validation (emmr/flag.py)
    pair_targets: str = "soft"  # the pair heads learn the neutralised teacher's probabilities, or its labels ("hard")
    # Generalisation knobs (emmr/standardize.py, emmr/augment.py), off by default; docs/results.md has the search.
    standardize: bool = False  # each modality scaled by its training mean and std (saved, applied when scoring)
    feature_noise: float = 0.0  # Gaussian noise on observed input features, in training
    feature_dropout: float = 0.0  # dropout on observed input feature values, in training
    label_smoothing: float = 0.0  # of every cross-entropy (teacher, outputs, heads)
    val_fraction: float = 0.2  # carved from the training data when no validation set is given
    patience: int = 10  # stop after this many epochs without a better validation score
    weight_average: float = 0.0  # decay of the weights' moving average that is validated and kept; 0: the last step's
    ensemble_gate: bool = True  # keep stage 2 only if it beats the backbone alone on validation (keep_ensemble)
    select_metric: str = "macro_f1"
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.pair_targets not in ("soft", "hard"):
            raise ValueError(f"pair_targets must be soft or hard, got {self.pair_targets!r}")
        if self.select_metric not in SELECT_METRICS:
            raise ValueError(f"select_metric must be one of {SELECT_METRICS}, got {self.select_metric!r}")
        if self.missing_probs is not None:
            object.__setattr__(self, "missing_probs", tuple(float(p) for p in self.missing_probs))
        FlagTarget.parse(self.flag_target)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown train config keys {sorted(unknown)}")
        return cls(**d)

    def backbone_key(self) -> tuple:
        """What determines stage 1: methods that agree on it share one trained backbone per seed."""
        return (self.epochs, self.batch_size, self.lr, self.weight_decay, self.lambda_forward, self.lambda_backward,
                self.aux_weight, self.missing_rate, self.missing_probs, self.flag_target, self.pair_targets,
                self.standardize, self.feature_noise, self.feature_dropout, self.label_smoothing, self.patience,
                self.select_metric, self.weight_average, self.seed)


@dataclass
class TrainResult:
    model: EMMR
    teacher: FullModalityNetwork
    metrics: dict = field(default_factory=dict)  # best validation metrics and the epoch they came from
    history: list[dict] = field(default_factory=list)
    backbone: tuple[EMMR, dict] | None = None  # stage 1 (the single-member model) and its validation metrics


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


def _chunks(batch: ModalityBatch, size: int = 512):
    for i in range(0, len(batch), size):
        yield batch.take(np.arange(i, min(i + size, len(batch))))


def _predict(model: nn.Module, batch: ModalityBatch, names, device, mode: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> (class probabilities (N, C), key-missing scores (N,)); the teacher gives scores of 0."""
    probs, scores = [], []
    model.eval()
    with torch.inference_mode():
        for part in _chunks(batch):
            features, lengths = model_inputs(part, names, device)
            if isinstance(model, FullModalityNetwork):
                logits, score = model(features, lengths)[0], torch.zeros(len(part))
            else:
                out = model(features, lengths, mode=mode)
                logits, score = out.logits, out.check.score
            probs.append(logits.float().softmax(-1).cpu().numpy())
            scores.append(score.float().cpu().numpy())
    if not probs:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.float32)
    return np.concatenate(probs), np.concatenate(scores)


def _scores(labels: np.ndarray, probs: np.ndarray) -> dict:
    preds = probs.argmax(axis=1)
    likelihood = float(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)).mean())
    return {"accuracy": accuracy(labels, preds), "macro_f1": macro_f1(labels, preds), "log_likelihood": likelihood}


def _fit(model, params, batch_fn, n, epochs, cfg, validate, desc, progress):
    """The shared optimisation loop: Adam, minibatches, per-epoch validation, best state kept. With
    `cfg.weight_average`, validation scores and the kept state are the weights' moving average (emmr/weight_average.py)."""
    params = list(params)
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    average = WeightAverage(params, cfg.weight_average) if cfg.weight_average else None
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
                if average is not None:
                    average.update()
                total, count = total + loss.item() * len(idx), count + len(idx)
                meter.update(len(idx))
        with average.swapped() if average is not None else nullcontext():
            scores = validate()
            improved = best is None or scores[cfg.select_metric] > best[cfg.select_metric]
            if improved:
                best_state = copy.deepcopy(model.state_dict())
        history.append({"epoch": epoch + 1, "loss": total / max(count, 1), **scores, "seconds": time.perf_counter() - started})
        log.info("%s epoch %d/%d: loss %.4f, val accuracy %.4f, val macro-F1 %.4f, val log-likelihood %.4f%s "
                 "(%.1f s, %.0f records/s)", desc, epoch + 1, epochs, history[-1]["loss"], scores["accuracy"],
                 scores["macro_f1"], scores["log_likelihood"], " (best)" if improved else "", history[-1]["seconds"],
                 count / max(history[-1]["seconds"], 1e-9))
        if improved:
            best, since_best = {**scores, "epoch": epoch + 1}, 0
        else:
            since_best += 1
            if since_best >= cfg.patience:
                log.info("%s: no better validation score for %d epochs, stopping", desc, cfg.patience)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return best or {}, history


def _complete(batch: ModalityBatch) -> ModalityBatch:
    return batch.take(np.flatnonzero(batch.present().all(axis=1)))


def train_teacher(train: ModalityBatch, val: ModalityBatch, config: ModelConfig, cfg: TrainConfig, progress: bool = True):
    """Eq. 3: the full-modality network on the complete records, selected on complete validation records, then
    frozen with its neutral values fitted on the complete training records."""
    device = torch.device(cfg.device)
    names = config.modality_names
    complete, val_complete = _complete(train), _complete(val)
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
                         lambda: _scores(val_complete.labels, _predict(teacher, val_complete, names, device)[0]),
                         "teacher", progress)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.fit_neutral(model_inputs(part, names, device) for part in _chunks(complete))
    return teacher, best, history


def _pair_targets(teacher, batch: ModalityBatch, names, device, classes: int, soft: bool) -> np.ndarray:
    """The teacher's answer with each modality neutralised: labels (N, M), IGNORE for records that miss a
    modality; or `soft`, its probabilities (N, M, C), zero for those records (they add no loss)."""
    rows = np.flatnonzero(batch.present().all(axis=1))
    truth = teacher_truth(teacher, batch.take(rows), names, device)
    if soft:
        out = np.zeros((len(batch), len(names), classes), dtype=np.float32)
        out[rows] = truth.probs_without
    else:
        out = np.full((len(batch), len(names)), IGNORE, dtype=np.int64)
        out[rows] = truth.label_without
    return out


class StageData:
    """What both stages read: records, labels, the teacher's pair targets, complete rows, the masks."""

    def __init__(self, train: ModalityBatch, val: ModalityBatch, teacher, config: ModelConfig, cfg: TrainConfig):
        self.device, self.names = torch.device(cfg.device), config.modality_names
        self.train, self.teacher, self.cfg = train, teacher, cfg
        self.probs = np.asarray(cfg.missing_probs) if cfg.missing_probs else None
        self.present = train.present()
        self.complete_rows = self.present.all(axis=1)
        self.labels = torch.from_numpy(train.labels).to(self.device)
        targets = _pair_targets(teacher, train, self.names, self.device, config.num_classes, cfg.pair_targets == "soft")
        self.without = torch.from_numpy(targets).to(self.device)
        # Validation masks are fixed per seed, drawn the same way as in training.
        self.val_drop = simulate_missing(val.present(), cfg.missing_rate, seeded_rng(cfg.seed, 13), self.probs)
        self.val_masked = val.drop(self.val_drop)
        self.val = val

    def masked(self, epoch: int) -> ModalityBatch:
        return self.train.drop(simulate_missing(self.present, self.cfg.missing_rate, seeded_rng(self.cfg.seed, 17, epoch),
                                                self.probs))  # re-drawn each epoch

    def step_inputs(self, masked: ModalityBatch, model: EMMR, idx: np.ndarray, members: list[str]):
        """Inputs, the teacher's representation of the complete records and each member's backward target: the
        complete record through the Eq. 1-2 that the member reads."""
        features, lengths = model_inputs(masked.take(idx), self.names, self.device)
        full_features, full_lengths = model_inputs(self.train.take(idx), self.names, self.device)
        rows = torch.from_numpy(self.complete_rows[idx]).to(self.device)  # the teacher saw these complete
        full_masks = model.layout_of(full_features, full_lengths).masks(full_lengths)
        targets: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            _, teacher_rep = self.teacher(full_features, full_lengths)
            by_encoder: dict[int, torch.Tensor] = {}
            for name in members:
                encoder = model.encoder_of(name)
                if id(encoder) not in by_encoder:
                    was = encoder.training
                    encoder.eval()  # the target is computed without dropout (Eq. 17-18)
                    by_encoder[id(encoder)] = encoder(full_features, full_masks.observed)
                    encoder.train(was)
                targets[name] = by_encoder[id(encoder)]
        return features, lengths, rows, teacher_rep, targets, full_masks.observed & rows[:, None]


def stage_step(model: EMMR, data: StageData, cfg: TrainConfig, epoch: int):
    """The loss of one minibatch (row indices -> scalar) for the model's stage: stage 1 trains the backbone
    (its heads, forward and backward losses); stage 2 (backbone frozen) the other members' heads and losses and
    the ensemble."""
    masked = data.masked(epoch)

    trained = list(model.config.members[1:]) if model.backbone_frozen else [model.backbone]

    def step(idx: np.ndarray) -> torch.Tensor:
        features, lengths, rows, teacher_rep, targets, valid = data.step_inputs(masked, model, idx, trained)
        features = perturb(features, lengths, cfg.feature_noise, cfg.feature_dropout)
        out = model(features, lengths, mode="all" if model.backbone_frozen else "backbone")
        runs = [out.runs[n] for n in trained]
        labels, without = data.labels[idx], data.without[idx]
        smooth = cfg.label_smoothing
        task = sum(heads_loss(r.full_logits, r.without_logits, labels, without, cfg.aux_weight, smooth) for r in runs)
        if out.ensemble_logits is not None:
            task = task + ensemble_loss(out.ensemble_logits, labels, out.masks.missing.any(dim=1), smooth)
        fwd = forward_loss(teacher_rep, [model.layout.pool(r.encoded, out.masks.recovered_valid) for r in runs], rows)
        bwd = backward_loss([r.decoded for r in runs], [targets[n] for n in trained], valid)
        return total_loss(task, fwd, bwd, cfg.lambda_forward, cfg.lambda_backward)
    return step


def train_backbone(data: StageData, config: ModelConfig, cfg: TrainConfig, progress: bool) -> tuple[EMMR, dict, list]:
    """Stage 1: the single-member model (shared encoders, the first member, its heads); then its flag threshold."""
    torch.manual_seed(cfg.seed)
    model = EMMR(config.backbone_only()).to(data.device)
    validate = lambda: _scores(data.val.labels, _predict(model, data.val_masked, data.names, data.device, "backbone")[0])  # noqa: E731
    best, history = _fit(model, model.parameters(), lambda epoch: stage_step(model, data, cfg, epoch), len(data.train),
                         cfg.epochs, cfg, validate, config.members[0], progress)
    best["flag"] = choose_flag_threshold(model, data, cfg)
    return model, best, history


def choose_flag_threshold(model: EMMR, data: StageData, cfg: TrainConfig) -> dict:
    """Set the model's flag threshold on validation records that miss one modality, against the teacher's truth."""
    _, score = _predict(model, data.val_masked, data.names, data.device, "backbone")
    truth = teacher_truth(data.teacher, _complete(data.val), data.names, data.device).key
    complete = data.val.present().all(axis=1)
    single = data.val_drop.sum(axis=1) == 1
    rows = complete & single  # truth is defined for complete originals with one modality dropped
    k = data.val_drop[complete].argmax(axis=1)
    key = np.zeros(len(data.val), dtype=bool)
    key[complete] = truth[np.arange(len(k)), k]
    target = FlagTarget.parse(cfg.flag_target)
    threshold, achieved = choose_threshold(score[rows], key[rows], target)
    model.flag_threshold.fill_(threshold)
    log.info("flag threshold %.4f for %s on validation: %s", threshold, target, achieved)
    return {"target": str(target), "threshold": threshold, "validation": achieved}


def train_ensemble(model: EMMR, data: StageData, cfg: TrainConfig, progress: bool) -> tuple[dict, list]:
    """Stage 2: the backbone frozen; the other members, their heads and the ensemble."""
    model.freeze_backbone()
    params = [p for p in model.parameters() if p.requires_grad]
    validate = lambda: _scores(data.val.labels, _predict(model, data.val_masked, data.names, data.device)[0])  # noqa: E731
    return _fit(model, params, lambda epoch: stage_step(model, data, cfg, epoch), len(data.train), cfg.epochs, cfg,
                validate, cfg.method, progress)


def keep_ensemble(stage2: dict, backbone: dict, metric: str) -> dict:
    """Whether stage 2 earns its place: its best validation score on the select metric must beat the backbone
    alone's, strictly (on a tie the simpler model stays), without lowering the validation log-likelihood (a gain of
    one record in accuracy or macro-F1 whose probabilities got worse is not kept). Both are scored on the same
    validation masks, and EMMR differs from its backbone on the flagged records only, so this asks whether the
    ensemble helped where the check fired."""
    ll = "log_likelihood"
    ours, theirs = ({k: side.get(k, float("-inf")) for k in (metric, ll)} for side in (stage2, backbone))  # {}: 0 epochs
    passed = ours[metric] > theirs[metric] and ours[ll] >= theirs[ll]
    scored = lambda side: {k: v if v > float("-inf") else None for k, v in side.items()}  # noqa: E731 (JSON has no -inf)
    return {"passed": bool(passed), "metric": metric, "ensemble": scored(ours), "backbone": scored(theirs)}


def _text(score: float | None) -> str:
    return "none" if score is None else f"{score:.4f}"


def train_emmr(train: ModalityBatch, val: ModalityBatch, config: ModelConfig, cfg: TrainConfig, progress: bool = True,
               teacher: tuple[FullModalityNetwork, dict] | None = None,
               backbone: tuple[EMMR, dict] | None = None) -> TrainResult:
    """The whole procedure: teacher, freeze; the backbone and its flag threshold; then the ensemble stage.

    `teacher` (network, its validation metrics) reuses a frozen full-modality network trained on the same data;
    `backbone` (single-member model, its validation metrics) a stage 1 trained with the same settings, so that
    several methods of one comparison share them."""
    _check_labels(train, config.num_classes, "training data")
    _check_labels(val, config.num_classes, "validation data")
    teacher, teacher_best = teacher or train_teacher(train, val, config, cfg, progress)[:2]
    data = StageData(train, val, teacher, config, cfg)
    history: list[dict] = []
    if backbone is None:
        base, base_best, history = train_backbone(data, config, cfg, progress)
    else:
        base, base_best = backbone
    metrics = {"backbone_validation": base_best, "teacher_validation": teacher_best, "flag": base_best["flag"],
               "train_records": len(train), "validation_records": len(val)}
    if not config.ensemble:
        return TrainResult(model=base, teacher=teacher, metrics={**metrics, "validation": base_best}, history=history,
                           backbone=(base, base_best))
    torch.manual_seed(cfg.seed + 1)
    model = EMMR(config).to(data.device)
    missing, unexpected = model.load_state_dict(copy.deepcopy(base.state_dict()), strict=False)
    assert not unexpected and all(not k.startswith(("encoder.", "slots.", f"members.{model.backbone}.",
                                                    f"heads.{model.backbone}.")) for k in missing), (missing, unexpected)
    best, stage2 = train_ensemble(model, data, cfg, progress)
    model.eval()
    gate = keep_ensemble(best, base_best, cfg.select_metric)
    kept = gate["passed"] or not cfg.ensemble_gate
    metrics["ensemble"] = {**gate, "gate": cfg.ensemble_gate, "kept": kept}
    if not kept:
        log.warning("%s: the ensemble did not beat the backbone alone on validation (%s): the model is the backbone "
                    "alone, whose predictions and flags it keeps (ensemble_gate: false keeps it)", cfg.method,
                    ", ".join(f"{k} {_text(gate['ensemble'][k])} against {_text(v)}" for k, v in gate["backbone"].items()))
        return TrainResult(model=base, teacher=teacher, metrics={**metrics, "validation": base_best},
                           history=history + stage2, backbone=(base, base_best))
    return TrainResult(model=model, teacher=teacher, metrics={**metrics, "validation": best}, history=history + stage2,
                       backbone=(base, base_best))
