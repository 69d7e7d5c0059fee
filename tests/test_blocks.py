"""Block discovery, allocation plans and FedCyBGD's download compression (no simulation)."""

import numpy as np
import pytest
import torch
from flwr.app import RecordDict
from transformers import AutoModelForCausalLM, LlamaConfig

from fedpress.accounting import message_nbytes
from fedpress.config import RuntimeConfig
from fedpress.memory import training_memory
from fedpress.methods.fedcybgd.blocks import dropped_layers, find_blocks, without_layers
from fedpress.methods.fedcybgd.download import (
    Download,
    NodeView,
    SyncTracker,
    decode_download,
    encode_download,
    prune,
    unprune,
)
from fedpress.methods.fedcybgd.settings import CybgdConfig
from fedpress.methods.fedcybgd.turns import plan_round
from fedpress.models import TINY_MODELS, load_base_model


def deep_llama(layers: int = 8):
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=128,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_blocks_found_on_each_architecture(name):
    model = load_base_model(name, RuntimeConfig())
    layout = find_blocks(model)
    names = [n for n, _ in model.named_parameters()]
    grouped = [n for b in layout.blocks for n in b.params]
    assert sorted(grouped) == sorted(names)  # every parameter in exactly one block
    layers = layout.layer_blocks()
    assert [b.layer for b in layers] == list(range(model.config.num_hidden_layers))
    assert layout.num_layers == model.config.num_hidden_layers
    shapes = [[tuple(dict(model.named_parameters())[n].shape) for n in b.params] for b in layers]
    assert all(s == shapes[0] for s in shapes)  # identical decoder layers
    extras = [b.name for b in layout.blocks if b.layer is None]
    assert extras[0] == "embeddings" and extras[-1] == "head"
    assert all(layout.blocks[i].layer is not None for i in layout.trainable)  # frozen extras
    with_extras = find_blocks(model, include_embeddings=True)
    assert len(with_extras.trainable) == len(layout.blocks)
    embeddings = model.get_input_embeddings().weight
    assert any(dict(model.named_parameters())[n] is embeddings for n in layout.blocks[0].params)


def test_without_layers_runs_the_shorter_model():
    model = deep_llama(6).eval()
    layout = find_blocks(model)
    ids = torch.randint(0, 128, (1, 5))
    full = model(input_ids=ids).logits
    with without_layers(model, layout, [2, 3]):
        assert len(model.model.layers) == 4
        short = model(input_ids=ids).logits
    assert len(model.model.layers) == 6
    assert not torch.allclose(full, short)
    torch.testing.assert_close(model(input_ids=ids).logits, full)


def test_dropped_layers_keep_ends_and_responsible_block():
    layout = find_blocks(deep_llama(10))
    for layer in range(10):
        block = layout.block_of_layer(layer)
        dropped = dropped_layers(layout, block, 0.3)
        assert len(dropped) == round(0.3 * 9)
        assert layer not in dropped and 0 not in dropped and 9 not in dropped
    assert dropped_layers(layout, layout.block_of_layer(4), 0.0) == []


def test_allocation_orders():
    trainable = [1, 2, 3, 4]  # blocks 1..4 (0 is the embeddings)
    asc = plan_round(CybgdConfig(allocation="ascending"), trainable, [0, 1], 1, seed=0)
    assert [t.block for t in asc] == [1, 2, 3, 4]
    assert [t.partitions for t in asc] == [(0,), (1,), (0,), (1,)]  # clients cycle
    desc = plan_round(CybgdConfig(allocation="descending"), trainable, [0, 1], 2, seed=0)
    assert [t.block for t in desc] == [4, 3, 2, 1]
    assert [t.number for t in desc] == [4, 5, 6, 7]  # turns count across rounds
    many = plan_round(CybgdConfig(allocation="ascending"), trainable, list(range(6)), 1, seed=0)
    assert [t.block for t in many] == [1, 2, 3, 4, 1, 2]  # more clients than blocks
    rnd = CybgdConfig(allocation="random", turns_per_round=40)
    first = [t.block for t in plan_round(rnd, trainable, [0, 1], 1, seed=3)]
    assert first == [t.block for t in plan_round(rnd, trainable, [0, 1], 1, seed=3)]
    assert first != [t.block for t in plan_round(rnd, trainable, [0, 1], 2, seed=3)]
    assert set(first) == set(trainable)
    agg = plan_round(CybgdConfig(allocation="aggregated"), trainable, [0, 1, 2], 1, seed=0)
    assert [t.block for t in agg] == [1, 2, 3, 4]
    assert [t.partitions for t in agg] == [(0, 1), (2, 0), (1, 2), (0, 1)]


def test_prune_keeps_the_largest_entries_and_shrinks_bytes():
    tensor = torch.randn(40, 30)
    bits, values = prune(tensor, 0.75)
    assert values.size == 40 * 30 - int(0.75 * 40 * 30)
    restored = unprune(bits, values, (40, 30))
    kept = restored != 0
    assert torch.equal(restored[kept], tensor[kept])  # kept entries exact
    assert tensor[~kept].abs().max() <= tensor[kept].abs().min()
    assert bits.nbytes + values.nbytes < 0.33 * tensor.numel() * 4
    with pytest.raises(ValueError):
        unprune(bits, values[:-1], (40, 30))


def test_download_compression_and_delta_sync_bytes():
    model = deep_llama(8)
    layout = find_blocks(model)
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    shapes = {n: tuple(t.shape) for n, t in state.items()}
    responsible = layout.block_of_layer(3)

    def nbytes(tracker, node=1):
        download = tracker.plan(node, responsible, state)
        record = encode_download(download, tracker.prune_ratio)
        return message_nbytes(RecordDict({"m": record})), download, record

    full, download, _ = nbytes(SyncTracker(layout, False, 0.0, 0.0, True))
    assert set(download.tensors) == set(state)  # no compression: everything travels
    dropped, download, _ = nbytes(SyncTracker(layout, False, 0.5, 0.0, True))
    assert download.dropped and dropped < full
    assert not any(f"layers.{i}." in n for i in download.dropped for n in download.tensors)
    pruned, download, record = nbytes(SyncTracker(layout, False, 0.5, 0.75, True))
    assert pruned < 0.75 * dropped
    tensors, was_pruned = decode_download(record, shapes)
    for name in responsible.params:  # the responsible block arrives exact
        assert name not in was_pruned and torch.equal(tensors[name], state[name])
    assert was_pruned and all(".layers." in n for n in was_pruned)

    # Delta sync: a node holding the pretrained weights gets only what changed.
    tracker = SyncTracker(layout, True, 0.0, 0.0, True)
    download = tracker.plan(1, responsible, state)
    assert download.tensors == {} and download.pruned == {}  # holds it all already
    tracker.delivered(1, download)
    changed = layout.block_of_layer(6)
    tracker.changed(changed.index)
    tracker.changed(responsible.index)
    download = tracker.plan(1, responsible, state)
    assert set(download.tensors) == set(changed.params) | set(responsible.params)
    tracker.delivered(1, download)
    assert tracker.plan(1, responsible, state).tensors == {}
    assert set(tracker.plan(2, responsible, state).tensors) == set(download.tensors)
    tracker.forget(1)  # a failed turn: nothing known about node 1 any more
    assert set(tracker.plan(1, responsible, state).tensors) == set(download.tensors)

    # A pruned copy is never used as the responsible block: it travels again, exact.
    tracker = SyncTracker(layout, True, 0.0, 0.5, True)
    other = layout.block_of_layer(5)
    tracker.changed(other.index)
    first = tracker.plan(1, responsible, state)
    assert set(first.pruned) <= set(other.params) and first.sent_blocks == {other.index: False}
    tracker.delivered(1, first)
    second = tracker.plan(1, other, state)
    assert set(second.tensors) == set(other.params) and not second.pruned


def test_pruning_the_change_from_the_pretrained_weights_costs_the_same_and_loses_less():
    torch.manual_seed(0)
    pretrained = {"w": torch.randn(64, 48)}
    current = {"w": pretrained["w"] + 0.01 * torch.randn(64, 48)}  # a few turns' change
    download = Download({}, dict(current), [])
    as_weights = encode_download(download, 0.5)
    as_change = encode_download(download, 0.5, pretrained)
    nbytes = lambda record: message_nbytes(RecordDict({"m": record}))  # noqa: E731
    assert nbytes(as_change) == nbytes(as_weights)

    shapes = {"w": (64, 48)}
    weights, _ = decode_download(as_weights, shapes)
    changed, pruned = decode_download(as_change, shapes, pretrained)
    assert pruned == {"w"}
    error = lambda got: float((got["w"] - current["w"]).norm() / current["w"].norm())  # noqa: E731
    assert error(weights) > 0.2  # half of the weights gone
    assert error(changed) < 0.05 * error(weights)  # the change is 1 % of the weights
    # What was dropped is the smallest half of the change, the rest is exact.
    change = current["w"] - pretrained["w"]
    lost = (changed["w"] - current["w"]).abs() > 1e-6
    assert 0 < int(lost.sum()) <= change.numel() // 2 + 1
    assert change[lost].abs().max() <= change[~lost].abs().min()


def test_node_view_stores_whole_blocks_and_marks_pruned_ones():
    layout = find_blocks(deep_llama(4))
    view = NodeView("t")
    block = layout.block_of_layer(1)
    tensors = {n: torch.zeros(1) for n in block.params}
    view.apply(layout, tensors, {block.params[0]})
    assert view.exact == {block.index: False} and view.syncs == 1
    with pytest.raises(ValueError, match="part of block"):
        view.apply(layout, {block.params[0]: torch.zeros(1)}, set())


def test_training_memory_sees_what_the_block_allocates():
    with training_memory(torch.device("cpu")) as idle:
        pass
    with training_memory(torch.device("cpu")) as busy:
        big = torch.ones(50_000_000)  # 200 MB
        big.add_(1.0)
        del big
    assert busy["bytes"] > 150e6
    assert idle["bytes"] < 50e6
    assert np.isfinite(busy["baseline"])


def test_training_memory_without_the_kernel_peak_samples_rss(monkeypatch):
    import fedpress.memory as memory

    monkeypatch.setattr(memory, "_reset_peak_rss", lambda: False)
    with training_memory(torch.device("cpu"), interval_s=0.001) as busy:
        big = torch.ones(50_000_000)  # 200 MB, held long enough for the sampler to see
        for _ in range(20):
            big.add_(1.0)
        del big
    assert busy["bytes"] > 150e6
