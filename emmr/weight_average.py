"""A moving average of the trained weights (Polyak averaging), the model that training validates and keeps.

After every optimiser step each trained parameter's average moves towards it:
    a <- d_t a + (1 - d_t) p,    d_t = min(decay, (1 + t) / (10 + t))   (t: updates so far)
The ramp d_t keeps the first steps from anchoring the average to the random initial weights (with d = 0.995 alone,
the initial weights would still weigh 0.995^94 = 0.62 after one epoch of 3,000 records). The average is a
smoother estimate than the last step's weights, whose noise from the last minibatches shows in the class
probabilities that the key-missing score compares (docs/synthetic.md, "Averaged weights").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


class WeightAverage:
    """The moving average of `params` (those that require a gradient) with the given decay, 0 <= decay < 1."""

    def __init__(self, params: Iterable[torch.Tensor], decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"weight average decay must be in [0, 1), got {decay}")
        self.params = [p for p in params if p.requires_grad]
        self.decay = decay
        self.updates = 0
        self.average = [p.detach().clone() for p in self.params]

    def rate(self) -> float:
        """d_t for the next update."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """After an optimiser step: move each average towards its parameter."""
        d = self.rate()
        for a, p in zip(self.average, self.params):
            a.lerp_(p.detach(), 1.0 - d)
        self.updates += 1

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside the block the parameters hold the averages; after it, their own values again."""
        live = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, a in zip(self.params, self.average):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(self.params, live):
                    p.copy_(v)
