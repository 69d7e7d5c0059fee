"""FedKSeed, client side: append the rounds the server sent to this node's history (kept in
Context.state), bring this process's model to the global model by replaying what it has not
applied, take the zeroth-order steps, return to the global weights (kept on disk during the
turn, not in memory), send one scalar per seed."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Context, Message

from fedpress.config import RunConfig
from fedpress.flower import node, protocol
from fedpress.memory import training_memory
from fedpress.methods.fedkseed.replay import (
    History,
    build_kseed_task,
    catch_up,
    kept_on_disk,
    pro_probabilities,
    zeroth_order_round,
)

ROUNDS = "fedkseed-rounds"  # server -> node: the aggregated rounds from FIRST_ROUND on
FIRST_ROUND = "fedkseed-first-round"
HISTORY = "fedkseed-history"  # Context.state: every round this node has received


def history_of(record) -> History:  # noqa: ANN001 - an ArrayRecord
    arrays = protocol.record_to_tensors(record)
    return History(arrays["seeds"].long(), arrays["values"].float(), arrays["counts"].long())


def received_history(msg: Message, context: Context) -> History:
    """This node's history with the message's rounds in place (kept for its next turns)."""
    first = int(msg.content[protocol.INSTRUCTIONS][FIRST_ROUND])
    known = (
        history_of(context.state[HISTORY])
        if HISTORY in context.state.array_records
        else History.empty()
    )
    if first > known.rounds:
        raise ValueError(f"the server sent rounds from {first + 1}; this node has {known.rounds}")
    history = known.truncated(first).extended(history_of(msg.content[ROUNDS]))
    context.state[HISTORY] = protocol.tensors_to_record(history.as_arrays())
    return history


def train(msg: Message, context: Context, config: RunConfig) -> Message:
    server_round = int(msg.content[protocol.INSTRUCTIONS][protocol.SERVER_ROUND])
    partition = node.partition_id(context, config)
    started = time.perf_counter()
    history = received_history(msg, context)
    task = catch_up(build_kseed_task(config), history)
    replay_s = time.perf_counter() - started
    data = node.share(context, config, task)
    probabilities = pro_probabilities(config, history) if config.fedkseed.pro else None
    # The turn moves the process's model; afterwards it is the global model again, exactly.
    with kept_on_disk(task.parameters()), training_memory(task.device) as memory:
        turn = zeroth_order_round(
            task,
            data,
            config.train.local_steps,
            node.train_seed(config, server_round, partition),
            probabilities,
        )
    seeds = sorted(turn.sums)
    update = protocol.arrays_to_record(
        {
            "seeds": np.asarray(seeds, dtype=np.int64),
            "values": np.asarray([turn.sums[s] for s in seeds], dtype=np.float32),
        }
    )
    return node.reply(
        msg,
        update,
        turn.result,
        memory,
        replay_s,
        partition,
        **{"forward-passes": turn.forward_passes, "skipped-steps": turn.skipped_steps},
    )
