"""Atomic, pickle-free checkpoints: tensors plus a JSON state in one safetensors file.

Written to a temporary file in the same folder, flushed to disk, then renamed over the old
one: a crash at any moment leaves either the previous checkpoint or the new one, never a torn
file. Loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fedpress.errors import FedpressError

CHECKPOINT = "checkpoint.safetensors"


def save_checkpoint(out_dir: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    path = Path(out_dir) / CHECKPOINT
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        str(tmp),
        metadata={"state": json.dumps(state)},
    )
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(out_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The last complete checkpoint, or None when the run never finished a round."""
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            state = json.loads(handle.metadata()["state"])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (OSError, ValueError, KeyError) as exc:
        raise FedpressError(f"checkpoint {path} is unreadable: {exc}") from None
    return tensors, state
