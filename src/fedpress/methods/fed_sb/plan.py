"""Fed-SB's plan (`fedpress plan`): its one-off phase in round 0 (the init clients' first-step
factors up, A and B down to every node once), then LoRA-FedAvg's rounds with the R's as the
state, on the LoRA-SB model built on the meta device."""

from __future__ import annotations

from fedpress.flower import planning, protocol
from fedpress.methods.fed_sb.init import (
    INIT_MESSAGE,
    factor_shapes,
    first_step_reply,
    init_clients,
    one_off_codec,
)
from fedpress.methods.fed_sb.server import FROZEN, INSTALL_MESSAGE, installed
from fedpress.methods.fed_sb.task import frozen_shapes, to_lora_sb
from fedpress.methods.lora_fedavg.plan import lora_memory, plan_rounds, trainable
from fedpress.plan import MethodPlan, Planner


def plan(planner: Planner) -> MethodPlan:
    config = planner.config
    model = planner.lora_model()
    to_lora_sb(model, config.lora.r)
    one_off = one_off_codec(config)
    setup = planning.Traffic()
    if config.fedsb.init == "gradient":
        shapes = factor_shapes(model, config.lora.r)
        for client in init_clients(config, list(range(config.num_clients))):
            sent = planning.instruction(protocol.train_content({}, 0), INIT_MESSAGE)
            factors = planning.payload_record(one_off, shapes)
            examples = config.fedsb.init_examples
            content = first_step_reply(factors, examples, 1.0, client)
            setup.add(sent, planning.reply(content, sent))
    frozen = planning.payload_record(one_off, frozen_shapes(model))
    for _ in range(config.num_clients):
        sent = planning.instruction(protocol.train_content({FROZEN: frozen}, 0), INSTALL_MESSAGE)
        setup.add(sent, planning.reply(installed(), sent))
    # R0: the first step's singular values (unlike each other), or zero (random A and B).
    state = trainable(model)
    zero = {name: 0.0 for name in state} if config.fedsb.init == "random" else {}
    rounds = plan_rounds(planner, state, zero)
    rounds.traffic[0] = setup
    # Beside LoRA-FedAvg's copies a node keeps A and B as they came (Context.state).
    memory = lora_memory(planner, model, rounds, len(frozen[protocol.PACKED].data))
    return MethodPlan(rounds.traffic, memory, rounds.participants)
