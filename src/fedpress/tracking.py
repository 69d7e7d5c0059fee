"""A run's figures in the experiment trackers users already watch (`[tracking] backend`).

Each round's `metrics.jsonl` line goes to every backend as it is written: each number in it
(loss, accuracy, bytes up and down, memory, time, federated evaluation) a scalar at step =
round; the resolved config as the run's parameters at the start; the summary's numbers at the
end. A resumed run continues the same tracker run, and the rounds it redoes replace what the
crashed run had logged for them.

- `tensorboard`: event files in `<run>/tensorboard` (torch's SummaryWriter); a resumed run
  purges the steps it redoes.
- `mlflow`: a local file store, `<run>/mlruns` unless `tracking.mlflow_uri` names another
  store (no server needed; MLflow 3 calls the file store "maintenance mode" and wants
  `MLFLOW_ALLOW_FILE_STORE=true`, which fedpress sets for it); the MLflow run's id is kept in
  `<run>/mlflow_run_id`.

A backend is a class with `log_round(record)` and `finish(summary)`, built from
(config, out_dir, resume_round); adding one is adding it to `BACKENDS` and its name to
`config.TRACKING_BACKENDS`.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fedpress.errors import FedpressError

if TYPE_CHECKING:
    from fedpress.config import RunConfig

# backend name -> (the module it needs, the pip requirement that brings it)
REQUIRES = {
    "tensorboard": ("tensorboard", "tensorboard>=2.21.0"),
    "mlflow": ("mlflow", "mlflow-skinny>=3.17.2"),
}


class Tracker(Protocol):
    def log_round(self, record: dict[str, Any]) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...


def numbers(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a flat record (bools, lists, None and text left out)."""
    return {
        prefix + key: float(value)
        for key, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


class TensorBoardTracker:
    def __init__(self, config: RunConfig, out_dir: Path, resume_round: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_round is None else resume_round + 1
        self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=purge)
        if resume_round is None:
            self.writer.add_text("config", "```toml\n" + config.to_toml() + "\n```", 0)

    def log_round(self, record: dict[str, Any]) -> None:
        for key, value in numbers(record).items():
            if key != "round":
                self.writer.add_scalar(f"round/{key}", value, record["round"])
        self.writer.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        for key, value in numbers(summary).items():
            self.writer.add_scalar(f"summary/{key}", value, summary["rounds"])
        self.writer.close()


class MlflowTracker:
    def __init__(self, config: RunConfig, out_dir: Path, resume_round: int | None) -> None:
        from mlflow.tracking import MlflowClient

        uri = config.tracking.mlflow_uri
        if not uri:
            uri = (out_dir / "mlruns").resolve().as_uri()
            # MLflow 3 keeps its file store in maintenance mode and refuses it unless asked:
            # the store that needs no server and no database library beside the run.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        id_file = out_dir / "mlflow_run_id"
        if resume_round is not None and id_file.is_file():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = config.tracking.experiment
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(name)
        )
        self.run_id = self.client.create_run(experiment_id, run_name=out_dir.name).info.run_id
        id_file.write_text(self.run_id)
        from fedpress.config import flatten

        params = flatten(config.to_dict())
        self._log_batch(params=[(k, str(v)[:6000]) for k, v in sorted(params.items())])

    def log_round(self, record: dict[str, Any]) -> None:
        values = numbers(record)
        values.pop("round")
        self._log_batch(metrics=values, step=record["round"])

    def finish(self, summary: dict[str, Any]) -> None:
        self._log_batch(metrics=numbers(summary, "summary/"), step=summary["rounds"])
        self.client.set_terminated(self.run_id, "FINISHED")

    def _log_batch(
        self, metrics: dict[str, float] | None = None, step: int = 0, params: list | None = None
    ) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        metric_list = [Metric(k, v, now, step) for k, v in (metrics or {}).items()]
        param_list = [Param(k, v) for k, v in params or []]
        for start in range(0, max(len(metric_list), len(param_list)), 100):  # MLflow's limit
            self.client.log_batch(
                self.run_id,
                metrics=metric_list[start : start + 100],
                params=param_list[start : start + 100],
            )


BACKENDS: dict[str, type] = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}


def check_installed(config: RunConfig) -> None:
    """Each backend's library, checked where the run is recorded (never on the nodes)."""
    for name in config.tracking.backends():
        module, requirement = REQUIRES[name]
        if importlib.util.find_spec(module) is None:
            raise FedpressError(
                f"tracking.backend = {name!r} needs {module}: pip install '{requirement}'"
            )


def open_trackers(config: RunConfig, out_dir: Path, resume_round: int | None) -> list[Tracker]:
    check_installed(config)
    backends = config.tracking.backends()
    return [BACKENDS[name](config, Path(out_dir), resume_round) for name in backends]
