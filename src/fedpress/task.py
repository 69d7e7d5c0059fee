"""The task a process works on: base model + LoRA adapter + tokenised data, built from a config.

Server, clients and the centralized reference all build it the same way from the same config,
so they agree on the base weights, the initial adapter and the data splits without shipping
them. Building is expensive (model load, tokenisation), so each process keeps the last one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from fedpress.config import RunConfig
from fedpress.data import DataSplits, build_splits
from fedpress.models import (
    adapter_state,
    add_lora,
    load_adapter_state,
    load_base_model,
    load_tokenizer,
    resolve_placement,
)
from fedpress.training import Encoded, EvalResult, TrainResult, encode, evaluate, train_steps

Shapes = dict[str, tuple[int, ...]]


@dataclass
class LoraTask:
    config: RunConfig
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    initial_adapter: dict[str, torch.Tensor]  # the seeded round-0 adapter every process agrees on
    _splits: DataSplits | None = field(default=None, repr=False)

    @property
    def splits(self) -> DataSplits:
        """The run's data splits of `data.source`, read on first use: a deployed node with its
        own data never reads the server's."""
        if self._splits is None:
            self._splits = build_splits(self.config.data, self.config.num_clients, self.config.seed)
        return self._splits

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def encode_all(self, examples) -> list[Encoded]:  # noqa: ANN001
        return [encode(e, self.tokenizer, self.config.data.max_length) for e in examples]

    def adapter(self) -> dict[str, torch.Tensor]:
        return adapter_state(self.model)

    def set_adapter(self, state: dict[str, torch.Tensor]) -> None:
        load_adapter_state(self.model, state)

    def adapter_shapes(self) -> Shapes:
        return {
            name: tuple(p.shape) for name, p in self.model.named_parameters() if p.requires_grad
        }

    def train_round(
        self, data: list[Encoded], server_round: int, steps: int, seed: int
    ) -> TrainResult:
        """`steps` optimizer steps of round `server_round`, with the run's LR schedule."""
        train = self.config.train
        return train_steps(
            self.model,
            data,
            steps=steps,
            batch_size=train.batch_size,
            lr=train.lr,
            pad_id=self.pad_id,
            seed=seed,
            schedule=train.lr_schedule,
            schedule_offset=(server_round - 1) * steps,
            schedule_total=self.config.rounds * steps,
            weight_decay=train.weight_decay,
            max_grad_norm=train.max_grad_norm,
        )

    def evaluate(self, encoded: list[Encoded]) -> EvalResult:
        return evaluate(
            self.model, encoded, batch_size=self.config.eval.batch_size, pad_id=self.pad_id
        )


_CACHE: dict[str, LoraTask] = {}
# Held while a task is built: a client may start building in the background (node.warm_up).
BUILD_LOCK = threading.RLock()


def build_task(config: RunConfig) -> LoraTask:
    """The process-wide task for this config (rebuilt when the config changes)."""
    with BUILD_LOCK:
        return _build_task(config)


def _build_task(config: RunConfig) -> LoraTask:
    key = config.to_json()
    if key not in _CACHE:
        _CACHE.clear()  # one model per process: never hold two copies
        placement = resolve_placement(config.runtime)
        tokenizer = load_tokenizer(config.model)
        model = add_lora(
            load_base_model(config.model, config.runtime),
            config.lora,
            config.train.gradient_checkpointing,
        )
        model.eval()
        _CACHE[key] = LoraTask(config, model, tokenizer, placement.device, adapter_state(model))
    return _CACHE[key]
