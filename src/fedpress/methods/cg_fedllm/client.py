"""CG-FedLLM, client side: LoRA-FedAvg's round with the shipped autoencoder as uplink codec."""

from __future__ import annotations

import json

from flwr.app import Context, Message

from fedpress.autoencoders import build_autoencoder
from fedpress.codecs import Codec, ErrorFeedback, build_codec
from fedpress.codecs.autoencoder import AutoencoderCodec
from fedpress.config import RunConfig
from fedpress.flower import protocol
from fedpress.methods.cg_fedllm.server import AE_META, AE_WEIGHTS, FULL_UPDATE
from fedpress.methods.lora_fedavg import client as lora_client
from fedpress.task import Shapes


def client_error_feedback(config: RunConfig) -> bool:
    return config.autoencoder.error_feedback != "off"


def client_uplink_codec(msg: Message, context: Context, config: RunConfig, shapes: Shapes) -> Codec:
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


def train(msg: Message, context: Context, config: RunConfig) -> Message:
    return lora_client.train(msg, context, config, uplink=client_uplink_codec)
