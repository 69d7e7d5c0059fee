"""FedCyBGD: full-parameter federated tuning, one block per client turn, in a cycle.

Within a round the server walks the turns of the allocation plan (`plan_round`). For each
turn it sends one client (several for `aggregated`, FedBAvg) the current model, compressed by
`block_sync` (responsible block exact, frozen rest layer-dropped, pruned and delta-synced),
and the block index. The client trains only that block (everything else has
`requires_grad=False`, so gradients and optimizer state exist for that block only; a fresh
optimizer per turn; an fp32 master copy of the block when the model runs in lower precision)
and replies with the block's change, through the uplink codec. The server validates the reply
and writes the block back before the next turn. A failed or hostile reply costs only its turn.

`FedCyBGD` is the Flower strategy (one `configure_train`/`aggregate_train` pair per turn);
`run_fedcybgd` is the recipe the ServerApp runs; `client_train` is the ClientApp side.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from tqdm import tqdm

from fedpress.accounting import message_nbytes, stopwatch
from fedpress.block_sync import NodeView, SyncTracker, decode_download, encode_download
from fedpress.blocks import Block, BlockLayout, find_blocks, without_layers
from fedpress.checkpoint import load_checkpoint, save_checkpoint
from fedpress.codecs import PayloadError
from fedpress.config import CybgdConfig, RunConfig
from fedpress.errors import FedpressError
from fedpress.flower import protocol
from fedpress.memory import training_memory
from fedpress.methods.lora_fedavg import (
    InvalidReply,
    RoundStats,
    discover_partitions,
    round_record,
)
from fedpress.models import load_adapter_state
from fedpress.reporting import RunRecorder
from fedpress.task import LoraTask, build_task
from fedpress.training import Encoded, TrainResult, train_steps

log = logging.getLogger("fedpress")

MODEL = "cybgd-model"  # server -> client: the (compressed) model for this turn
BLOCK, TURN, DROPPED, SYNCS, TOKEN = "block", "turn", "dropped", "syncs", "token"
METRIC_KEYS = ("num-examples", "train-loss", "train-s", "codec-s", "peak-mem-bytes")


# --------------------------------------------------------------------------- the task


def cybgd_task(config: RunConfig) -> LoraTask:
    """The full model (every parameter synced) or, in PEFT mode, the LoRA task."""
    if config.cybgd.peft:
        return build_task(config)
    from fedpress.full_task import build_full_task

    return build_full_task(config)


def pruning_base(
    config: RunConfig, pretrained: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor] | None:
    """What pruned downloads are a change from (cybgd.prune_target = "delta"), or None when the
    weights themselves are pruned; server and client both ask here, so they agree."""
    return pretrained if config.cybgd.prune_target == "delta" else None


_LAYOUTS: dict[str, BlockLayout] = {}


def task_layout(task: LoraTask) -> BlockLayout:
    key = task.config.to_json()
    if key not in _LAYOUTS:
        _LAYOUTS.clear()
        _LAYOUTS[key] = find_blocks(
            task.model, task.initial_adapter, task.config.cybgd.include_embeddings
        )
    return _LAYOUTS[key]


# --------------------------------------------------------------------------- allocation


@dataclass(frozen=True)
class Turn:
    number: int  # counts turns over the whole run (seeds, LR schedule)
    block: int  # index into BlockLayout.blocks
    partitions: tuple[int, ...]  # who trains it (several: aggregated)


def turns_per_round(cybgd: CybgdConfig, blocks: int, clients: int) -> int:
    if cybgd.turns_per_round:
        return cybgd.turns_per_round
    return blocks if cybgd.allocation == "aggregated" else max(blocks, clients)


def plan_round(
    cybgd: CybgdConfig,
    trainable: Sequence[int],
    partitions: Sequence[int],
    server_round: int,
    seed: int,
) -> list[Turn]:
    """The round's turns. Client t mod K takes turn t; its block by the allocation:
    ascending t mod B, descending the reverse, random a seeded draw per turn; aggregated
    trains block t mod B with `clients_per_block` clients at once, cycling through clients."""
    partitions = sorted(partitions)
    blocks, clients = len(trainable), len(partitions)
    count = turns_per_round(cybgd, blocks, clients)
    first = (server_round - 1) * count
    rng = random.Random(seed * 7_919 + server_round)
    turns = []
    for t in range(count):
        if cybgd.allocation == "aggregated":
            m = min(cybgd.clients_per_block, clients)
            who = tuple(partitions[(t * m + j) % clients] for j in range(m))
            block = trainable[t % blocks]
        else:
            who = (partitions[t % clients],)
            position = {
                "ascending": t % blocks,
                "descending": blocks - 1 - t % blocks,
                "random": rng.randrange(blocks),
            }[cybgd.allocation]
            block = trainable[position]
        turns.append(Turn(first + t, block, who))
    return turns


# --------------------------------------------------------------------------- block training


@contextlib.contextmanager
def only_block_trainable(model: torch.nn.Module, names: Iterable[str]) -> Iterator[list]:
    """Freeze everything but `names`; lower-precision block parameters get an fp32 master
    copy for the turn (training under autocast in the model's dtype)."""
    wanted = set(names)
    params = dict(model.named_parameters())
    for param in params.values():
        param.requires_grad_(False)
    block = [params[n] for n in wanted]
    low = {p.dtype for p in block if p.dtype != torch.float32}
    originals = [p.dtype for p in block]
    for p in block:
        p.data = p.data.to(torch.float32)
        p.requires_grad_(True)
    device = block[0].device
    autocast = (
        torch.autocast(device.type, dtype=next(iter(low))) if low else contextlib.nullcontext()
    )
    try:
        with autocast:
            yield block
    finally:
        for p, dtype in zip(block, originals, strict=True):
            p.requires_grad_(False)
            p.data = p.data.to(dtype)


def train_block(
    task: LoraTask,
    layout: BlockLayout,
    block: Block,
    data: Sequence[Encoded],
    turn: int,
    seed: int,
    dropped: Sequence[int] = (),
) -> tuple[TrainResult, dict[str, torch.Tensor], int]:
    """Train `block` for `train.local_steps` steps: (result, change of the block, peak bytes)."""
    config = task.config
    params = dict(task.model.named_parameters())
    start = {n: params[n].detach().to("cpu", torch.float32).clone() for n in block.params}
    total_turns = config.rounds * turns_per_round(
        config.cybgd, len(layout.trainable), config.num_clients
    )
    train = config.train
    with (
        training_memory(task.device) as memory,
        only_block_trainable(task.model, block.params),
        without_layers(task.model, layout, dropped),
    ):
        result = train_steps(
            task.model,
            data,
            steps=train.local_steps,
            batch_size=train.batch_size,
            lr=train.lr,
            pad_id=task.pad_id,
            seed=seed,
            schedule=train.lr_schedule,
            schedule_offset=turn * train.local_steps,
            schedule_total=total_turns * train.local_steps,
            weight_decay=train.weight_decay,
            max_grad_norm=train.max_grad_norm,
        )
        end = {n: params[n].detach().to("cpu", torch.float32).clone() for n in block.params}
    return result, {n: end[n] - start[n] for n in block.params}, memory["bytes"]


def turn_seed(config: RunConfig, turn: int, partition: int) -> int:
    return config.seed * 1_000_003 + turn * 1_009 + partition


# --------------------------------------------------------------------------- the strategy


@dataclass
class TurnLog:
    round: int
    turn: int
    block: int
    node: int
    bytes_down: int
    bytes_up: int = 0
    ok: bool = False
    first_for_node: bool = False
    train_s: float = 0.0
    peak_mem: int = 0


class FedCyBGD(Strategy):
    def __init__(
        self,
        config: RunConfig,
        layout: BlockLayout,
        state: dict[str, torch.Tensor],
        parallel_clients: int,
        pretrained: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.config = config
        self.layout = layout
        self.state = state  # the global model (or adapter in PEFT mode), fp32 on CPU
        self.prune_base = pruning_base(config, pretrained) if pretrained is not None else None
        self.parallel_clients = max(1, parallel_clients)
        cybgd = config.cybgd
        self.tracker = SyncTracker(
            layout, cybgd.delta_sync, cybgd.layer_drop_ratio, cybgd.prune_ratio, not cybgd.peft
        )
        self.token = uuid.uuid4().hex  # client views from another run (or a resume) are stale
        self.uplink_codec = protocol.make_codec(config.uplink_codec, config.codec, uplink=True)
        self.max_examples = config.train.local_steps * config.train.batch_size
        self.partitions: dict[int, int] = {}
        self.stats: dict[int, RoundStats] = {}
        self.turn_logs: list[TurnLog] = []
        self.losses: dict[int, list[float]] = {}  # round -> train loss of each accepted turn
        self.turn: Turn | None = None
        self.inflight: dict[int, tuple] = {}
        self.served: set[int] = set()

    def summary(self) -> None:
        cybgd = self.config.cybgd
        log.info(
            "FedCyBGD: %d blocks, allocation %s, layer drop %.2f, prune %.2f of the %s, "
            "delta sync %s",
            len(self.layout.trainable),
            cybgd.allocation,
            cybgd.layer_drop_ratio,
            cybgd.prune_ratio,
            cybgd.prune_target,
            cybgd.delta_sync,
        )

    def block_shapes(self, block: Block) -> dict[str, tuple[int, ...]]:
        return {n: tuple(self.state[n].shape) for n in block.params}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Messages of the pending turn (`self.turn`); `arrays` is unused: the strategy holds
        the global model itself and sends each client only what it lacks."""
        stats = self.stats.setdefault(server_round, RoundStats(started=time.perf_counter()))
        turn = self.turn
        block = self.layout.blocks[turn.block]
        by_partition = {p: n for n, p in self.partitions.items()}
        messages = []
        for partition in turn.partitions:
            node = by_partition.get(partition)
            if node is None:
                continue
            with stopwatch() as encode_time:
                download = self.tracker.plan(node, block, self.state)
                record = encode_download(download, self.tracker.prune_ratio, self.prune_base)
            stats.codec_s += encode_time["s"]
            instructions = ConfigRecord(
                {
                    protocol.RUN_CONFIG: self.config.to_json(),
                    protocol.SERVER_ROUND: server_round,
                    BLOCK: block.index,
                    TURN: turn.number,
                    DROPPED: json.dumps(download.dropped),
                    SYNCS: self.tracker.syncs.get(node, 0) if self.tracker.delta_sync else 0,
                    TOKEN: self.token,
                }
            )
            message = Message(
                content=RecordDict({MODEL: record, protocol.INSTRUCTIONS: instructions}),
                message_type=MessageType.TRAIN,
                dst_node_id=node,
            )
            nbytes = message_nbytes(message)
            stats.bytes_down.append(nbytes)
            self.inflight[node] = (download, len(self.turn_logs))
            self.turn_logs.append(
                TurnLog(
                    server_round,
                    turn.number,
                    block.index,
                    node,
                    nbytes,
                    first_for_node=node not in self.served,
                )
            )
            self.served.add(node)
            messages.append(message)
        stats.sampled += len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate the turn's replies and write the (averaged) block change back."""
        stats = self.stats[server_round]
        turn = self.turn
        block = self.layout.blocks[turn.block]
        accepted: list[tuple[dict[str, torch.Tensor], float, dict]] = []
        answered = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            nbytes = message_nbytes(reply)
            stats.bytes_up.append(nbytes)
            download, log_index = self.inflight.pop(node, (None, None))
            if log_index is not None:
                self.turn_logs[log_index].bytes_up = nbytes
            try:
                if reply.has_error():
                    raise InvalidReply(f"client failed: {reply.error.reason}")
                with stopwatch() as decode_time:
                    delta, weight, metrics = self.read_content(reply.content, node, turn, block)
                stats.codec_s += decode_time["s"]
            except (InvalidReply, PayloadError) as exc:
                log.warning(
                    "round %d turn %d (block %s): rejected reply from node %d: %s",
                    server_round,
                    turn.number,
                    block.name,
                    node,
                    exc,
                )
                self.tracker.forget(node)
                continue
            self.tracker.delivered(node, download)
            entry = self.turn_logs[log_index]
            entry.ok, entry.train_s, entry.peak_mem = (
                True,
                float(metrics["train-s"]),
                int(metrics["peak-mem-bytes"]),
            )
            accepted.append((delta, weight, metrics))
        for node in list(self.inflight):  # sent, never answered (timeout): state unknown
            if node not in answered:
                self.inflight.pop(node)
                self.tracker.forget(node)
        accepted.sort(key=lambda item: item[2]["partition-id"])
        stats.ok += len(accepted)
        stats.failed = stats.sampled - stats.ok
        stats.aggregated = time.perf_counter()
        if not accepted:
            return None, None
        total = sum(weight for _, weight, _ in accepted)
        for name in block.params:
            self.state[name] += sum(d[name] * (w / total) for d, w, _ in accepted)
        self.tracker.changed(block.index)
        loss = sum(m["train-loss"] * w for _, w, m in accepted) / total
        losses = self.losses.setdefault(server_round, [])
        losses.append(loss)
        stats.train_loss = sum(losses) / len(losses)
        stats.client_train_s += sum(float(m["train-s"]) for _, _, m in accepted)
        stats.codec_s += sum(float(m["codec-s"]) for _, _, m in accepted)
        stats.peak_mem = max([stats.peak_mem] + [int(m["peak-mem-bytes"]) for _, _, m in accepted])
        return None, MetricRecord({"train-loss": loss, "clients-ok": len(accepted)})

    def read_content(
        self, content: RecordDict, node: int, turn: Turn, block: Block
    ) -> tuple[dict[str, torch.Tensor], float, dict]:
        """Check a reply against what this turn could legitimately produce."""
        if (
            protocol.UPDATE not in content.array_records
            or protocol.TRAIN_METRICS not in content.metric_records
        ):
            raise InvalidReply(f"missing '{protocol.UPDATE}' or '{protocol.TRAIN_METRICS}' record")
        metrics = dict(content.metric_records[protocol.TRAIN_METRICS])
        for key in METRIC_KEYS:
            value = metrics.get(key)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidReply(f"metric '{key}' missing or invalid: {value!r}")
        weight = float(metrics["num-examples"])
        if not 1 <= weight <= self.max_examples:
            raise InvalidReply(
                f"claims {weight:g} examples; a turn trains on at most {self.max_examples}"
            )
        if metrics.get("partition-id") != self.partitions.get(node):
            raise InvalidReply(f"reports partition {metrics.get('partition-id')!r}")
        if metrics.get(BLOCK) != block.index or metrics.get(TURN) != turn.number:
            raise InvalidReply(
                f"reports block {metrics.get(BLOCK)!r} of turn {metrics.get(TURN)!r}, "
                f"expected block {block.index} of turn {turn.number}"
            )
        update = content.array_records[protocol.UPDATE]
        delta = protocol.decode_record(self.uplink_codec, update, self.block_shapes(block))
        return delta, weight, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # the server evaluates the global model itself

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None

    def run_turn(self, grid: Grid, server_round: int, turn: Turn) -> None:
        self.turn = turn
        messages = self.configure_train(server_round, ArrayRecord(), ConfigRecord(), grid)
        replies = grid.send_and_receive(messages, timeout=self.config.federation.round_timeout_s)
        self.aggregate_train(server_round, replies)

    def extras(self, full_model_bytes: int) -> dict:
        """Summary figures beyond RunRecorder's: the per-turn costs the method is about."""
        ok = [t for t in self.turn_logs if t.ok]
        first = [t.bytes_down for t in ok if t.first_for_node]
        later = [t.bytes_down for t in ok if not t.first_for_node]
        sizes = [
            sum(self.state[n].numel() for n in self.layout.blocks[b].params)
            for b in self.layout.trainable
        ]
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        return {
            "blocks": [self.layout.blocks[b].name for b in self.layout.trainable],
            "trainable_params_per_client": max(sizes),
            "total_params_synced": sum(t.numel() for t in self.state.values()),
            "full_model_bytes": full_model_bytes,
            "download_bytes_per_turn": {
                "first_mean": mean(first),
                "later_mean": mean(later),
                "later_max": max(later) if later else None,
                "later_share_of_full_model": mean(later) / full_model_bytes if later else None,
            },
            "upload_bytes_per_turn": mean([t.bytes_up for t in ok]),
            "client_turn_train_s_mean": mean([t.train_s for t in ok]),
            "client_peak_train_mem_bytes_mean": mean([t.peak_mem for t in ok]),
            "turns": len(self.turn_logs),
            "turns_failed": sum(1 for t in self.turn_logs if not t.ok),
            "client_steps_total": len(ok) * self.config.train.local_steps,
        }


# --------------------------------------------------------------------------- the recipe


def run_fedcybgd(
    grid: Grid, config: RunConfig, out_dir: Path, parallel_clients: int, resume: bool = False
) -> dict:
    """The whole FedCyBGD run, inside the ServerApp."""
    task = cybgd_task(config)
    layout = task_layout(task)
    state = {name: value.clone() for name, value in task.initial_adapter.items()}
    strategy = FedCyBGD(config, layout, state, parallel_clients, task.initial_adapter)
    checkpoint = load_checkpoint(out_dir) if resume else None
    first_round = 1
    if checkpoint is not None:
        tensors, saved = checkpoint
        if set(tensors) != set(state):
            raise FedpressError(f"checkpoint in {out_dir} does not match this model")
        strategy.state = state = tensors
        for block in layout.blocks:  # nodes start afresh; they hold the pretrained weights
            if any(not torch.equal(state[n], task.initial_adapter[n]) for n in block.params):
                strategy.tracker.changed(block.index)
        first_round = saved["round"] + 1
        recorder = RunRecorder(out_dir, config, saved["round"], saved["elapsed_s"])
        log.warning("resuming %s after round %d", out_dir, saved["round"])
    else:
        recorder = RunRecorder(out_dir, config)
    eval_subset = task.encode_all(task.splits.eval_examples[: config.eval.per_round_examples])
    strategy.partitions = discover_partitions(grid, config)
    full_model_bytes = message_nbytes(
        RecordDict({MODEL: protocol.tensors_to_record(task.initial_adapter)})
    )

    def evaluate_and_record(server_round: int) -> None:
        task.set_adapter(strategy.state)
        result = task.evaluate(eval_subset)
        stats = strategy.stats.get(server_round, RoundStats())
        # Turns run one after another: only aggregated turns run clients in parallel.
        record = round_record(server_round, stats, result, 1)
        recorder.log_round(record)

    progress = tqdm(
        total=config.rounds, initial=first_round - 1, desc=f"{config.method} rounds", unit="round"
    )
    try:
        if first_round == 1:
            evaluate_and_record(0)
        for server_round in range(first_round, config.rounds + 1):
            turns = plan_round(
                config.cybgd,
                layout.trainable,
                sorted(strategy.partitions.values()),
                server_round,
                config.seed,
            )
            for turn in tqdm(turns, desc=f"round {server_round}: turns", unit="turn", leave=False):
                strategy.run_turn(grid, server_round, turn)
            if strategy.stats[server_round].ok < config.federation.min_replies:
                raise FedpressError(
                    f"round {server_round} got too few valid client replies; stopped. The "
                    f"checkpoint of round {server_round - 1} is intact"
                )
            evaluate_and_record(server_round)
            progress.update(1)
            save_checkpoint(
                out_dir,
                strategy.state,
                {"round": server_round, "elapsed_s": recorder.elapsed()},
            )
    finally:
        progress.close()
    task.set_adapter(strategy.state)
    final = task.evaluate(task.encode_all(task.splits.eval_examples))
    weights = "adapter.safetensors" if config.cybgd.peft else "model.safetensors"
    return recorder.finish(
        strategy.state,
        final.loss,
        final.accuracy,
        final.examples,
        extra=strategy.extras(full_model_bytes),
        weights_file=weights,
    )


# --------------------------------------------------------------------------- the client


_VIEWS: dict[int, NodeView] = {}  # node id -> what it holds (one process may serve many nodes)


def node_view(node: int, token: str, syncs: int) -> NodeView:
    """This node's copy, checked against what the server believes it holds."""
    view = _VIEWS.get(node)
    if syncs == 0 or view is None or view.token != token:
        if syncs != 0:
            raise ValueError(
                f"block view out of sync: the server expects {syncs} earlier downloads, this "
                "process holds none (restarted?)"
            )
        view = _VIEWS[node] = NodeView(token)
    if view.syncs != syncs:
        raise ValueError(f"block view out of sync: holds {view.syncs} downloads, not {syncs}")
    return view


def client_train(msg: Message, context: Context, config: RunConfig) -> Message:
    """One turn on a client: rebuild the model this node holds, train one block, reply."""
    from fedpress.flower.client_app import _partition_id, _share

    instructions = msg.content[protocol.INSTRUCTIONS]
    partition_id = _partition_id(context, config)
    torch.set_num_threads(max(1, config.runtime.threads or config.federation.client_cpus))
    task = cybgd_task(config)
    layout = task_layout(task)
    index = int(instructions[BLOCK])
    if index not in layout.trainable:
        raise ValueError(f"block {index} is not a trainable block")
    block = layout.blocks[index]
    dropped = [int(i) for i in json.loads(str(instructions[DROPPED]))]
    if block.layer in dropped or not all(0 <= i < layout.num_layers for i in dropped):
        raise ValueError(f"cannot drop layers {dropped} when training {block.name}")
    turn = int(instructions[TURN])
    data = _share(task, partition_id)
    with stopwatch() as download_codec:
        shapes = {n: tuple(t.shape) for n, t in task.initial_adapter.items()}
        base = pruning_base(config, task.initial_adapter)
        tensors, pruned = decode_download(msg.content[MODEL], shapes, base)
        view = node_view(context.node_id, str(instructions[TOKEN]), int(instructions[SYNCS]))
        if not config.cybgd.delta_sync:
            view.blocks.clear()  # holds nothing between turns: everything needed must arrive
            view.exact.clear()
            kept = [b for b in layout.blocks if b.layer is None or b.layer not in dropped]
            missing = [n for b in kept for n in b.params if n not in tensors]
            if missing:
                raise ValueError(f"download lacks {len(missing)} tensors, e.g. {missing[0]}")
        view.apply(layout, tensors, pruned)
        if not view.exact.get(block.index, True):
            raise ValueError(f"responsible block {block.name} did not arrive exact")
        for b in layout.blocks:
            load_adapter_state(
                task.model,
                view.blocks.get(b.index) or {n: task.initial_adapter[n] for n in b.params},
            )
        if not config.cybgd.delta_sync:
            view.blocks.clear()  # nothing is kept between turns without delta sync
        del tensors
    result, delta, peak = train_block(
        task, layout, block, data, turn, turn_seed(config, turn, partition_id), dropped
    )
    with stopwatch() as upload_codec:
        update = encode_uplink(context, config, delta, f"{protocol.UPLINK_CODEC_STATE}:{index}")
    metrics = MetricRecord(
        {
            "num-examples": result.examples_seen,
            "train-loss": result.mean_loss,
            "train-s": result.seconds,
            "codec-s": download_codec["s"] + upload_codec["s"],
            "peak-mem-bytes": peak,
            "partition-id": partition_id,
            BLOCK: index,
            TURN: turn,
        }
    )
    content = RecordDict({protocol.UPDATE: update, protocol.TRAIN_METRICS: metrics})
    return Message(content, reply_to=msg)


def encode_uplink(
    context: Context, config: RunConfig, delta: dict[str, torch.Tensor], state_key: str
) -> ArrayRecord:
    """The change through the uplink codec; its state (error feedback) kept in Context.state."""
    codec = protocol.make_codec(config.uplink_codec, config.codec, uplink=True)
    if state_key in context.state:
        codec.load_state_dict(protocol.record_to_arrays(context.state[state_key]))
    shapes = {n: tuple(t.shape) for n, t in delta.items()}
    record = protocol.encode_record(codec, delta, shapes)
    context.state[state_key] = protocol.arrays_to_record(codec.state_dict())
    return record
