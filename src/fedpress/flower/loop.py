"""The one federation loop every federated method runs through, inside the ServerApp.

Read top to bottom: connect (which node holds which partition; the run config goes to every
node once), resume or start, the method's preparation phase (CG-FedLLM's TGAP), then per
round: sample, one or more exchanges (configure_train, send, collect and check,
aggregate_train; retried when too few valid replies come back), evaluate, record, checkpoint;
then the final evaluation.

A method supplies a `FederatedServer` (`flower.server`); the parts live beside this file:
`handshake` (connecting), `resume` (the checkpoint), `sampling`, `exchange` (one exchange and
the round's costs), `evaluation` (federated evaluation on the nodes).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flwr.serverapp import Grid
from tqdm import tqdm

from fedpress.accounting import MB
from fedpress.errors import FedpressError
from fedpress.flower.evaluation import FederatedEvaluation
from fedpress.flower.exchange import RoundStats, run_exchange
from fedpress.flower.handshake import config_for_nodes, connect
from fedpress.flower.progress import ProgressGrid
from fedpress.flower.resume import checkpoint_round, restore_run
from fedpress.flower.sampling import Sampler
from fedpress.flower.server import FederatedServer
from fedpress.run_files import RoundRecord, RunRecorder

log = logging.getLogger("fedpress")


def run_federation(
    grid: Grid,
    server: FederatedServer,
    parallel_clients: int,
    resume: bool = False,
    deployed: bool = False,
) -> dict[str, Any]:
    """The whole federated run; the summary of `summary.json`. `deployed`: nodes bring their
    own data and the messages carry no path (`config_for_nodes`)."""
    config, task, out_dir = server.config, server.task, server.out_dir

    # Resume or start.
    sampler = Sampler(config)
    resumed = restore_run(server, sampler) if resume else None
    if resumed is not None:
        first_round = resumed.round + 1
        recorder = RunRecorder(out_dir, config, resumed.round, resumed.elapsed_s)
        log.warning("resuming %s after round %d", out_dir, resumed.round)
    else:
        first_round = 1
        recorder = RunRecorder(out_dir, config)

    # Connect. It costs messages too: round 0's, or the first resumed round's.
    setup_round = 0 if first_round == 1 else first_round
    setup_stats = server.stats.setdefault(setup_round, RoundStats(started=time.perf_counter()))
    sent = config_for_nodes(config) if deployed else config
    (out_dir / "sent_run_config.json").write_text(sent.to_json())
    # Every exchange, the first query and TGAP's included, polls for replies every 0.2 s
    # (Flower's deployment grid: every 3 s).
    nodes = connect(ProgressGrid(grid, "query"), config, setup_stats, sent)
    server.partitions = nodes.partitions
    evaluators = FederatedEvaluation(config, nodes.with_eval)
    grid = ProgressGrid(grid, "exchange")

    # The method's preparation phase (CG-FedLLM's TGAP).
    server.prepare(grid, resume)

    eval_subset = task.encode_all(task.splits.eval_examples[: config.eval.per_round_examples])
    progress = tqdm(
        total=config.rounds, initial=first_round - 1, desc=f"{config.method} rounds", unit="round"
    )

    def evaluate_and_record(server_round: int) -> None:
        """Score the global model here (and on the nodes), and log the round's line."""
        task.set_adapter(server.global_state())
        result = task.evaluate(eval_subset)
        stats = server.stats.get(server_round, RoundStats())
        record = stats.round_record(server_round, result, parallel_clients)
        evaluators.run(grid, server, server_round, record)
        recorder.log_round(record)
        progress.set_postfix_str(_postfix(record))

    try:
        if first_round == 1:
            evaluate_and_record(0)
        for server_round in range(first_round, config.rounds + 1):
            stats = server.stats.setdefault(server_round, RoundStats(started=time.perf_counter()))
            # Sample.
            participants = sampler.sample(sorted(server.partitions.values()))
            if not participants:
                log.warning("round %d: no client sampled", server_round)
                server.nobody_sampled(server_round)
            # Train: configure_train -> send and collect -> aggregate_train, per exchange.
            exchanges = server.exchanges(server_round, participants) if participants else []
            steps = tqdm(exchanges, desc=f"round {server_round}", unit="exchange", leave=False)
            for index, exchange in enumerate(steps if len(exchanges) > 1 else exchanges):
                run_exchange(grid, server, server_round, index, exchange, stats)
            if participants and stats.ok < config.federation.min_replies:
                raise FedpressError(
                    f"round {server_round} got too few valid client replies ({stats.ok}, "
                    f"federation.min_replies = {config.federation.min_replies}); stopped. The "
                    f"checkpoint of round {server_round - 1} is intact: `fedpress run --resume "
                    f"<run folder>` continues"
                )
            stats.finish()
            # Evaluate, record, checkpoint.
            evaluate_and_record(server_round)
            progress.update(1)
            checkpoint_round(server, sampler, server_round, recorder.elapsed())
    finally:
        progress.close()

    # The final evaluation, on the whole held-out split.
    final_state = server.global_state()
    task.set_adapter(final_state)
    final = task.evaluate(task.encode_all(task.splits.eval_examples))
    return recorder.finish(
        server.final_weights(),
        final.loss,
        final.accuracy,
        final.examples,
        {**server.summary_extra(), "final_eval_s": final.seconds},
        weights_file=server.weights_file,
    )


def _postfix(record: RoundRecord) -> str:
    acc = "" if record.accuracy is None else f" acc={100 * record.accuracy:.1f}%"
    return f"eval_loss={record.eval_loss:.3f}{acc} up={record.cum_bytes_up / MB:.1f}MB"
