"""Blocks of a decoder model: the units FedCyBGD trains one at a time.

A block is one decoder layer (all parameters under `<layers>.<i>.`); the parameters outside
the layers form two extra blocks, `embeddings` (everything before the first layer: token and
position embeddings) and `head` (everything after the last: final norm, untied LM head). The
decoder layers are found without per-architecture tables (`models.find_decoder_layers`).
Names are those of `named_parameters()`, so tied weights appear once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from fedpress.errors import FedpressError
from fedpress.models import find_decoder_layers


@dataclass(frozen=True)
class Block:
    index: int  # position in BlockLayout.blocks
    name: str  # "layers.3", "embeddings", "head"
    params: tuple[str, ...]  # parameter names, in model order
    layer: int | None  # decoder layer index, None for the extra blocks


@dataclass(frozen=True)
class BlockLayout:
    layers_path: str  # module path of the decoder layers, e.g. "model.layers"
    num_layers: int
    blocks: tuple[Block, ...]  # every block in model order: embeddings?, layers..., head?
    trainable: tuple[int, ...]  # indices into `blocks` of the blocks that take turns

    def block_of_layer(self, layer: int) -> Block:
        return next(b for b in self.blocks if b.layer == layer)

    def layer_blocks(self) -> list[Block]:
        return [b for b in self.blocks if b.layer is not None]


def find_blocks(
    model: torch.nn.Module,
    names: Iterable[str] | None = None,
    include_embeddings: bool = False,
) -> BlockLayout:
    """Group `names` (default: every parameter) into blocks; see the module docstring.

    `include_embeddings` makes the extra blocks take turns too; otherwise only decoder layers
    are trained and the extras stay frozen.
    """
    path, layers = find_decoder_layers(model)
    order = [name for name, _ in model.named_parameters()]
    wanted = set(order if names is None else names)
    unknown = wanted - set(order)
    if unknown:
        raise ValueError(f"not parameters of the model: {sorted(unknown)[:3]}")
    pattern = re.compile(rf"(?:^|\.){re.escape(path)}\.(\d+)\.")
    per_layer: list[list[str]] = [[] for _ in layers]
    before: list[str] = []
    after: list[str] = []
    seen_layer = False
    for name in order:
        match = pattern.search(name)
        if match:
            seen_layer = True
            if name in wanted:
                per_layer[int(match.group(1))].append(name)
        elif name in wanted:
            (after if seen_layer else before).append(name)
    groups: list[tuple[str, list[str], int | None]] = []
    if before:
        groups.append(("embeddings", before, None))
    groups += [(f"layers.{i}", params, i) for i, params in enumerate(per_layer) if params]
    if after:
        groups.append(("head", after, None))
    blocks = tuple(
        Block(index, name, tuple(params), layer)
        for index, (name, params, layer) in enumerate(groups)
    )
    trainable = tuple(b.index for b in blocks if include_embeddings or b.layer is not None)
    if not trainable:
        raise FedpressError("the model has no trainable blocks")
    return BlockLayout(path, len(layers), blocks, trainable)


@contextmanager
def without_layers(model: torch.nn.Module, layout: BlockLayout, dropped: Sequence[int]) -> Iterator:
    """Run the model with some decoder layers left out (the client never received them)."""
    if not dropped:
        yield
        return
    parent_path, _, attr = layout.layers_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    original = getattr(parent, attr)
    skip = set(dropped)
    kept = torch.nn.ModuleList([m for i, m in enumerate(original) if i not in skip])
    setattr(parent, attr, kept)
    try:
        yield
    finally:
        setattr(parent, attr, original)


def dropped_layers(layout: BlockLayout, responsible: Block, ratio: float) -> list[int]:
    """Decoder layers left out of a download: `ratio` of the frozen layers, evenly spaced.

    The first and last layers and the responsible block's layer are always kept (the ends
    map embeddings in and out of the residual stream; dropping them hurts most).
    """
    if ratio <= 0:
        return []
    frozen = [i for i in range(layout.num_layers) if i != responsible.layer]
    candidates = [i for i in frozen if 0 < i < layout.num_layers - 1]
    count = min(len(candidates), round(ratio * len(frozen)))
    if count <= 0:
        return []
    return sorted({candidates[int((j + 0.5) * len(candidates) / count)] for j in range(count)})
