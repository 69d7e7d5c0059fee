"""CG-FedLLM (SPEC section 1): LoRA-FedAvg whose uplink is a learned autoencoder's latent.

The recipe is `run_lora_fedavg` with the `CgFedLLM` strategy, which adds to LoRA-FedAvg:
- `prepare`: TGAP before round 1 (clients record D1 snapshots, the server trains the
  autoencoder; `autoencoders.tgap`), or the autoencoder of `autoencoder.checkpoint`. TGAP's
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

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid

from fedpress.accounting import message_nbytes
from fedpress.autoencoders import build_autoencoder
from fedpress.autoencoders.tgap import (
    META,
    TgapResult,
    load_autoencoder,
    retrain_from_snapshots,
    run_tgap_phase,
    save_autoencoder,
    train_autoencoder,
)
from fedpress.codecs import Codec, ErrorFeedback, build_codec
from fedpress.codecs.autoencoder import AutoencoderCodec
from fedpress.config import RunConfig
from fedpress.flower import protocol
from fedpress.methods.lora_fedavg import LoraFedAvg, RoundStats, run_lora_fedavg

log = logging.getLogger("fedpress")

AE_WEIGHTS = "ae-weights"  # server -> client: encoder (+ decoder) state
AE_META = "ae-meta"  # server -> client: {"json": architecture, rate, input gain, version}
FULL_UPDATE = "full-update"  # instruction flag: send an fp16 update this round (adapt mode)

_SHIPPED_META_KEYS = ("arch", "compression", "latent_dtype", "input_gain")


def client_error_feedback(config: RunConfig) -> bool:
    return config.autoencoder.error_feedback != "off"


def adapt_round(config: RunConfig, server_round: int) -> bool:
    every = config.autoencoder.adapt_every
    return every > 0 and server_round % every == 0


class CgFedLLM(LoraFedAvg):
    def __init__(self, config: RunConfig, shapes, initial, parallel_clients: int) -> None:  # noqa: ANN001
        super().__init__(config, shapes, initial, parallel_clients)
        self.meta: dict = {}
        self.version = 0
        self.shipped: dict[int, int] = {}  # node -> autoencoder version it holds
        self.ae_bytes_down = 0
        self.pool: list[dict[str, torch.Tensor]] = []
        self.fp16 = build_codec("fp16")
        self.out_dir = Path(".")
        self.full_round = False
        self.tgap_meta: dict = {}
        self.tgap_in_run = False

    def summary(self) -> None:
        log.info(
            "CG-FedLLM: %s at 1/%d",
            self.config.autoencoder.arch,
            self.config.autoencoder.compression,
        )

    def prepare(self, grid: Grid, task, out_dir: Path, resume: bool) -> None:  # noqa: ANN001
        options = self.config.autoencoder
        self.out_dir = Path(out_dir)
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
            result = run_tgap_phase(grid, self.config, self.partitions, task, self.out_dir)
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
        self.stats[0] = RoundStats(
            sampled=len(result.bytes_down),
            bytes_down=result.bytes_down,
            bytes_up=result.bytes_up,
            ok=len(result.bytes_up),
            client_train_s=result.client_train_s,
        )

    def install(self, model: torch.nn.Module, meta: dict) -> None:
        """Use this autoencoder from now on (the next message to each node ships it)."""
        self.meta = meta
        self.model = model.eval()
        self.uplink_codec = AutoencoderCodec(
            model, self.shapes, float(meta["input_gain"]), meta["latent_dtype"]
        )
        self.version += 1
        state = model.state_dict()
        # Encoder and decoder: the client fits its per-tensor scales on what the server will
        # decode, and error feedback needs the same reconstruction.
        self.ship_weights = protocol.tensors_to_record(dict(state))
        shipped = {k: meta[k] for k in _SHIPPED_META_KEYS}
        shipped["width"] = self.uplink_codec.layout.width
        self.ship_meta = ConfigRecord({"json": json.dumps({**shipped, "version": self.version})})

    def downlink_record(self, node: int, arrays: ArrayRecord) -> dict:
        records = super().downlink_record(node, arrays)
        if self.shipped.get(node) != self.version:
            extra = {AE_WEIGHTS: self.ship_weights, AE_META: self.ship_meta}
            self.ae_bytes_down += message_nbytes(RecordDict(extra))
            self.shipped[node] = self.version
            records.update(extra)
        return records

    def configure_train(self, server_round, arrays, config, grid):  # noqa: ANN001, ANN201
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.full_round = adapt_round(self.config, server_round)
        if self.full_round:
            for message in messages:
                message.content[protocol.INSTRUCTIONS][FULL_UPDATE] = True
        return messages

    def read_content(self, content: RecordDict, node: int):  # noqa: ANN201
        if not self.full_round:
            return super().read_content(content, node)
        codec, self.uplink_codec = self.uplink_codec, self.fp16
        try:
            delta, weight, metrics = super().read_content(content, node)
        finally:
            self.uplink_codec = codec
        self.pool.append(delta)
        return delta, weight, metrics

    def aggregate_train(self, server_round, replies):  # noqa: ANN001, ANN201
        result = super().aggregate_train(server_round, replies)
        if adapt_round(self.config, server_round) and self.pool:
            self.adapt(server_round)
        return result

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

    def summary_extra(self) -> dict:
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


def run_cg_fedllm(
    grid: Grid, config: RunConfig, out_dir: Path, parallel_clients: int, resume: bool = False
) -> dict:
    return run_lora_fedavg(grid, config, out_dir, parallel_clients, resume, strategy_cls=CgFedLLM)


# --------------------------------------------------------------------------- client side


def client_uplink_codec(msg: Message, context: Context, config: RunConfig, shapes) -> Codec:  # noqa: ANN001
    """The uplink codec of a cg-fedllm client: the autoencoder the server shipped (kept in
    Context.state), in the shared ErrorFeedback wrapper; fp16 in an adapt round."""
    feedback = client_error_feedback(config)
    if bool(msg.content[protocol.INSTRUCTIONS].get(FULL_UPDATE, False)):
        # Same state layout as the autoencoder's ErrorFeedback: the residual carries over.
        return build_codec("fp16", error_feedback=feedback)
    if AE_WEIGHTS in msg.content.array_records:
        context.state[AE_WEIGHTS] = msg.content[AE_WEIGHTS]
        context.state[AE_META] = msg.content[AE_META]
    if AE_WEIGHTS not in context.state.array_records:
        raise ValueError("no autoencoder received from the server")
    meta = json.loads(str(context.state[AE_META]["json"]))
    model = build_autoencoder(meta["arch"], int(meta["compression"]), int(meta["width"]))
    weights = protocol.record_to_tensors(context.state[AE_WEIGHTS])
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or missing:
        raise ValueError("the shipped autoencoder weights do not fit its architecture")
    codec = AutoencoderCodec(model, shapes, float(meta["input_gain"]), meta["latent_dtype"])
    return ErrorFeedback(codec) if feedback else codec
