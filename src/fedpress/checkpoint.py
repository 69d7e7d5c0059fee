"""Atomic, pickle-free, verified checkpoints: tensors plus a JSON state in one safetensors
file.

Written to a temporary file in the same folder, flushed to disk, then renamed over the old
one: a crash at any moment leaves either the previous checkpoint or the new one, never a torn
file. Loading never unpickles anything, and refuses, in one line and before anything is
written, a file that is truncated, lacks fedpress's metadata, does not match the checksum
written with it, holds a non-finite value, or does not fit the model it is loaded into.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fedpress.errors import FedpressError

CHECKPOINT = "checkpoint.safetensors"


def save_checkpoint(out_dir: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    path = Path(out_dir) / CHECKPOINT
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(tmp), metadata={"state": json.dumps(state), "sha256": digest(tensors)})
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(
    out_dir: Path, reference: Mapping[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The last complete checkpoint, or None when the run never finished a round.

    `reference`: tensors the checkpoint's must match by name, shape and dtype (those of the
    model it is loaded into); names with a "/" (a method's own state) are not compared.
    """
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        return None
    if not path.is_file():
        raise FedpressError(f"checkpoint {path} is not a regular file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as exc:
        raise FedpressError(
            f"checkpoint {path} is unreadable (truncated, or not a safetensors file): {exc}"
        ) from None
    try:
        state = json.loads(metadata["state"])
        written = metadata["sha256"]
        int(state["round"]), float(state["elapsed_s"])
    except (KeyError, TypeError, ValueError):
        raise FedpressError(
            f"checkpoint {path} lacks fedpress's metadata (its state and checksum): it was not "
            "written by this version of fedpress"
        ) from None
    if digest(tensors) != written:
        raise FedpressError(f"checkpoint {path} does not match the checksum written with it")
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise FedpressError(f"checkpoint {path} holds a non-finite value in {name}")
    if reference is not None:
        check_fits(tensors, reference, path)
    return tensors, state


def check_fits(
    tensors: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], path: Path
) -> None:
    """`tensors` (a method's own "/"-named state aside) are `reference`'s names, shapes, dtypes."""
    mine = {k: v for k, v in tensors.items() if "/" not in k}
    if set(mine) != set(reference):
        missing, extra = sorted(set(reference) - set(mine)), sorted(set(mine) - set(reference))
        raise FedpressError(
            f"checkpoint {path} does not match this model "
            f"(missing {missing[:3]}, not in the model {extra[:3]})"
        )
    for name, tensor in mine.items():
        want = reference[name]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise FedpressError(
                f"checkpoint {path} does not match this model: {name} is {tuple(tensor.shape)} "
                f"{tensor.dtype}, the model's {tuple(want.shape)} {want.dtype}"
            )


def digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    hasher = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        hasher.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return hasher.hexdigest()
