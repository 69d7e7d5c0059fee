"""CG-FedLLM (SPEC section 1): LoRA-FedAvg whose uplink is a learned autoencoder's latent.

`CgFedLLMServer` is LoRA-FedAvg's server plus:
- `prepare`: TGAP before round 1 (clients record D1 snapshots, the server trains the
  autoencoder; `tgap`), or the autoencoder of `autoencoder.checkpoint`. TGAP's
  messages are accounted as round 0 (bytes up and down, client time), so run totals include them.
- `downlink_record`: the first message a node gets (and the first after the autoencoder
  changes) also carries the autoencoder's weights (the encoder, and the decoder: the client fits
  its per-tensor scales on what the server will decode, and error feedback needs the same);
  counted in bytes down and reported as `ae_bytes_down`.
- the server decodes every latent with `AutoencoderCodec` (validated like any payload), then
  aggregates exactly as LoRA-FedAvg does (sample-weighted mean, or the DP mechanism).
- `autoencoder.adapt_every = N`: every N-th round clients send fp16 updates instead of
  latents; the server aggregates those exactly, adds them to the TGAP pool, fine-tunes the
  autoencoder for `adapt_steps` steps and ships the new one (the frozen paper setting is N = 0).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedpress.accounting import message_nbytes
from fedpress.autoencoders.training import (
    META,
    load_autoencoder,
    retrain_from_snapshots,
    save_autoencoder,
    train_autoencoder,
)
from fedpress.codecs import build_codec
from fedpress.codecs.autoencoder import AutoencoderCodec
from fedpress.config import RunConfig
from fedpress.flower import protocol
from fedpress.flower.exchange import RoundStats
from fedpress.flower.server import Accepted
from fedpress.methods.cg_fedllm.tgap import TgapResult, run_tgap_phase
from fedpress.methods.lora_fedavg.server import LoraFedAvgServer
from fedpress.task import LoraTask, build_task

log = logging.getLogger("fedpress")

AE_WEIGHTS = "ae-weights"  # server -> client: encoder (+ decoder) state
AE_META = "ae-meta"  # server -> client: {"json": architecture, rate, input gain, version}
FULL_UPDATE = "full-update"  # instruction flag: send an fp16 update this round (adapt mode)

_SHIPPED_META_KEYS = ("arch", "compression", "latent_dtype", "input_gain")


def adapt_round(config: RunConfig, server_round: int) -> bool:
    every = config.autoencoder.adapt_every
    return every > 0 and server_round % every == 0


def shipped_meta(meta: dict[str, Any], width: int, version: int) -> ConfigRecord:
    """What a client must know of the autoencoder it is shipped: its architecture, rate,
    latent dtype, input gain, the layout's width, and the version."""
    shipped = {k: meta[k] for k in _SHIPPED_META_KEYS}
    return ConfigRecord({"json": json.dumps({**shipped, "width": width, "version": version})})


class CgFedLLMServer(LoraFedAvgServer):
    # With privacy, TGAP and adaptation (raw updates) are refused (cg_fedllm.check): the only
    # uploads are FAF's latents, which the mechanism covers.
    dp_covers = ["faf"]

    def __init__(self, config: RunConfig, task: LoraTask, out_dir: Path) -> None:
        super().__init__(config, task, out_dir)
        self.meta: dict[str, Any] = {}
        self.version = 0
        self.shipped: dict[int, int] = {}  # node -> autoencoder version it holds
        self.ae_bytes_down = 0
        self.pool: list[dict[str, torch.Tensor]] = []
        self.fp16 = build_codec("fp16")
        self.tgap_meta: dict[str, Any] = {}
        self.tgap_in_run = False
        log.info("CG-FedLLM: %s at 1/%d", config.autoencoder.arch, config.autoencoder.compression)

    def prepare(self, grid: Grid, resume: bool) -> None:
        options = self.config.autoencoder
        saved = self.out_dir / "autoencoder"
        if options.checkpoint:
            model, meta = load_autoencoder(options.checkpoint, self.shapes)
        elif resume and (saved / META).is_file():
            model, meta = load_autoencoder(saved, self.shapes)
        elif options.snapshots_from:
            model, meta = retrain_from_snapshots(
                self.config, options.snapshots_from, self.out_dir, self.shapes
            )
        else:
            result = run_tgap_phase(grid, self.config, self.partitions, self.task, self.out_dir)
            self.record_tgap(result)
            model, meta = result.model, result.meta
            self.tgap_in_run = True
        self.tgap_meta = meta
        if meta["arch"] != options.arch or int(meta["compression"]) != options.compression:
            log.warning(
                "autoencoder checkpoint is %s at 1/%s; the config says %s at 1/%d: using the "
                "checkpoint's",
                meta["arch"],
                meta["compression"],
                options.arch,
                options.compression,
            )
        self.install(model, meta)

    def record_tgap(self, result: TgapResult) -> None:
        """TGAP's messages are round 0's cost, with the connection's."""
        stats = self.stats.setdefault(0, RoundStats())
        stats.sampled += len(result.bytes_down)
        stats.bytes_down.extend(result.bytes_down)
        stats.bytes_up.extend(result.bytes_up)
        stats.ok += len(result.bytes_up)
        stats.client_train_s += result.client_train_s

    def install(self, model: torch.nn.Module, meta: dict[str, Any]) -> None:
        """Use this autoencoder from now on (the next message to each node ships it)."""
        self.meta = meta
        self.model = model.eval()
        self.uplink_codec = AutoencoderCodec(
            model, self.shapes, float(meta["input_gain"]), meta["latent_dtype"]
        )
        self.version += 1
        # Encoder and decoder: the client fits its per-tensor scales on what the server will
        # decode, and error feedback needs the same reconstruction.
        self.ship_weights = protocol.tensors_to_record(dict(model.state_dict()))
        self.ship_meta = shipped_meta(meta, self.uplink_codec.layout.width, self.version)

    def downlink_record(self, node: int, arrays: ArrayRecord) -> dict[str, Any]:
        records = super().downlink_record(node, arrays)
        if self.shipped.get(node) != self.version:
            extra = {AE_WEIGHTS: self.ship_weights, AE_META: self.ship_meta}
            self.ae_bytes_down += message_nbytes(RecordDict(extra))
            self.shipped[node] = self.version
            records.update(extra)
        return records

    def configure_train(self, server_round: int, exchange: Any, nodes: list[int]) -> list[Message]:
        messages = super().configure_train(server_round, exchange, nodes)
        if adapt_round(self.config, server_round):
            for message in messages:
                message.content[protocol.INSTRUCTIONS][FULL_UPDATE] = True
        return messages

    def decode_reply(
        self, server_round: int, exchange: Any, content: RecordDict, metrics: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        if not adapt_round(self.config, server_round):
            return super().decode_reply(server_round, exchange, content, metrics)
        update = protocol.decode_record(
            self.fp16, content.array_records[protocol.UPDATE], self.shapes
        )
        self.pool.append(update)
        return update

    def aggregate_train(self, server_round: int, exchange: Any, accepted: list[Accepted]) -> None:
        super().aggregate_train(server_round, exchange, accepted)
        if adapt_round(self.config, server_round) and self.pool:
            self.adapt(server_round)

    def adapt(self, server_round: int) -> None:
        """Fine-tune the autoencoder on the exact updates of this round (adapt mode)."""
        options = self.config.autoencoder
        tuned = options.__class__(**{**options.__dict__, "train_steps": options.adapt_steps})
        model, meta = train_autoencoder(
            self.pool, self.shapes, tuned, self.config.seed + server_round, init=self.model
        )
        meta["adapted_at_round"] = server_round
        save_autoencoder(self.out_dir / "autoencoder", model, meta)
        self.pool.clear()
        self.install(model, meta)

    def summary_extra(self) -> dict[str, Any]:
        validation = self.tgap_meta.get("validation", {})
        layout = self.meta.get("layout", {})
        numel = layout.get("numel", 0)
        latent = 1
        for d in self.meta.get("latent_shape", []):
            latent *= int(d)
        return {
            **super().summary_extra(),
            "ae_arch": self.meta.get("arch"),
            "ae_compression": self.meta.get("compression"),
            "ae_bytes_down": self.ae_bytes_down,
            "ae_versions": self.version,
            "compression_ratio": numel / latent if latent else None,
            "tgap_bytes_up": self.tgap_meta.get("tgap_bytes_up", 0),
            "tgap_bytes_down": self.tgap_meta.get("tgap_bytes_down", 0),
            "tgap_snapshots": self.tgap_meta.get("tgap_snapshots", 0),
            # tgap_bytes_* are the cost of the TGAP that produced the autoencoder; they are in
            # this run's bytes totals (round 0) only when that TGAP ran inside this run.
            "tgap_in_run": self.tgap_in_run,
            "tgap_val_cosine": validation.get("cosine"),
            "tgap_val_snr_db": validation.get("snr_db"),
            "tgap_val_mse": validation.get("mse"),
        }


def build_server(config: RunConfig, out_dir: Path) -> CgFedLLMServer:
    return CgFedLLMServer(config, build_task(config), out_dir)
