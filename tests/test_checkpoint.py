"""A checkpoint that is truncated, lacks its metadata, was altered, holds a non-finite value or
does not fit the model is refused in one line, and a refused resume leaves the folder as it
was."""

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from fedpress.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from fedpress.config import load_config
from fedpress.errors import FedpressError
from fedpress.runner import run_config

STATE = {"round": 3, "elapsed_s": 1.5}


def tensors() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(12.0).reshape(3, 4), "server-state/count": torch.tensor([7])}


def test_a_checkpoint_round_trips_and_fits_its_model(tmp_path):
    save_checkpoint(tmp_path, tensors(), STATE)
    loaded, state = load_checkpoint(tmp_path, reference={"w": torch.zeros(3, 4)})
    assert state == STATE and torch.equal(loaded["w"], tensors()["w"])
    assert load_checkpoint(tmp_path / "never-ran") is None


def altered(path, offset_from_end: int) -> None:
    """One byte of the tensor data (at the file's end) flipped, the header left valid."""
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def nan_checkpoint(path) -> None:
    save_checkpoint(path.parent, {"w": torch.full((3, 4), torch.nan)}, STATE)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-9]), "unreadable"),
        (lambda p: p.write_bytes(b"not a safetensors file"), "unreadable"),
        (lambda p: save_file(tensors(), str(p)), "lacks fedpress's metadata"),
        (lambda p: save_file(tensors(), str(p), metadata={"state": "{}"}), "lacks"),
        (lambda p: altered(p, 1), "does not match the checksum"),
        (nan_checkpoint, "non-finite"),
    ],
    ids=["truncated", "garbage", "no-metadata", "no-round", "altered", "nan"],
)
def test_a_spoiled_checkpoint_is_refused(tmp_path, spoil, message):
    save_checkpoint(tmp_path, tensors(), STATE)
    spoil(tmp_path / CHECKPOINT)
    with pytest.raises(FedpressError, match=message):
        load_checkpoint(tmp_path)


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    save_checkpoint(tmp_path, tensors(), STATE)
    with pytest.raises(FedpressError, match=r"w is \(3, 4\) torch.float32, the model's \(4, 3\)"):
        load_checkpoint(tmp_path, reference={"w": torch.zeros(4, 3)})
    with pytest.raises(FedpressError, match="missing \\['v'\\]"):
        load_checkpoint(tmp_path, reference={"w": torch.zeros(3, 4), "v": torch.zeros(1)})


def folder_digest(folder) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()
    }


@pytest.mark.slow  # a real (centralized) training run
def test_a_refused_resume_leaves_the_run_folder_as_it_was(tmp_path):
    """The issue's case: a run whose adapter became all NaN "finished" with exit 0 before."""
    overrides = ["method=centralized", "model=tiny-llama", "rounds=1", "train.local_steps=1"]
    config = load_config(None, [*overrides, "data.builtin_size=120", "data.eval_size=16"])
    out = tmp_path / "run"
    run_config(config, out)
    loaded, state = load_checkpoint(out)
    save_checkpoint(out, {k: torch.full_like(v, torch.nan) for k, v in loaded.items()}, state)
    before = folder_digest(out)
    with pytest.raises(FedpressError, match="non-finite"):
        run_config(load_config(out / "config.toml"), out, resume=True)
    assert folder_digest(out) == before
