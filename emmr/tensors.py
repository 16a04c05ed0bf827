"""ModalityBatch (numpy) -> model inputs (torch) on a device: `model_inputs` for one batch, `DeviceInputs` for the
Scorer (reused page-locked buffers on CUDA, gathers of length buckets on the device)."""

from __future__ import annotations

import numpy as np
import torch

from emmr.batch import Bucket, ModalityBatch


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


class DeviceInputs:
    """Puts a whole padded batch on the device once, then hands out its length buckets (emmr.batch.length_buckets)
    gathered and trimmed there.

    CPU: torch views of the numpy arrays; a bucket is an index_select (one contiguous copy of its rows and steps).
    CUDA: the arrays go through page-locked host buffers that this object keeps and reuses (grown when a batch needs
    more; the job's padder already pads into page-locked memory, and those arrays are sent as they are), one
    non-blocking copy per modality; the buckets are gathered on the GPU, so the host does no per-record work beyond
    sorting lengths. The buffers are reused by the next batch, which is safe because the Scorer waits for each batch's
    results (after its copies) before it returns."""

    def __init__(self, device: torch.device):
        self.device = device
        self._host: torch.Tensor | None = None  # flat float32, page-locked (CUDA only)

    def _to_device(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        if self.device.type != "cuda":
            return [t.to(self.device) for t in tensors]
        need = sum(t.numel() for t in tensors if not t.is_pinned() and t.dtype == torch.float32)
        if need and (self._host is None or self._host.numel() < need):
            self._host = torch.empty(max(need, 2 * (0 if self._host is None else self._host.numel())),
                                     dtype=torch.float32).pin_memory()
        out, at = [], 0
        for t in tensors:
            if not t.is_pinned():
                if t.dtype == torch.float32:
                    staged = self._host[at : at + t.numel()].view(t.shape)
                    staged.copy_(t)
                    at += t.numel()
                    t = staged
                else:
                    t = t.pin_memory()  # the small lengths array
            out.append(t.to(self.device, non_blocking=True))
        return out

    def put(self, batch: ModalityBatch, names: tuple[str, ...]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The whole batch on the device: (features (B, L_m, d_m), lengths (B, M) int64)."""
        lengths = np.stack([batch.lengths[n] for n in names], axis=1).astype(np.int64)
        *features, lengths_t = self._to_device([batch.features[n] for n in names] + [lengths])
        return features, lengths_t

    def bucket(self, features: list[torch.Tensor], lengths: torch.Tensor, bucket: Bucket
               ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """A bucket's rows, each modality cut to the bucket's steps, contiguous, on the device."""
        rows = torch.from_numpy(bucket.rows)
        rows = rows.to(self.device, non_blocking=True) if self.device.type == "cuda" else rows
        return ([x.index_select(0, rows)[:, :steps].contiguous() for x, steps in zip(features, bucket.lens)],
                lengths.index_select(0, rows))
