"""FedCyBGD's download: what the server sends a client for one turn, and what the client holds.

Server side, `SyncTracker` keeps a version number per block (bumped when a trained block is
written back) and, per node, which version of each block that node holds and whether exactly
or pruned. For a turn it plans the download:

- the responsible block travels exact, unless the node already holds its current version
  exactly;
- `layer_drop_ratio` of the frozen decoder layers are left out (see `blocks.dropped_layers`);
- every other block travels only if the node's copy is stale (delta sync; without it,
  everything not dropped travels every turn), frozen decoder-layer weight matrices pruned to
  their `1 - prune_ratio` largest-magnitude entries.

A pruned matrix travels as a bitmask (`np.packbits`, 1 bit per entry) plus the kept values in
fp32, so its bytes really shrink: (1 - p) * 4 + 1/8 bytes per entry instead of 4. What is pruned
is either the weights themselves (the paper) or, given a `base` (the pretrained weights, which a
delta-syncing client holds), the change since the base: the client adds the base back. Pruning
half of a trained layer's weights wrecks it; pruning half of the few turns' change it received
since pretraining loses only the smallest entries of that change, for the same bytes.

Client side, `NodeView` is what one node holds beyond the pretrained weights: the blocks it
received, with the server's sync count so that a lost view (a restarted process) is detected
instead of silently training on the wrong weights. Any failed turn makes the server forget
what that node holds (it restarts from the pretrained weights), which keeps both sides in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedpress.methods.fedcybgd.blocks import Block, BlockLayout, dropped_layers

VALUES = "::values"
MASK = "::mask"


@dataclass
class Download:
    """One turn's download plan."""

    tensors: dict[str, torch.Tensor]  # dense, exact
    pruned: dict[str, torch.Tensor]  # to be sent pruned
    dropped: list[int]  # decoder layers the client runs without
    sent_blocks: dict[int, bool] = field(default_factory=dict)  # block index -> exact


class SyncTracker:
    def __init__(
        self,
        layout: BlockLayout,
        delta_sync: bool,
        layer_drop_ratio: float,
        prune_ratio: float,
        prunable: bool,
    ) -> None:
        self.layout = layout
        self.delta_sync = delta_sync
        self.layer_drop_ratio = layer_drop_ratio
        self.prune_ratio = prune_ratio if prunable else 0.0
        self.versions = [0] * len(layout.blocks)  # 0 = pretrained
        self.held: dict[int, dict[int, tuple[int, bool]]] = {}  # node -> block -> (ver, exact)
        self.syncs: dict[int, int] = {}  # node -> downloads the node applied

    def forget(self, node: int) -> None:
        """After a failed turn nothing is known about the node's copy: start it afresh."""
        self.held.pop(node, None)
        self.syncs.pop(node, None)

    def changed(self, block: int) -> None:
        self.versions[block] += 1

    def holds(self, node: int, block: int) -> tuple[int, bool]:
        if not self.delta_sync:
            return (-1, False)  # holds nothing: everything travels
        return self.held.get(node, {}).get(block, (0, True))  # the pretrained weights

    def plan(self, node: int, responsible: Block, state: dict[str, torch.Tensor]) -> Download:
        dropped = dropped_layers(self.layout, responsible, self.layer_drop_ratio)
        download = Download({}, {}, dropped)
        for block in self.layout.blocks:
            if block.layer is not None and block.layer in dropped:
                continue
            version, exact = self.holds(node, block.index)
            current = version == self.versions[block.index]
            if block.index == responsible.index:
                if current and exact:
                    continue
                download.tensors.update({n: state[n] for n in block.params})
                download.sent_blocks[block.index] = True
                continue
            if current:
                continue
            prune = self.prune_ratio > 0 and block.layer is not None
            for name in block.params:
                target = download.pruned if prune and state[name].dim() >= 2 else download.tensors
                target[name] = state[name]
            download.sent_blocks[block.index] = not prune
        return download

    def delivered(self, node: int, download: Download) -> None:
        """The node applied the download (its turn succeeded)."""
        held = self.held.setdefault(node, {})
        for block, exact in download.sent_blocks.items():
            held[block] = (self.versions[block], exact)
        self.syncs[node] = self.syncs.get(node, 0) + 1


def kept(count: int, ratio: float) -> int:
    """How many of `count` entries pruning at `ratio` keeps."""
    return count - int(ratio * count)


def prune(tensor: torch.Tensor, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(packed bitmask, kept values in flat order) of the largest-magnitude entries."""
    flat = tensor.detach().to(torch.float32).reshape(-1)
    keep = kept(flat.numel(), ratio)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[torch.topk(flat.abs(), keep, sorted=False).indices] = True
    return np.packbits(mask.numpy()), flat[mask].numpy()


def unprune(bits: np.ndarray, values: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    count = int(np.prod(shape))
    if bits.dtype != np.uint8 or bits.shape != ((count + 7) // 8,):
        raise ValueError(f"pruned mask has {bits.dtype}{bits.shape}, expected {(count + 7) // 8}")
    mask = np.unpackbits(bits, count=count).astype(bool)
    if values.dtype != np.float32 or values.shape != (int(mask.sum()),):
        raise ValueError(f"pruned values {values.dtype}{values.shape} do not fit the mask")
    out = np.zeros(count, dtype=np.float32)
    out[mask] = values
    return torch.from_numpy(out.reshape(shape))


def encode_download(
    download: Download, ratio: float, base: dict[str, torch.Tensor] | None = None
) -> ArrayRecord:
    """The download as a record; with `base`, pruned tensors are sent as their change from it."""
    arrays = {
        name: Array(t.detach().to("cpu", torch.float32).contiguous().numpy())
        for name, t in download.tensors.items()
    }
    for name, t in download.pruned.items():
        bits, values = prune(t if base is None else t - base[name], ratio)
        arrays[name + MASK] = Array(bits)
        arrays[name + VALUES] = Array(values)
    return ArrayRecord(arrays)


def planned_download(download: Download, ratio: float) -> ArrayRecord:
    """What `encode_download` sends for this download, planned (`fedpress plan`): shapes only."""
    from fedpress.flower.planning import PlannedArray, arrays_record

    arrays = {n: PlannedArray("float32", tuple(t.shape)) for n, t in download.tensors.items()}
    for name, t in download.pruned.items():
        arrays[name + MASK] = PlannedArray("uint8", ((t.numel() + 7) // 8,))
        arrays[name + VALUES] = PlannedArray("float32", (kept(t.numel(), ratio),))
    return arrays_record(arrays)


def decode_download(
    record: ArrayRecord,
    shapes: dict[str, tuple[int, ...]],
    base: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """(tensors by name, names that arrived pruned); anything unexpected raises ValueError.

    With `base`, a pruned tensor is a change from it (see `encode_download`)."""
    tensors: dict[str, torch.Tensor] = {}
    pruned: set[str] = set()
    for key in record:
        if key.endswith(VALUES):
            continue
        if key.endswith(MASK):
            name = key[: -len(MASK)]
            if name not in shapes or name + VALUES not in record:
                raise ValueError(f"download has a pruned tensor '{name}' it should not have")
            tensors[name] = unprune(
                record[key].numpy(), record[name + VALUES].numpy(), shapes[name]
            )
            if base is not None:
                tensors[name] += base[name].to(torch.float32)
            pruned.add(name)
            continue
        if key not in shapes:
            raise ValueError(f"download has an unknown tensor '{key}'")
        array = record[key].numpy()
        if array.dtype != np.float32 or tuple(array.shape) != shapes[key]:
            raise ValueError(f"download tensor '{key}' is {array.dtype}{array.shape}")
        tensors[key] = torch.from_numpy(np.array(array, copy=True))
    for name, value in tensors.items():
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"download tensor '{name}' has NaN or Inf")
    return tensors, pruned


@dataclass
class NodeView:
    """What one node holds beyond the pretrained weights (client side)."""

    token: str
    syncs: int = 0
    blocks: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    exact: dict[int, bool] = field(default_factory=dict)

    def apply(
        self, layout: BlockLayout, tensors: dict[str, torch.Tensor], pruned: set[str]
    ) -> None:
        """Store received blocks; a block always arrives whole."""
        for block in layout.blocks:
            got = [n for n in block.params if n in tensors]
            if not got:
                continue
            if len(got) != len(block.params):
                raise ValueError(f"download has part of block {block.name}")
            self.blocks[block.index] = {n: tensors[n] for n in block.params}
            self.exact[block.index] = not any(n in pruned for n in block.params)
        self.syncs += 1
