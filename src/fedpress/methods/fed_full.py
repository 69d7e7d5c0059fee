"""Fed-full: full-parameter FedAvg, the baseline FedCyBGD is judged against (small models).

Every sampled client receives the whole model, trains every parameter for
`train.local_steps` steps and sends back the change of every parameter; the server averages
the changes. It is LoRA-FedAvg's strategy and recipe with the full model as the "adapter"
(`full_task`), so sampling, validation, codecs, checkpoints and accounting are the same code.
The client side differs only in the task and in measuring training memory per turn.
"""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedpress.accounting import stopwatch
from fedpress.config import RunConfig
from fedpress.flower import protocol
from fedpress.full_task import build_full_task
from fedpress.memory import training_memory
from fedpress.methods.fedcybgd import encode_uplink
from fedpress.methods.lora_fedavg import run_lora_fedavg


def run_fed_full(
    grid: Grid, config: RunConfig, out_dir: Path, parallel_clients: int, resume: bool = False
) -> dict:
    task = build_full_task(config)
    return run_lora_fedavg(
        grid, config, out_dir, parallel_clients, resume, task, weights_file="model.safetensors"
    )


def client_train(msg: Message, context: Context, config: RunConfig) -> Message:
    from fedpress.flower.client_app import _partition_id, _receive_global, _share

    server_round = int(msg.content[protocol.INSTRUCTIONS][protocol.SERVER_ROUND])
    partition_id = _partition_id(context, config)
    task = build_full_task(config)
    data = _share(task, partition_id)
    with stopwatch() as download_codec:
        global_state = _receive_global(msg, context, task)
        task.set_adapter(global_state)
    with training_memory(task.device) as memory:
        result = task.train_round(
            data,
            server_round,
            steps=config.train.local_steps,
            seed=config.seed * 1_000_003 + server_round * 1_009 + partition_id,
        )
    with stopwatch() as upload_codec:
        # The change, computed into the received copy: a full model is large, no extra copy.
        params = dict(task.model.named_parameters())
        delta = {
            name: torch.sub(params[name].detach().to("cpu", torch.float32), start, out=start)
            for name, start in global_state.items()
        }
        update = encode_uplink(context, config, delta, protocol.UPLINK_CODEC_STATE)
    metrics = MetricRecord(
        {
            "num-examples": result.examples_seen,
            "train-loss": result.mean_loss,
            "train-s": result.seconds,
            "codec-s": download_codec["s"] + upload_codec["s"],
            "peak-mem-bytes": memory["bytes"],
            "partition-id": partition_id,
        }
    )
    content = RecordDict({protocol.UPDATE: update, protocol.TRAIN_METRICS: metrics})
    return Message(content, reply_to=msg)
