"""Server optimizers: how the server steps the global state with the clients' mean change.

Adaptive Federated Optimization (Reddi et al., ICLR 2021) treats the mean change as a
pseudo-gradient with the sign flipped. `fedavg` adds lr x the mean (lr 1: plain FedAvg);
`fedavgm` (Hsu et al. 2019) keeps a momentum of the means, so a direction that several rounds
agree on grows; `fedadam` scales every coordinate by the history of its own changes, which
gives coordinates that arrive rarely (top-k) or noisily (DP) steps of a common size. The
moments are server state: the run's checkpoint carries them (`state_tensors`).
"""

from __future__ import annotations

import torch

from fedpress.config import ServerOptimizerConfig
from fedpress.errors import FedpressError


class ServerOptimizer:
    def __init__(self, settings: ServerOptimizerConfig) -> None:
        self.settings = settings
        # "m.<name>" (fedavgm, fedadam) and "v.<name>" (fedadam), float32, like the state.
        self.moments: dict[str, torch.Tensor] = {}

    def step(
        self, state: dict[str, torch.Tensor], mean: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The next global state."""
        opt = self.settings
        if opt.name == "fedavg":
            return {name: value + opt.lr * mean[name] for name, value in state.items()}
        out = {}
        for name, value in state.items():
            change = mean[name]
            first = self.moments.get(f"m.{name}", torch.zeros_like(change))
            if opt.name == "fedavgm":
                first = opt.momentum * first + change
                out[name] = value + opt.lr * first
            else:  # fedadam
                second = self.moments.get(f"v.{name}", torch.zeros_like(change))
                first = opt.beta1 * first + (1 - opt.beta1) * change
                second = opt.beta2 * second + (1 - opt.beta2) * change * change
                self.moments[f"v.{name}"] = second
                out[name] = value + opt.lr * first / (second.sqrt() + opt.eps)
            self.moments[f"m.{name}"] = first
        return out

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.moments)

    def load_state_tensors(
        self, tensors: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
    ) -> None:
        """Moments from a checkpoint, each checked against the global tensor it belongs to."""
        for key, moment in tensors.items():
            kind, _, name = key.partition(".")
            if kind not in ("m", "v") or name not in state or moment.shape != state[name].shape:
                raise FedpressError(f"checkpoint: server optimizer state '{key}' does not fit")
        self.moments = dict(tensors)
