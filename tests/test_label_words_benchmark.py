"""benchmarks/label_words.py: its two parts add up to the run's own eval loss and accuracy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import label_words  # noqa: E402 - a script in benchmarks/, not a package
from fedpress.config import load_config  # noqa: E402
from fedpress.models import load_adapter_state  # noqa: E402
from fedpress.task import build_task  # noqa: E402


def test_parts_add_up_to_the_eval_loss_and_accuracy(shared_data: Path) -> None:
    config = load_config(
        None,
        [
            "model=tiny-llama",
            f"data.source={shared_data / 'sst2' / 'dev.tsv'}",
            "data.eval_size=24",
            "eval.batch_size=5",  # a last batch of 4: rows must not leak across batches
        ],
    )
    task = build_task(config)
    torch.manual_seed(0)
    moved = {k: v + 0.5 * torch.randn_like(v) for k, v in task.initial_adapter.items()}
    load_adapter_state(task.model, moved)  # B != 0: the adapter changes the logits
    encoded = task.encode_all(task.splits.eval_examples)
    parts = label_words.split_loss(task, encoded)
    reference = task.evaluate(encoded)
    assert parts["examples"] == reference.examples == 24
    assert parts["eval_loss"] == pytest.approx(reference.loss, rel=1e-5)
    assert parts["not_label"] + parts["wrong_label"] == pytest.approx(parts["eval_loss"])
    assert parts["not_label"] > 0 and parts["wrong_label"] > 0
    assert parts["accuracy"] == reference.accuracy
    assert 0 < parts["label_mass"] < 1
