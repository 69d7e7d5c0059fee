"""ClientApp: one for every method. The run config arrives once, with the server's first
message (a query: which partition does this node hold?), and is kept in `Context.state`;
each train message goes to the handler the method registered for its phase
(`train` for the ordinary turn, `train.<phase>` for others, such as CG-FedLLM's TGAP).

The partition comes from the node's config (`partition-id`, `num-partitions`: set by the
simulation engine, or by `flower-supernode --node-config` in a deployment).
"""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedpress import registry
from fedpress.flower import node, protocol

app = ClientApp()


def _handle(phase: str, msg: Message, context: Context) -> Message:
    config = node.run_config(context)
    node.use_threads(config)
    handlers = registry.get(config.method).client
    if phase not in handlers:
        raise ValueError(f"method {config.method} has no client phase '{phase or 'train'}'")
    return handlers[phase](msg, context, config)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _handle("", msg, context)


def _register_phases() -> None:
    """A named train handler for every phase some method declares."""
    phases = {phase for method in registry.all_methods() for phase in method.client if phase}
    for phase in sorted(phases):

        def handler(msg: Message, context: Context, phase: str = phase) -> Message:
            return _handle(phase, msg, context)

        app.train(phase)(handler)


_register_phases()


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Keep the run config; tell the server which partition this node holds."""
    node.remember_config(msg, context)
    node_config = context.node_config
    if "partition-id" not in node_config:
        raise ValueError("this SuperNode has no 'partition-id' in its --node-config")
    info = MetricRecord(
        {
            "partition-id": int(node_config["partition-id"]),
            "num-partitions": int(node_config.get("num-partitions", -1)),
        }
    )
    return Message(RecordDict({protocol.NODE_INFO: info}), reply_to=msg)
