"""CG-FedLLM: layout, autoencoder rates, the autoencoder codec against hostile latents through
the real server path, TGAP + FAF end to end in the Flower simulation, and client-level DP."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp
from safetensors.torch import load_file

from conftest import ONE_CORE
from fedpress.autoencoders import ARCHS, Layout, build_autoencoder
from fedpress.autoencoders.training import save_autoencoder
from fedpress.codecs import ErrorFeedback, PayloadError, pack_payload, unpack_payload
from fedpress.codecs.autoencoder import AutoencoderCodec
from fedpress.config import load_config
from fedpress.errors import FedpressError
from fedpress.flower import client_app as honest
from fedpress.flower import protocol
from fedpress.flower.simulation import simulate
from fedpress.privacy import (
    PrivateAggregator,
    calibrate_noise,
    compute_epsilon,
    update_norm,
)
from fedpress.task import build_task
from plan_check import assert_plan_matches

TINY = ["tiny-llama", "tiny-gpt2", "tiny-qwen2"]
FAST_AE = [
    "autoencoder.snapshots=3",
    "autoencoder.snapshot_steps=1",
    "autoencoder.train_steps=4",
    "autoencoder.batch_size=2",
    "autoencoder.crop=64",
]


def _shapes(model: str) -> dict[str, tuple[int, ...]]:
    return build_task(load_config(None, [f"model={model}"])).adapter_shapes()


@pytest.mark.parametrize("model", TINY)
def test_layout_round_trip_on_real_adapter_shapes(model):
    shapes = _shapes(model)
    layout = Layout(shapes)
    assert layout.height % 64 == 0 and layout.width % 64 == 0
    assert (
        layout.height * layout.width >= layout.numel == sum(math.prod(s) for s in shapes.values())
    )
    update = {name: torch.randn(shape) * (i + 1) for i, (name, shape) in enumerate(shapes.items())}
    scales = torch.stack([update[n].abs().max() for n in layout.names])  # no clamping
    image = layout.to_image(update, scales)
    assert image.abs().max() <= 1.0
    used = torch.cat(list(layout.positions.values()))
    assert used.unique().numel() == layout.numel  # every number has its own cell
    unused = torch.ones(image.numel(), dtype=torch.bool)
    unused[used] = False
    assert torch.all(image.reshape(-1)[unused] == 0)  # padding is zeros
    back = layout.from_image(image, scales)
    for name in shapes:
        torch.testing.assert_close(back[name], update[name], rtol=1e-6, atol=1e-6)


def test_layout_of_uneven_shapes_pads_to_multiples_of_64():
    shapes = {"a.lora_A.weight": (3, 70), "a.lora_B.weight": (50, 3), "bias": (7,)}
    layout = Layout(shapes)
    assert (layout.height, layout.width) == (64, 128)  # longest vector 70 -> W = 128
    update = {n: torch.randn(s) for n, s in shapes.items()}
    scales = torch.stack([update[n].abs().max() for n in layout.names])
    back = layout.from_image(layout.to_image(update, scales), scales)
    for name in shapes:
        torch.testing.assert_close(back[name], update[name])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("compression", [16, 64, 256])
def test_latent_holds_exactly_the_configured_rate(arch, compression):
    if arch == "rowlinear" and 192 % compression:
        with pytest.raises(ValueError, match="rowlinear"):
            build_autoencoder(arch, compression, width=192)
        return
    model = build_autoencoder(arch, compression, width=192).eval()
    x = torch.rand(1, 1, 128, 192) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        y = model.decode(z)
    assert tuple(z.shape[1:]) == model.latent_shape(128, 192)
    assert z.numel() * compression == x.numel()
    assert y.numel() == x.numel() and float(y.abs().max()) <= 1.0  # tanh output


def _codec(shapes, arch="resnet3") -> AutoencoderCodec:
    torch.manual_seed(0)
    return AutoencoderCodec(build_autoencoder(arch, 64), shapes, input_gain=3.0)


@pytest.mark.parametrize("attack", ["nan", "inf-scale", "huge-latent", "truncated", "oversized"])
def test_decode_record_rejects_bad_latents(attack):
    shapes = _shapes("tiny-llama")
    codec = _codec(shapes)
    update = {name: torch.randn(shape) * 1e-3 for name, shape in shapes.items()}
    packed = protocol.encode_record(codec, update, shapes)[protocol.PACKED].numpy().copy()
    payload = unpack_payload(codec, packed, shapes)
    if attack == "nan":
        payload["latent"][0, 0, 0] = np.nan
    elif attack == "inf-scale":
        payload["scales"][0] = np.inf
    elif attack == "huge-latent":
        payload["latent"][0, 0, 0] = 6e4
    if attack in ("nan", "inf-scale", "huge-latent"):
        packed = pack_payload(codec, payload, shapes)
    elif attack == "truncated":
        packed = packed[:-2]
    else:
        packed = np.concatenate([packed, np.zeros(4 * packed.size, np.uint8)])
    with pytest.raises(PayloadError):
        protocol.decode_record(codec, ArrayRecord({protocol.PACKED: Array(packed)}), shapes)


# --------------------------------------------------------------------------- real server path

ATTACKS = {1: "nan", 2: "wrong-shape", 3: "huge-scale", 4: "oversized"}
evil_app = ClientApp()
evil_app.query()(honest.query)


@evil_app.train()
def evil_train(msg: Message, context: Context) -> Message:
    attack = ATTACKS.get(int(context.node_config["partition-id"]))
    reply = honest.train(msg, context)
    if attack is None:
        return reply
    packed = reply.content[protocol.UPDATE][protocol.PACKED].numpy().copy()
    if attack == "nan":
        packed[:2] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)  # first latent value
    elif attack == "wrong-shape":
        packed = packed[: packed.size // 2]
    elif attack == "huge-scale":
        packed[-4:] = np.frombuffer(np.float32(1e30).tobytes(), np.uint8)  # last scale
    else:
        packed = np.concatenate([packed, packed])
    reply.content[protocol.UPDATE] = ArrayRecord({protocol.PACKED: Array(packed)})
    return reply


def _tiny_args(*extra: str) -> list[str]:
    return [
        "model=tiny-llama",
        "method=cg-fedllm",
        "train.local_steps=2",
        "data.builtin_size=300",
        *ONE_CORE,
        *FAST_AE,
        *extra,
    ]


def _tiny(*extra: str):
    return load_config(None, _tiny_args(*extra))


@pytest.mark.slow  # a real Flower simulation (or run)
def test_hostile_latents_never_touch_the_global_adapter(tmp_path):
    config = _tiny("num_clients=5", "rounds=1", "autoencoder.error_feedback=off")
    shapes = build_task(config).adapter_shapes()
    codec = _codec(shapes)
    save_autoencoder(
        tmp_path / "ae",
        codec.model,
        {
            "arch": "resnet3",
            "compression": 64,
            "latent_dtype": "fp16",
            "input_gain": 3.0,
            "shapes": {n: list(s) for n, s in shapes.items()},
            "history": [{"step": 1, "train_mse": 1.0, "val_mse": 1.0}],
            "validation": {"cosine": 0.0, "snr_db": 0.0},
        },
    )
    config.autoencoder.checkpoint = str(tmp_path / "ae")
    out = tmp_path / "run"
    summary = simulate(config, out, client_app=evil_app)
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds[1]["clients_ok"] == 1 and rounds[1]["clients_failed"] == 4
    assert summary["ae_bytes_down"] > 0 and summary["tgap_bytes_up"] == 0

    # The global adapter moved by exactly the decoded honest update (partition 0).
    task = build_task(config)
    task.set_adapter(task.initial_adapter)
    task.train_round(
        task.encode_all(task.splits.client_shares[0]),
        1,
        steps=2,
        seed=config.seed * 1_000_003 + 1_009,
    )
    change = {n: task.adapter()[n] - task.initial_adapter[n] for n in shapes}
    decoded = codec.decode(codec.encode(change), shapes)
    final = load_file(out / "adapter.safetensors")
    for name in shapes:
        torch.testing.assert_close(
            final[name], task.initial_adapter[name] + decoded[name], rtol=1e-4, atol=1e-6
        )


@pytest.mark.slow  # a real Flower simulation (or run)
def test_cg_fedllm_runs_tgap_then_faf_and_writes_everything(tmp_path):
    # Round 2 adapts the autoencoder: clients send fp16 updates, the server fine-tunes and
    # re-ships it (the frozen paper setting is the default, adapt_every = 0).
    config = _tiny(
        "num_clients=2", "rounds=2", "autoencoder.adapt_every=2", "autoencoder.adapt_steps=2"
    )
    out = tmp_path / "run"
    summary = simulate(config, out)
    assert_plan_matches(out)  # TGAP, the shipped and re-shipped autoencoder, latents, fp16
    for name in ("summary.json", "metrics.jsonl", "curves.png", "adapter.safetensors"):
        assert (out / name).is_file()
    for name in (
        "autoencoder.safetensors",
        "autoencoder.json",
        "tgap_curve.png",
        "snapshots.safetensors",
    ):
        assert (out / "autoencoder" / name).is_file()
    meta = json.loads((out / "autoencoder" / "autoencoder.json").read_text())
    assert summary["tgap_snapshots"] == 2 * 3
    assert set(meta["validation"]) >= {"mse", "cosine", "snr", "snr_db"}
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # TGAP is round 0's traffic (two snapshot replies, counted from the Flower messages),
    # with the two connection replies (which partition each node holds).
    assert summary["tgap_bytes_up"] > 3 * 7168 * 2
    assert len(rounds[0]["bytes_up_per_client"]) == 4
    assert rounds[0]["bytes_up"] - summary["tgap_bytes_up"] == sum(
        sorted(rounds[0]["bytes_up_per_client"])[:2]
    )
    assert summary["ae_bytes_down"] > 0 and summary["ae_arch"] == "resnet3"
    assert summary["compression_ratio"] == pytest.approx(7168 / 128)  # padding costs
    # The latent is far smaller than the update: each FAF reply < 1/10 of an fp32 update.
    assert max(rounds[1]["bytes_up_per_client"]) < 7168 * 4 / 10
    assert "dp_epsilon" not in summary
    assert summary["ae_versions"] == 2  # TGAP's, then the one adapted after round 2
    assert min(rounds[2]["bytes_up_per_client"]) > 7168 * 2  # fp16 updates in the adapt round
    assert (
        json.loads((out / "autoencoder" / "autoencoder.json").read_text())["adapted_at_round"] == 2
    )

    # Another architecture trains on the snapshots this run recorded, with no new messages.
    from fedpress.methods.cg_fedllm.server import CgFedLLMServer

    other = _tiny("num_clients=2", "autoencoder.arch=uformer0", f"autoencoder.snapshots_from={out}")
    task = build_task(other)
    strategy = CgFedLLMServer(other, task, tmp_path / "second")
    strategy.prepare(None, resume=False)
    extra = strategy.summary_extra()
    assert extra["ae_arch"] == "uformer0" and not extra["tgap_in_run"]
    assert extra["tgap_snapshots"] == summary["tgap_snapshots"]
    assert extra["tgap_bytes_up"] == summary["tgap_bytes_up"]  # the collection's, not new traffic
    assert 0 not in strategy.stats  # no round-0 traffic in this run
    retrained = json.loads((tmp_path / "second" / "autoencoder" / "autoencoder.json").read_text())
    assert retrained["snapshots_from"] == str(out / "autoencoder" / "snapshots.safetensors")
    with pytest.raises(FedpressError, match="no TGAP snapshots"):
        missing = _tiny("num_clients=2", f"autoencoder.snapshots_from={tmp_path / 'nowhere'}")
        CgFedLLMServer(missing, task, tmp_path / "third").prepare(None, resume=False)


def test_client_codec_is_the_shared_error_feedback_wrapper():
    from flwr.app import ConfigRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedpress.methods.cg_fedllm.client import client_uplink_codec
    from fedpress.methods.cg_fedllm.server import CgFedLLMServer

    config = _tiny("num_clients=2", "rounds=1")
    task = build_task(config)
    shapes = task.adapter_shapes()
    strategy = CgFedLLMServer(config, task, Path("."))
    meta = {"arch": "resnet3", "compression": 64, "latent_dtype": "fp16", "input_gain": 3.0}
    strategy.install(_codec(shapes).model, meta)
    records = strategy.downlink_record(7, protocol.tensors_to_record(task.initial_adapter))
    content = RecordDict({**records, protocol.INSTRUCTIONS: ConfigRecord({})})
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    try:
        msg = Message(content=content, message_type="train", dst_node_id=7)
    finally:
        TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = None
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    codec = client_uplink_codec(msg, context, config, shapes)
    assert isinstance(codec, ErrorFeedback) and isinstance(codec.inner, AutoencoderCodec)
    assert strategy.ae_bytes_down > 4 * sum(p.numel() for p in codec.inner.model.parameters())
    # The next message to the same node carries no weights again.
    again = strategy.downlink_record(7, protocol.tensors_to_record(task.initial_adapter))
    assert "ae-weights" not in again


# --------------------------------------------------------------------------- privacy


def test_epsilon_matches_the_library_and_moves_the_right_way():
    # Known RDP values of dp-accounting for the (non-subsampled) Gaussian, delta 1e-5.
    assert compute_epsilon(1.0, 1.0, 3, 1e-5, "rdp") == pytest.approx(9.00996, rel=1e-4)
    eps = [compute_epsilon(s, 0.5, 5, 1e-5, "rdp") for s in (0.8, 1.0, 2.0, 4.0)]
    assert eps == sorted(eps, reverse=True)
    by_rounds = [compute_epsilon(1.0, 0.5, t, 1e-5, "rdp") for t in (1, 5, 20)]
    assert by_rounds == sorted(by_rounds)
    assert compute_epsilon(1.0, 1.0, 3, 1e-5, "pld") <= compute_epsilon(1.0, 1.0, 3, 1e-5, "rdp")
    sigma = calibrate_noise(8.0, 1.0, 3, 1e-5, "rdp")
    assert compute_epsilon(sigma, 1.0, 3, 1e-5, "rdp") <= 8.0
    assert compute_epsilon(sigma * 0.99, 1.0, 3, 1e-5, "rdp") > 8.0


def test_clipping_bound_holds_after_decoding_and_noise_is_applied():
    config = load_config(
        None,
        [
            "num_clients=4",
            "privacy.enabled=true",
            "privacy.clip_norm=0.5",
            "privacy.noise_multiplier=1e-9",
        ],
    )
    shapes = _shapes("tiny-llama")
    codec = _codec(shapes)
    update = {n: torch.randn(s) for n, s in shapes.items()}
    payload = codec.encode(update)
    payload["scales"] = payload["scales"] * 1e3  # a client that claims a huge update
    decoded = codec.decode(payload, shapes)
    assert update_norm(decoded) > 10 * 0.5  # the decoder's output is not bounded by the client
    aggregator = PrivateAggregator(config)
    mean = aggregator.aggregate([decoded], 1, shapes)
    assert update_norm(mean) <= 0.5 / 4 * (1 + 1e-6)  # sensitivity C / K holds
    noisy = load_config(
        None,
        [
            "num_clients=2",
            "privacy.enabled=true",
            "privacy.clip_norm=1.0",
            "privacy.noise_multiplier=1.0",
        ],
    )
    zeros = {"w": torch.zeros(200_000)}
    out = PrivateAggregator(noisy).aggregate([zeros, zeros], 1, {"w": (200_000,)})["w"]
    assert float(out.std()) == pytest.approx(1.0 * 1.0 / 2, rel=0.02)
    # A round Poisson sampling drew nobody for releases the same noise, on zeros.
    alone = PrivateAggregator(noisy).aggregate([], 1, {"w": (200_000,)})["w"]
    assert float(alone.std()) == pytest.approx(1.0 * 1.0 / 2, rel=0.02)
    assert PrivateAggregator(noisy).summary(["rounds"])["dp_epsilon"] == 0.0  # nothing released yet


def test_privacy_config_errors_are_one_line():
    with pytest.raises(FedpressError, match="no guarantee"):
        load_config(None, ["privacy.enabled=true", "privacy.noise_multiplier=0"])
    with pytest.raises(FedpressError, match="compression"):
        load_config(None, ["autoencoder.compression=48"])


@pytest.mark.slow  # a real Flower simulation (or run)
def test_tgap_and_ae_analyze_commands(tmp_path, capsys):
    from fedpress.cli import main

    tiny = [f"--set={item}" for item in _tiny_args("num_clients=2")]
    assert main(["tgap", *tiny, "--out", str(tmp_path / "tgap")]) == 0
    folder = tmp_path / "tgap" / "autoencoder"
    assert "validation MSE" in capsys.readouterr().out
    assert main(["ae-analyze", str(folder), "--sigmas", "5e-5,5e-1"]) == 0
    report = json.loads((folder / "analysis.json").read_text())
    assert [row["sigma"] for row in report["noise"]] == [5e-5, 5e-1]
    # TGAP is CG-FedLLM's phase (which always has a D1 share, 0.3 unless set): asked of
    # another method it is a one-line user error, exit 2.
    assert main(["tgap", "--set=model=tiny-llama", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "cg-fedllm" in err and len(err.strip().splitlines()) == 1
