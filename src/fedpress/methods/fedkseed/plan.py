"""FedKSeed's plan (`fedpress plan`): the seeds each client draws, drawn as its turns draw
them (`replay.seed_draws`, uniform: FedKSeed-Pro's draws follow the scalars, which only a run
knows, so a Pro plan draws uniformly too), give the sizes of its scalar uploads and of the
history every train message carries; the client holds the model, one direction z at a time,
and no gradients or optimizer state."""

from __future__ import annotations

from flwr.app import ArrayRecord

from fedpress.flower import node, planning, protocol
from fedpress.flower.planning import PlannedArray, arrays_record
from fedpress.methods.fedkseed.client import FIRST_ROUND, ROUNDS
from fedpress.methods.fedkseed.replay import seed_draws
from fedpress.plan import MethodPlan, Planner


def plan(planner: Planner) -> MethodPlan:
    config = planner.config
    steps = config.train.local_steps
    aggregated: list[int] = []  # seeds in each aggregated round of the history
    sent: dict[int, int] = {}  # client -> rounds of history it has received
    rounds: dict[int, planning.Traffic] = {}
    participants: dict[int, int] = {}
    largest_down = 0
    for server_round in range(1, config.rounds + 1):
        traffic = rounds.setdefault(server_round, planning.Traffic())
        clients = planner.participants(server_round)
        participants[server_round] = len(clients)
        union: set[int] = set()
        for client in clients:
            first = sent.get(client, 0)
            history = _history(sum(aggregated[first:]), len(aggregated) - first)
            content = protocol.train_content(
                {ROUNDS: history}, server_round, **{FIRST_ROUND: first}
            )
            message = planning.instruction(content)
            sent[client] = len(aggregated)
            seed = node.train_seed(config, server_round, client)
            drawn = set(seed_draws(config.fedkseed.seeds, steps, seed, None))
            union |= drawn
            update = arrays_record(
                {
                    "seeds": PlannedArray("int64", (len(drawn),)),
                    "values": PlannedArray("float32", (len(drawn),)),
                }
            )
            extra = {"forward-passes": 2 * steps, "skipped-steps": 0}
            traffic.add(message, planning.train_reply(message, update, config, client, **extra))
            largest_down = max(largest_down, traffic.down[-1])
        aggregated.append(len(union))
    model = planner.base_model()
    model.requires_grad_(False)
    direction = 4 * max(p.numel() for p in model.parameters())  # z of the largest weight, fp32
    memory = planner.memory(
        model, held=direction, messages=largest_down, optimizer=False, backward=False
    )
    return MethodPlan(rounds, memory, participants)


def _history(seeds: int, rounds: int) -> ArrayRecord:
    """What `History.as_arrays` sends for `rounds` rounds holding `seeds` scalars in all."""
    return arrays_record(
        {
            "seeds": PlannedArray("int64", (seeds,)),
            "values": PlannedArray("float32", (seeds,)),
            "counts": PlannedArray("int64", (rounds,)),
        }
    )
