"""Standardising each modality's features with training statistics, carried by the checkpoint.

Real features come on very different scales (CMU-MOSI's openSMILE acoustic features have standard deviations
from 0.001 to 51, its text features below 1). With `train.standardize`, each feature of each modality is
shifted and scaled by the mean and standard deviation of the training records' observed steps; padding and
missing modalities stay zero, which is then the training mean (a missing modality reads as an average one).
The statistics are saved beside the weights (checkpoint.py) and the Scorer applies them to every batch it
scores, so training, evaluation and the Beam job see the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emmr.batch import ModalityBatch

MIN_STD = 1e-3  # a feature that is (nearly) constant in training is centred, not blown up


@dataclass(frozen=True)
class Standardizer:
    mean: dict[str, np.ndarray]  # modality -> (dim,) float32
    std: dict[str, np.ndarray]  # modality -> (dim,) float32, at least MIN_STD

    @classmethod
    def fit(cls, batch: ModalityBatch) -> "Standardizer":
        mean, std = {}, {}
        for n in batch.names:
            valid = np.arange(batch.features[n].shape[1])[None, :] < batch.lengths[n][:, None]  # (B, L)
            steps = batch.features[n][valid].astype(np.float64)  # (observed steps, dim)
            if len(steps) == 0:
                raise ValueError(f"modality {n!r}: no observed steps in the training data to standardise with")
            mean[n] = steps.mean(axis=0).astype(np.float32)
            std[n] = np.maximum(steps.std(axis=0), MIN_STD).astype(np.float32)
        return cls(mean, std)

    def apply(self, batch: ModalityBatch) -> ModalityBatch:
        """A copy with every observed step standardised; padding and missing modalities stay zero."""
        features = {}
        for n in batch.names:
            x = batch.features[n]
            valid = (np.arange(x.shape[1])[None, :] < batch.lengths[n][:, None])[..., None]  # (B, L, 1)
            features[n] = np.where(valid, (x - self.mean[n]) / self.std[n], 0).astype(np.float32)
        return ModalityBatch(ids=batch.ids, features=features, lengths=batch.lengths, labels=batch.labels)

    def tensors(self) -> dict[str, np.ndarray]:
        """Flat name -> array, for safetensors."""
        return {**{f"{n}.mean": m for n, m in self.mean.items()}, **{f"{n}.std": s for n, s in self.std.items()}}

    @classmethod
    def from_tensors(cls, tensors: dict, names: tuple[str, ...]) -> "Standardizer":
        try:
            return cls({n: np.asarray(tensors[f"{n}.mean"], np.float32) for n in names},
                       {n: np.asarray(tensors[f"{n}.std"], np.float32) for n in names})
        except KeyError as e:
            raise ValueError(f"standardisation statistics lack {e.args[0]!r} (modalities {list(names)})") from None


def prepare(train: ModalityBatch, val: ModalityBatch, enabled: bool) -> tuple[ModalityBatch, ModalityBatch, Standardizer | None]:
    """(train, val) standardised with the training statistics when `enabled`, and the Standardizer (or None)."""
    if not enabled:
        return train, val, None
    s = Standardizer.fit(train)
    return s.apply(train), s.apply(val), s
