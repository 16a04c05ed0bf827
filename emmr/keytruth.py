"""Key-modality truth from the frozen full-modality teacher (docs/model.md, "Key modality, defined").

For a complete record, `label_without[k]` is the teacher's label with modality k neutralised (emmr/nn/teacher.py)
and k is key when that differs from the teacher's label of the whole record. It needs no annotation, so it
serves real data as well as synthetic: it is the target of the pair heads (Eq. 9) in training, the truth the
flag's threshold is chosen against on validation, and the truth the flag is scored against on real data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emmr.batch import ModalityBatch
from emmr.nn.teacher import FullModalityNetwork
from emmr.tensors import model_inputs


@dataclass
class TeacherTruth:
    label: np.ndarray  # (N,) the teacher's label of the complete record
    label_without: np.ndarray  # (N, M) with each modality neutralised
    probs_without: np.ndarray  # (N, M, C) the teacher's class probabilities with each modality neutralised

    @property
    def key(self) -> np.ndarray:
        """(N, M) bool: neutralising the modality changes the teacher's label."""
        return self.label_without != self.label[:, None]


def teacher_truth(teacher: FullModalityNetwork, batch: ModalityBatch, names: tuple[str, ...],
                  device: torch.device, size: int = 512) -> TeacherTruth:
    """The teacher's labels of complete records, whole and with each modality neutralised."""
    if len(batch) and not batch.present().all():
        row = int(np.flatnonzero(~batch.present().all(axis=1))[0])
        raise ValueError(f"key truth needs complete records; record {batch.ids[row]!r} misses a modality")
    labels, without = [], []
    was_training = teacher.training
    teacher.eval()
    with torch.inference_mode():
        for i in range(0, len(batch), size):
            features, lengths = model_inputs(batch.take(np.arange(i, min(i + size, len(batch)))), names, device)
            labels.append(teacher(features, lengths)[0].argmax(dim=-1).cpu().numpy())
            without.append(teacher.neutralised_logits(features, lengths).float().softmax(dim=-1).cpu().numpy())
    teacher.train(was_training)
    probs = np.concatenate(without) if without else np.zeros((0, len(names), teacher.head[-1].out_features), np.float32)
    return TeacherTruth(label=np.concatenate(labels) if labels else np.zeros(0, np.int64),
                        label_without=probs.argmax(axis=-1), probs_without=probs)
