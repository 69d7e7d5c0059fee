"""ClientApp: one for every method. The run config arrives once, with the server's first
message (a query: which client number does this node take?), and is kept in `Context.state`;
each train message goes to the handler the method registered for its phase
(`train` for the ordinary turn, `train.<phase>` for others, such as CG-FedLLM's TGAP), and
evaluate messages (federated evaluation) to its `evaluate` phase.

The data comes from the node's config: `data-path` (a deployed node's own file, see
`fedpress.flower.node`) or `partition-id`/`num-partitions` (set by the simulation engine).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedpress import lean_imports, registry
from fedpress.flower import node

app = ClientApp()


def _handle(phase: str, msg: Message, context: Context) -> Message:
    config = node.run_config(context)
    lean_imports.skip_bitsandbytes(config.runtime.quantize)
    node.use_threads(context, config)
    handlers = registry.get(config.method).client
    if phase not in handlers:
        raise ValueError(f"method {config.method} has no client phase '{phase or 'train'}'")
    return handlers[phase](msg, context, config)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _handle("", msg, context)


def _register_phases() -> None:
    """A named train handler for every phase some method declares."""
    phases = {
        phase
        for method in registry.all_methods()
        for phase in method.client
        if phase and phase != registry.EVALUATE
    }
    for phase in sorted(phases):

        def handler(msg: Message, context: Context, phase: str = phase) -> Message:
            return _handle(phase, msg, context)

        app.train(phase)(handler)


_register_phases()


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handle(registry.EVALUATE, msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Keep the run config; tell the server which client number this node takes and whether
    it holds local held-out data. Its data is read when it first trains (a bad file fails
    that reply, which the server counts, not the connection)."""
    node.remember_config(msg, context)
    node_config = context.node_config
    config = node.received_config(context)
    lean_imports.skip_bitsandbytes(config.runtime.quantize)  # before the warm-up's imports
    node.warm_up(context, registry.get(config.method).client_task)
    info = node.node_info(
        node.partition_id(context, config),
        int(node_config.get("num-partitions", -1)),
        "eval-path" in node_config,
    )
    return Message(info, reply_to=msg)
