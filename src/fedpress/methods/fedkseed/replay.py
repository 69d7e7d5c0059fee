"""What every FedKSeed process shares: the model, the direction z of a seed, the replay of
the aggregated scalars, and the zeroth-order round.

The global model after round t is the pretrained model with rounds 1..t applied in order,
each as `w += -lr * scalar * z(seed)` over its seeds in increasing order. Every process
applies exactly these float32 operations in this order, so the server, every node and a
restarted node hold the same bits (`tests/test_fedkseed.py` checks it on CPU).
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from fedpress.config import RunConfig
from fedpress.models import load_base_model, load_tokenizer, resolve_placement
from fedpress.task import BUILD_LOCK, LoraTask
from fedpress.training import Encoded, TrainResult, answer_loss, batch_rows, collate


class KSeedTask(LoraTask):
    """The full model, nothing trainable by autograd. Its weights are the replay of every
    round applied so far (`applied`): the server's global state is the record of the
    scalars, not weights to copy in, so `set_adapter` leaves the model as it is."""

    applied: int = 0

    def set_adapter(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def parameters(self) -> list[torch.Tensor]:
        """Every weight once (tied ones once), in the fixed order z is generated in."""
        return [p for _, p in self.model.named_parameters()]


_CACHE: dict[str, KSeedTask] = {}
_REPLAY_LOCK = threading.Lock()


def build_kseed_task(config: RunConfig) -> KSeedTask:
    """The process's pretrained model for this config (reloaded when a replay must restart)."""
    with BUILD_LOCK:
        key = config.to_json()
        if key not in _CACHE:
            _CACHE.clear()  # one model per process
            placement = resolve_placement(config.runtime)
            model = load_base_model(config.model, config.runtime)
            model.config.use_cache = False
            model.requires_grad_(False)
            model.eval()
            tokenizer = load_tokenizer(config.model)
            _CACHE[key] = KSeedTask(config, model, tokenizer, placement.device, {})
        return _CACHE[key]


def z_seed(config: RunConfig, index: int) -> int:
    """The generator seed of pool entry `index` (the pool is derived from the run's seed)."""
    return config.seed * 1_000_003 + 7_919 * index + 1


def add_direction(params: list[torch.Tensor], seed: int, scale: float) -> None:
    """`w += scale * z` in place, z drawn parameter by parameter from one generator: never
    more than one parameter's z in memory."""
    generator = torch.Generator().manual_seed(seed)
    for param in params:
        z = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        param.add_(z.to(param.device, param.dtype), alpha=scale)


def _raw_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU uint8 view of `tensor`'s storage (no copy for a contiguous CPU tensor)."""
    return tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8)


@contextmanager
def kept_on_disk(params: list[torch.Tensor]) -> Iterator[None]:
    """The weights as they are now, written to a temporary file and read back into the same
    tensors on exit: a client returns to the global weights bit for bit (the in-place
    round trips leave float32 rounding) without holding a second copy of the model in memory.
    Raw bytes in parameter order, never a pickle; one parameter at a time passes through
    memory for a tensor that is not a contiguous CPU tensor."""
    with tempfile.TemporaryFile(prefix="fedkseed-global-") as handle:
        for param in params:
            handle.write(memoryview(_raw_bytes(param).numpy()))
        try:
            yield
        finally:
            handle.seek(0)
            with torch.no_grad():
                for param in params:
                    in_place = param.device.type == "cpu" and param.is_contiguous()
                    size = param.numel() * param.element_size()
                    target = _raw_bytes(param) if in_place else torch.empty(size, dtype=torch.uint8)
                    if handle.readinto(memoryview(target.numpy())) != target.numel():
                        raise OSError("the kept global weights were cut short on disk")
                    if not in_place:
                        param.copy_(target.view(param.dtype).reshape(param.shape))


@dataclass
class History:
    """The aggregated scalars of every round: round i's seeds (increasing) and values are
    `seeds[start_i:end_i]`, `values[start_i:end_i]`, with `counts[i]` entries."""

    seeds: torch.Tensor  # int64
    values: torch.Tensor  # float32
    counts: torch.Tensor  # int64, one per round

    @classmethod
    def empty(cls) -> History:
        return cls(
            torch.zeros(0, dtype=torch.int64), torch.zeros(0), torch.zeros(0, dtype=torch.int64)
        )

    @property
    def rounds(self) -> int:
        return int(self.counts.numel())

    def round(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = int(self.counts[:index].sum())
        end = start + int(self.counts[index])
        return self.seeds[start:end], self.values[start:end]

    def since(self, first: int) -> History:
        start = int(self.counts[:first].sum())
        return History(self.seeds[start:], self.values[start:], self.counts[first:])

    def extended(self, more: History) -> History:
        return History(
            torch.cat([self.seeds, more.seeds]),
            torch.cat([self.values, more.values]),
            torch.cat([self.counts, more.counts]),
        )

    def truncated(self, rounds: int) -> History:
        end = int(self.counts[:rounds].sum())
        return History(self.seeds[:end], self.values[:end], self.counts[:rounds])

    def as_arrays(self) -> dict[str, torch.Tensor]:
        return {"seeds": self.seeds, "values": self.values, "counts": self.counts}


def catch_up(task: KSeedTask, history: History) -> KSeedTask:
    """`task`'s model brought to the global model of `history`: the rounds it has not applied,
    in order; a model ahead of `history` (another run in this process) is reloaded first."""
    with _REPLAY_LOCK:
        if task.applied > history.rounds:
            _CACHE.clear()
            task = build_kseed_task(task.config)
        config, params = task.config, task.parameters()
        with torch.no_grad():
            for index in range(task.applied, history.rounds):
                seeds, values = history.round(index)
                for seed, value in zip(seeds.tolist(), values.tolist(), strict=True):
                    add_direction(params, z_seed(config, seed), -config.train.lr * value)
                task.applied = index + 1
        return task


def pro_probabilities(config: RunConfig, history: History) -> torch.Tensor:
    """FedKSeed-Pro's sampling: each seed's mean |scalar| over its rounds (clipped; a seed
    counts one zero before its first use, as in the reference), min-max normalised, softmax.
    From the aggregated history every node holds, so it costs no bytes."""
    k = config.fedkseed.seeds
    clipped = history.values.abs().clamp(max=config.fedkseed.pro_clip).double()
    total = torch.zeros(k, dtype=torch.float64).index_add_(0, history.seeds, clipped)
    used = torch.zeros(k, dtype=torch.float64).index_add_(
        0, history.seeds, torch.ones_like(clipped)
    )
    score = total / (used + 1)
    spread = score.max() - score.min()
    return torch.softmax((score - score.min()) / (spread + 1e-10), 0).float()


@dataclass
class ZerothOrderRound:
    sums: dict[int, float]  # seed index -> the sum of this client's scalars for it
    result: TrainResult
    forward_passes: int
    skipped_steps: int


def seed_draws(pool: int, steps: int, seed: int, probabilities: torch.Tensor | None) -> list[int]:
    """The pool entries a turn of `steps` steps draws, one a step: uniformly, or (Pro) by
    `probabilities`, from a generator seeded with the turn's seed."""
    draw = torch.Generator().manual_seed(seed)
    if probabilities is None:
        return [int(torch.randint(pool, (1,), generator=draw)) for _ in range(steps)]
    return [int(torch.multinomial(probabilities, 1, generator=draw)) for _ in range(steps)]


def zeroth_order_round(
    task: KSeedTask, data: list[Encoded], steps: int, seed: int, probabilities: torch.Tensor | None
) -> ZerothOrderRound:
    """`steps` two-point zeroth-order steps on batches of `data`; the weights move in place."""
    config = task.config
    eps, lr = config.fedkseed.eps, config.train.lr
    draws = seed_draws(config.fedkseed.seeds, steps, seed, probabilities)
    params = task.parameters()
    sums: dict[int, float] = {}
    losses: list[float] = []
    skipped = seen = 0
    start = time.perf_counter()
    with torch.no_grad():
        for rows, index in zip(
            batch_rows(len(data), config.train.batch_size, steps, seed), draws, strict=True
        ):
            direction = z_seed(config, index)
            batch = collate([data[i] for i in rows], task.pad_id, task.device)
            add_direction(params, direction, eps)
            plus = float(answer_loss(task.model, batch))
            add_direction(params, direction, -2 * eps)
            minus = float(answer_loss(task.model, batch))
            g = (plus - minus) / (2 * eps)
            if not math.isfinite(g):  # a diverged loss: restore, no step, no scalar
                add_direction(params, direction, eps)
                skipped += 1
                continue
            add_direction(params, direction, eps - lr * g)  # restore and step in one pass
            sums[index] = sums.get(index, 0.0) + g
            losses.append((plus + minus) / 2)
            seen += len(rows)
    mean_loss = sum(losses) / len(losses) if losses else float("nan")
    result = TrainResult(mean_loss, steps, seen, time.perf_counter() - start)
    return ZerothOrderRound(sums, result, 2 * steps, skipped)
