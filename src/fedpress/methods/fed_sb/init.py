"""Fed-SB's one-off phase: the frozen A and B from the first full fine-tuning step.

1. `fedsb.init_clients` clients (drawn from the run's seed) each take the gradient of the
   pretrained model's adapted weights on `fedsb.init_examples` examples of their share,
   form Adam's first step `-fedsb.init_lr sign(G)` (LoRA-SB's update approximation) and
   send its rank-r truncated SVD as two factors, `P = U S` (out x r) and `Q = V` (in x r):
   r (in + out) numbers a module, one LoRA upload's worth, through `fedsb.one_off_codec`.
2. The server takes the exact rank-r truncated SVD of the clients' example-weighted mean of
   `P Q^T` (QR of the stacked factors, then an SVD of a small matrix): `B = U_r`,
   `A = V_r^T`, `R0 = diag(s_r) / scaling`, so that `B R0 A` is that step.
3. Every node gets A and B once (`client.install`); rounds then train and average R only.

With one init client the step is that client's own; with several, each one's step is first
cut to rank r, so their combination approximates (not equals) the truncated SVD of the mean
step. Both messages are counted in round 0 with the connection's.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field

import torch
from flwr.app import (
    ArrayRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid

from fedpress.accounting import message_nbytes
from fedpress.codecs import Codec, PayloadError
from fedpress.config import RunConfig
from fedpress.errors import FedpressError
from fedpress.flower import node, protocol
from fedpress.methods.fed_sb.settings import INIT_PHASE
from fedpress.methods.fed_sb.task import (
    ADAPTER_R,
    build_sb_task,
    freeze_a_and_b,
    frozen_shapes,
    sb_layers,
    scaling,
)
from fedpress.task import LoraTask
from fedpress.training import Encoded, answer_loss, collate

log = logging.getLogger("fedpress")

FACTORS = "fedsb-factors"
INIT_METRICS = "fedsb-init-metrics"
INIT_MESSAGE = f"{MessageType.TRAIN}.{INIT_PHASE}"


def one_off_codec(config: RunConfig) -> Codec:
    return protocol.make_codec(config.fedsb.one_off_codec, config.codec, uplink=False)


def factor_shapes(model: torch.nn.Module, rank: int) -> dict[str, tuple[int, ...]]:
    """`<layer>.P` (out x r) and `<layer>.Q` (in x r) of every adapted module."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, layer in sb_layers(model).items():
        out_features, in_features = first_step_shape(layer)
        shapes[f"{name}.P"] = (out_features, rank)
        shapes[f"{name}.Q"] = (in_features, rank)
    return shapes


def first_step_shape(layer: torch.nn.Module) -> tuple[int, int]:
    """(out, in) of the adapted weight, whatever its storage (GPT-2's Conv1D is (in, out))."""
    b = layer.lora_B["default"].weight  # out x r
    a = layer.lora_A["default"].a.weight  # r x in
    return int(b.shape[0]), int(a.shape[1])


# --------------------------------------------------------------------------- client side


def first_step(task: LoraTask, data: list[Encoded]) -> dict[str, torch.Tensor]:
    """Adam's first step `-init_lr sign(G)` of every adapted weight, G summed over batches of the
    mean answer loss, on the pretrained model (adapters off), as (out x in) float32."""
    config = task.config
    layers = sb_layers(task.model)
    weights = {name: layer.get_base_layer().weight for name, layer in layers.items()}
    grads = {name: torch.zeros(w.shape, dtype=torch.float32) for name, w in weights.items()}
    batch_size = config.train.batch_size
    for weight in weights.values():
        weight.requires_grad_(True)
    try:
        with task.model.disable_adapter():
            for start in range(0, len(data), batch_size):
                batch = collate(data[start : start + batch_size], task.pad_id, task.device)
                answer_loss(task.model, batch).backward()
                for name, weight in weights.items():
                    grads[name] += weight.grad.detach().to("cpu", torch.float32)
                    weight.grad = None
    finally:
        for weight in weights.values():
            weight.requires_grad_(False)
        freeze_a_and_b(task.model)  # leaving disable_adapter() made A and B trainable again
        task.model.zero_grad(set_to_none=True)
    steps = {}
    for name, layer in layers.items():
        grad = grads[name]
        if tuple(grad.shape) != first_step_shape(layer):  # stored (in, out): Conv1D
            grad = grad.T
        steps[name] = -config.fedsb.init_lr * torch.sign(grad)
    return steps


def truncated_factors(step: torch.Tensor, rank: int, iterations: int, seed: int) -> tuple:
    """(P = U S, Q = V) of the rank-`rank` truncated SVD of `step` (randomized, seeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u, s, v = torch.svd_lowrank(step, q=rank, niter=iterations)
    return (u * s).contiguous(), v.contiguous()


def client_first_step(msg: Message, context: Context, config: RunConfig) -> Message:
    """ClientApp handler of the one-off phase: this node's first-step factors."""
    task = build_sb_task(config)
    partition = node.partition_id(context, config)
    data = node.share(context, config, task)[: config.fedsb.init_examples]
    if not data:
        raise ValueError("this node has no training examples for Fed-SB's first step")
    started = time.perf_counter()
    factors = {}
    for name, step in first_step(task, data).items():
        p, q = truncated_factors(step, config.lora.r, config.fedsb.svd_iterations, config.seed)
        factors[f"{name}.P"], factors[f"{name}.Q"] = p, q
    shapes = factor_shapes(task.model, config.lora.r)
    record = protocol.encode_record(one_off_codec(config), factors, shapes)
    content = first_step_reply(record, len(data), time.perf_counter() - started, partition)
    return Message(content, reply_to=msg)


def first_step_reply(
    record: ArrayRecord, examples: int, seconds: float, partition: int
) -> RecordDict:
    """A first-step reply's content: the factors, and what the server checks them by."""
    metrics = {"num-examples": examples, "train-s": seconds, "partition-id": partition}
    return RecordDict({FACTORS: record, INIT_METRICS: MetricRecord(metrics)})


# --------------------------------------------------------------------------- server side


@dataclass
class FirstStep:
    """What the phase produced and cost."""

    frozen: ArrayRecord  # <layer>.A (r x in), <layer>.B (out x r) as the one-off codec sent them
    initial_r: dict[str, torch.Tensor]  # adapter name of each R -> R0
    bytes_up: list[int] = field(default_factory=list)
    bytes_down: list[int] = field(default_factory=list)
    client_train_s: float = 0.0
    clients: int = 0


def combine(factors: list[tuple[float, dict[str, torch.Tensor]]], layer: str, rank: int) -> tuple:
    """(B, sigma, A) of the rank-`rank` truncated SVD of the weighted mean of `P Q^T`."""
    total = sum(w for w, _ in factors)
    left = torch.cat([math.sqrt(w / total) * f[f"{layer}.P"].double() for w, f in factors], 1)
    right = torch.cat([math.sqrt(w / total) * f[f"{layer}.Q"].double() for w, f in factors], 1)
    q_left, r_left = torch.linalg.qr(left)
    q_right, r_right = torch.linalg.qr(right)
    u, s, vh = torch.linalg.svd(r_left @ r_right.T)
    b = (q_left @ u[:, :rank]).float()
    a = (q_right @ vh[:rank].T).T.float()
    return b.contiguous(), s[:rank].float(), a.contiguous()


def read_factors(reply: Message, task: LoraTask, codec: Codec) -> tuple[float, dict]:
    """A checked first-step reply: (examples, factors); PayloadError or ValueError otherwise."""
    if reply.has_error():
        raise ValueError(f"client failed: {reply.error.reason}")
    content = reply.content
    if FACTORS not in content.array_records or INIT_METRICS not in content.metric_records:
        raise PayloadError(f"missing '{FACTORS}' or '{INIT_METRICS}' record")
    examples = content.metric_records[INIT_METRICS].get("num-examples")
    if not isinstance(examples, int) or not 1 <= examples <= task.config.fedsb.init_examples:
        raise PayloadError(f"claims {examples!r} examples")
    shapes = factor_shapes(task.model, task.config.lora.r)
    factors = protocol.decode_record(codec, content.array_records[FACTORS], shapes)
    return float(examples), factors


def random_orthonormal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """A `rows x cols` matrix with orthonormal columns (rows >= cols) or rows."""
    tall = torch.randn(max(rows, cols), min(rows, cols), generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(tall)
    return (q if rows >= cols else q.T).float().contiguous()


def random_start(task: LoraTask) -> FirstStep:
    """`fedsb.init = "random"`: A and B random orthonormal from the run's seed, R0 = 0, so the
    model starts as the base and no client's data shaped the frozen pair."""
    config, rank = task.config, task.config.lora.r
    generator = torch.Generator().manual_seed(config.seed * 7_919 + 17)
    shapes = frozen_shapes(task.model)
    frozen: dict[str, torch.Tensor] = {}
    initial_r: dict[str, torch.Tensor] = {}
    for name in sb_layers(task.model):
        frozen[f"{name}.A"] = random_orthonormal(*shapes[f"{name}.A"], generator)
        frozen[f"{name}.B"] = random_orthonormal(*shapes[f"{name}.B"], generator)
        initial_r[f"{name}.{ADAPTER_R}"] = torch.zeros(rank, rank)
    return FirstStep(protocol.encode_record(one_off_codec(config), frozen, shapes), initial_r)


def init_clients(config: RunConfig, partitions: list[int]) -> list[int]:
    """The partitions whose first step A and B come from (drawn from the run's seed)."""
    chosen = random.Random(config.seed + 29).sample(sorted(partitions), config.fedsb.init_clients)
    return sorted(chosen)


def run_first_step(grid: Grid, task: LoraTask, partitions: dict[int, int]) -> FirstStep:
    """The one-off phase inside the ServerApp: ask the init clients, combine, return A, B, R0."""
    config = task.config
    by_partition = {p: n for n, p in partitions.items()}
    messages = [
        Message(
            content=protocol.train_content({}, 0),
            message_type=INIT_MESSAGE,
            dst_node_id=by_partition[p],
        )
        for p in init_clients(config, list(by_partition))
    ]
    result = FirstStep(ArrayRecord(), {}, bytes_down=[message_nbytes(m) for m in messages])
    codec = one_off_codec(config)
    received: list[tuple[int, float, dict]] = []
    for reply in grid.send_and_receive(messages, timeout=config.federation.round_timeout_s):
        result.bytes_up.append(message_nbytes(reply))
        node_id = reply.metadata.src_node_id
        try:
            examples, factors = read_factors(reply, task, codec)
        except (PayloadError, ValueError) as exc:
            log.warning("fed-sb first step: rejected reply from node %d: %s", node_id, exc)
            continue
        metrics = reply.content.metric_records[INIT_METRICS]
        result.client_train_s += float(metrics.get("train-s", 0.0))
        received.append((partitions.get(node_id, -1), examples, factors))
    if not received:
        raise FedpressError(
            "fed-sb: no client sent its first-step factors, so A and B cannot be computed"
        )
    received.sort(key=lambda item: item[0])  # a sum independent of arrival order
    weighted = [(examples, factors) for _, examples, factors in received]
    result.clients = len(received)
    scale = scaling(task)
    frozen: dict[str, torch.Tensor] = {}
    for name in sb_layers(task.model):
        b, sigma, a = combine(weighted, name, config.lora.r)
        frozen[f"{name}.A"], frozen[f"{name}.B"] = a, b
        result.initial_r[f"{name}.{ADAPTER_R}"] = torch.diag(sigma / scale)
    # What every node will install, and the server too: the pair through the one-off codec.
    result.frozen = protocol.encode_record(codec, frozen, frozen_shapes(task.model))
    return result
