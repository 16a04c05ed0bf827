"""The weights' moving average (emmr/weight_average.py) and the training loop that validates and keeps it."""

import numpy as np
import pytest
import torch
from torch import nn

from emmr.train import TrainConfig, _fit
from emmr.weight_average import WeightAverage


def test_average_by_hand():
    p = nn.Parameter(torch.tensor([0.0]))
    average = WeightAverage([p], decay=0.5)
    with torch.no_grad():
        p.fill_(1.0)
    average.update()  # d_0 = min(0.5, 1/10) = 0.1: 0.1 * 0 + 0.9 * 1
    assert average.average[0].item() == pytest.approx(0.9)
    with torch.no_grad():
        p.fill_(2.0)
    average.update()  # d_1 = min(0.5, 2/11): 2/11 * 0.9 + 9/11 * 2 = 1.8
    assert average.average[0].item() == pytest.approx(1.8)
    average.updates = 1000
    assert average.rate() == 0.5  # the ramp (1001/1010) is above the decay: the decay holds


def test_swapped_holds_the_average_and_restores():
    p = nn.Parameter(torch.tensor([3.0, 4.0]))
    frozen = nn.Parameter(torch.tensor([7.0]), requires_grad=False)
    average = WeightAverage([p, frozen], decay=0.9)
    assert average.params == [p]  # only what training changes
    average.average[0].copy_(torch.tensor([1.0, 2.0]))
    with average.swapped():
        assert p.tolist() == [1.0, 2.0]
    assert p.tolist() == [3.0, 4.0]


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_decay_out_of_range(decay):
    with pytest.raises(ValueError, match="decay must be in"):
        WeightAverage([nn.Parameter(torch.zeros(1))], decay)


def score(epoch: int) -> dict:
    """Validation scores that make the second epoch the best."""
    return {"macro_f1": -float(epoch - 2) ** 2, "accuracy": 0.0, "log_likelihood": 0.0}


def test_fit_validates_and_keeps_the_average():
    """Validation reads the averaged weights and the kept state is the best epoch's average, not its last step."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    x, y = torch.randn(64, 2), torch.randn(64, 1)
    seen = []

    def validate():
        seen.append((model.weight.detach().clone(), model.bias.detach().clone()))
        return score(len(seen))

    batch_fn = lambda epoch: lambda idx: ((model(x[idx]) - y[idx]) ** 2).mean()  # noqa: E731
    cfg = TrainConfig(weight_average=0.9, batch_size=8, lr=0.05, patience=5, seed=0)
    best, history = _fit(model, model.parameters(), batch_fn, len(x), 4, cfg, validate, "toy", progress=False)
    assert best["epoch"] == 2 and len(history) == 4
    assert torch.equal(model.weight, seen[1][0]) and torch.equal(model.bias, seen[1][1])
    torch.manual_seed(0)  # the same run without the average validates other weights: the average is what was kept
    live = nn.Linear(2, 1)
    seen_live = []
    _fit(live, live.parameters(), lambda epoch: lambda idx: ((live(x[idx]) - y[idx]) ** 2).mean(), len(x), 4,
         TrainConfig(batch_size=8, lr=0.05, patience=5, seed=0),
         lambda: (seen_live.append(live.weight.detach().clone()), score(len(seen_live)))[1],
         "toy", progress=False)
    assert not np.allclose(seen_live[1].numpy(), seen[1][0].numpy())
