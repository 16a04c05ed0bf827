"""ModalityBatch (numpy) -> model inputs (torch) on a device, and back."""

from __future__ import annotations

import numpy as np
import torch

from emmr.batch import ModalityBatch


def model_inputs(batch: ModalityBatch, names: tuple[str, ...], device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
    """-> (features per modality (B, L_m, d_m) float32, lengths (B, M) int64) on `device`.

    On CUDA the host arrays are pinned (unless they already are: the scoring job pads into pinned buffers) and copied
    without blocking, so the copy overlaps the work queued before.
    """
    cuda = device.type == "cuda"

    def move(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        if not cuda:
            return t.to(device)
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)  # the job pads into pinned buffers

    features = [move(batch.features[n]) for n in names]
    lengths = move(np.stack([batch.lengths[n] for n in names], axis=1).astype(np.int64))
    return features, lengths
