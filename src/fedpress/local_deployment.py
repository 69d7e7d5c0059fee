"""Run a Flower app on the deployment engine on this machine (loopback only).

`launch_local_deployment` starts one `flower-superlink` and N `flower-supernode`
processes on free 127.0.0.1 ports, submits the app with `flwr run`, streams the run's
logs, waits until the run has finished and always tears everything down again.

It exists so that tests and `docs/deployment.md` exercise the same code path that a
real multi-machine deployment uses (SuperLink/SuperNode/SuperExec processes, FAB
upload, run-config overrides, node config), not the simulation engine.

Written for flwr==1.41.0, where SuperLink serves its Fleet, Control and Runtime
(ServerAppIo) APIs over HTTP on a single port (`--host`/`--port`), and each SuperNode
serves its Runtime (ClientAppIo) API on its own `--port`. The `flwr` CLI finds the
SuperLink through a named connection in `$FLWR_HOME/config.toml`; this module points
`FLWR_HOME` at a temporary folder so the user's `~/.flwr` is never touched.
POSIX only (process groups).

Secure mode (`tls_dir=...`): SuperLink serves that one port over HTTPS
(`--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`), SuperNodes verify it with
`--root-certificates` and serve their own Runtime API over HTTPS too, and the CLI connection
names `root-certificates` instead of `insecure = true`. With `authenticate=True` the
SuperLink runs with `--enable-supernode-auth`: each SuperNode's public key is enrolled with
`flwr supernode register` before the node starts with `--auth-supernode-private-key`, and
`unenrolled_supernodes` extra nodes with throw-away keys show that unknown keys are refused.
`scripts/make_test_certs.py` writes test material in the layout expected in `tls_dir`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
import tomli_w

__all__ = ["CONNECTION_NAME", "DeploymentError", "DeploymentResult", "launch_local_deployment"]

RunConfigValue = str | int | float | bool

CONNECTION_NAME = "fedpress-local"
"""Name of the SuperLink connection written to the temporary `FLWR_HOME/config.toml`."""

_HOST = "127.0.0.1"
_LOG_TAIL_LINES = 40
_CLI_TIMEOUT_S = 120.0
_POLL_S = 0.5
# While `flwr log --stream` runs, the run status is only a safety net (each `flwr ls` costs
# ~2 s of CPU); once the stream has ended it is polled every _STATUS_POLL_S.
_STATUS_SAFETY_NET_S = 60.0
_STATUS_POLL_S = 5.0
_TERM_GRACE_S = 10.0
_SUPERNODE_READY_MARKER = "SuperNode ID:"
# File names in `tls_dir`, as written by scripts/make_test_certs.py.
_TLS_CA, _TLS_CERT, _TLS_KEY = "ca.crt", "server.pem", "server.key"
_NODE_KEY, _NODE_PUB = "supernode-{i}.key", "supernode-{i}.pub"
_PORT_IN_USE_MARKERS = ("address already in use", "errno 98", "errno 48")


class DeploymentError(RuntimeError):
    """The local deployment could not start, the run failed, or it timed out.

    The message names the process that failed and ends with the tail of its log.
    """


@dataclass
class DeploymentResult:
    """Outcome of a finished run (shaped like `subprocess.CompletedProcess`).

    `returncode` is 0 when Flower reports the run as `finished:completed`, else 1.
    `stdout` holds the run's streamed logs (ServerApp output); the SuperLink and
    SuperNode logs are files in `log_dir`.
    """

    args: list[str]
    returncode: int
    stdout: str
    run_id: int
    status: str
    status_details: str
    elapsed_s: float
    out_dir: Path
    log_dir: Path
    logs: dict[str, Path] = field(default_factory=dict)
    unenrolled_returncodes: dict[str, int | None] = field(default_factory=dict)
    """Exit code of each unenrolled SuperNode (`unenrolled-<j>`, log in `logs`); None if it
    was still running `startup_timeout_s` after its start, i.e. it was *not* refused."""

    def check_returncode(self) -> None:
        """Raise `DeploymentError` unless the run completed successfully."""
        if self.returncode != 0:
            raise DeploymentError(
                f"Flower run {self.run_id} ended with status {self.status!r} "
                f"({self.status_details}).\n--- run log (tail) ---\n" + _tail_text(self.stdout)
            )


@dataclass
class _Proc:
    """A started Flower process, its log file and how to tell it is ready."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _TlsFiles:
    """TLS certificates (and SuperNode keys) in `tls_dir`; see scripts/make_test_certs.py."""

    folder: Path
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_dir(cls, tls_dir: str | Path, num_node_keys: int) -> _TlsFiles:
        """Check that `tls_dir` holds the CA, server cert/key and `num_node_keys` key pairs."""
        folder = Path(tls_dir).expanduser().resolve()
        tls = cls(folder, folder / _TLS_CA, folder / _TLS_CERT, folder / _TLS_KEY)
        wanted = [tls.ca, tls.cert, tls.key]
        for i in range(num_node_keys):
            wanted.extend(tls.node_key(i))
        missing = [p.name for p in wanted if not p.is_file()]
        if missing:
            raise DeploymentError(
                f"Missing in tls_dir {folder}: {', '.join(missing)}. Create test material "
                f"with: python scripts/make_test_certs.py {folder} --supernodes {num_node_keys}"
            )
        return tls

    def node_key(self, i: int) -> tuple[Path, Path]:
        """SuperNode `i`'s (private key, public key) files."""
        return self.folder / _NODE_KEY.format(i=i), self.folder / _NODE_PUB.format(i=i)

    def server_args(self) -> list[str]:
        """Flags that make a SuperLink (or a SuperNode's Runtime API) serve HTTPS."""
        return [
            "--ssl-ca-certfile",
            str(self.ca),
            "--ssl-certfile",
            str(self.cert),
            "--ssl-keyfile",
            str(self.key),
        ]

    def ssl_context(self) -> ssl.SSLContext:
        """Client context that trusts only the test CA (for the health check)."""
        return ssl.create_default_context(cafile=str(self.ca))


@dataclass(frozen=True)
class _Link:
    """How to reach the running SuperLink."""

    port: int
    tls: _TlsFiles | None

    @property
    def address(self) -> str:
        return f"{_HOST}:{self.port}"

    def supernode_args(self) -> list[str]:
        """Flags for a SuperNode: where the SuperLink is and how to connect to it."""
        if self.tls is None:
            return ["--insecure", "--superlink", self.address]
        # --root-certificates verifies the SuperLink; the --ssl-* flags give the node's own
        # Runtime API (used by its SuperExec/ClientApps on loopback) HTTPS as well.
        return [
            "--superlink",
            self.address,
            "--root-certificates",
            str(self.tls.ca),
            *self.tls.server_args(),
        ]


def launch_local_deployment(
    app_dir: str | Path,
    config_path: str | Path,
    out_dir: str | Path,
    num_supernodes: int = 2,
    timeout_s: float = 600.0,
    *,
    run_config: Mapping[str, RunConfigValue] | None = None,
    log_dir: str | Path | None = None,
    startup_timeout_s: float = 60.0,
    check: bool = True,
    echo: bool = False,
    env: Mapping[str, str] | None = None,
    tls_dir: str | Path | None = None,
    authenticate: bool = False,
    unenrolled_supernodes: int = 0,
    expendable_supernodes: Sequence[int] = (),
    node_configs: Sequence[Mapping[str, RunConfigValue]] | None = None,
) -> DeploymentResult:
    """Run the app in `app_dir` on a throw-away local SuperLink with N SuperNodes.

    SuperNode `i` gets `--node-config` from `node_configs[i]` (each organisation's own data:
    `data-path`, optional `data-format`, `eval-path`, `model-path`); by default every node
    names the config's `data.source` and keeps part `i` of it
    (`data-path=... partition-id=i num-partitions=N`), which trains on what the simulation
    would. The run is submitted with run-config overrides `config=<abs config_path>` and
    `out=<abs out_dir>` plus `run_config`; every key must exist in the app's
    `[tool.flwr.app.config]` or the SuperLink rejects the run.

    Args:
        app_dir: Folder with the Flower app's `pyproject.toml` (e.g. the repo's `deploy/`).
        config_path: fedpress TOML file, passed to the ServerApp as `run_config["config"]`.
        out_dir: Output folder, passed as `run_config["out"]`; created if missing.
        num_supernodes: Number of SuperNodes (= number of clients); with `node_configs`,
            its length.
        timeout_s: Wall-clock limit for the whole run, start-up included.
        run_config: Extra run-config overrides (str, int, float or bool values).
        log_dir: Where process logs go; default `<out_dir>/flower-logs`.
        startup_timeout_s: Limit for SuperLink/SuperNodes to come up.
        check: Raise `DeploymentError` if the run does not complete successfully.
        echo: Also copy the run's log stream to this process's stdout.
        env: Extra environment variables for all Flower processes.
        tls_dir: Folder with `ca.crt`, `server.pem` and `server.key` (for 127.0.0.1); turns
            on TLS for SuperLink, SuperNodes and the `flwr` CLI. None: all insecure.
        authenticate: SuperNode authentication (needs `tls_dir`). SuperNode `i` uses
            `tls_dir/supernode-<i>.key`; its `.pub` is enrolled with
            `flwr supernode register` before the node starts. Other keys are refused.
        unenrolled_supernodes: Extra SuperNodes (needs `authenticate`) started with fresh,
            never-enrolled keys once the enrolled ones are up; they should be refused and
            exit. Their exit codes end up in `DeploymentResult.unenrolled_returncodes`.
        expendable_supernodes: Indices of SuperNodes that may die during the run (a test
            kills one to show that a vanished client costs only its own contribution);
            any other Flower process dying still fails the deployment.
        node_configs: One node config per SuperNode (see above); None: parts of the config's
            `data.source`.

    Returns:
        A `DeploymentResult`; with `check=True` only for a completed run.

    Raises:
        DeploymentError: A process died or did not start, `flwr run` was rejected,
            the run failed (with `check=True`) or `timeout_s` passed.
    """
    config_file = Path(config_path).expanduser().resolve()
    if not config_file.is_file():
        raise DeploymentError(f"fedpress config file not found: {config_file}")
    if node_configs is None:
        node_configs = shared_file_node_configs(config_file, num_supernodes)
    num_supernodes = len(node_configs)
    if num_supernodes < 1:
        raise ValueError("num_supernodes must be at least 1")
    if authenticate and tls_dir is None:
        raise ValueError("authenticate=True needs tls_dir: Flower authenticates only over TLS")
    if unenrolled_supernodes < 0 or (unenrolled_supernodes and not authenticate):
        raise ValueError("unenrolled_supernodes must be >= 0 and needs authenticate=True")
    tls = None
    if tls_dir is not None:
        tls = _TlsFiles.from_dir(tls_dir, num_supernodes if authenticate else 0)
    app_path = Path(app_dir).expanduser().resolve()
    if not (app_path / "pyproject.toml").is_file():
        raise DeploymentError(f"No pyproject.toml in Flower app folder {app_path}")
    out_path = Path(out_dir).expanduser().resolve()
    out_path.mkdir(parents=True, exist_ok=True)
    logs_path = Path(log_dir).expanduser().resolve() if log_dir else out_path / "flower-logs"
    logs_path.mkdir(parents=True, exist_ok=True)

    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    flwr_home = Path(tempfile.mkdtemp(prefix="fedpress-flwr-home-"))
    proc_env = _flower_env(flwr_home, env)
    procs: list[_Proc] = []
    outsiders: list[_Proc] = []  # unenrolled SuperNodes, expected to exit
    expendables: list[_Proc] = []  # SuperNodes allowed to die mid-run
    streamer: _Proc | None = None
    run_id: int | None = None
    finished = False
    try:
        superlink, link = _start_superlink(
            logs_path, proc_env, startup_timeout_s, tls, authenticate
        )
        procs.append(superlink)
        _write_connection_config(flwr_home, link)
        node_keys: list[Path | None] = [None] * num_supernodes
        if authenticate and tls is not None:
            pairs = [tls.node_key(i) for i in range(num_supernodes)]
            _enrol_supernodes([public for _, public in pairs], flwr_home, proc_env, procs)
            node_keys = [private for private, _ in pairs]
        supernodes = _start_supernodes(
            node_keys,
            [node_config_arg(c) for c in node_configs],
            link,
            logs_path,
            proc_env,
            startup_timeout_s,
            procs,
        )
        for index, supernode in enumerate(supernodes):
            (expendables if index in expendable_supernodes else procs).append(supernode)
        outsiders.extend(
            _start_unenrolled(
                unenrolled_supernodes, link, logs_path, proc_env, flwr_home, startup_timeout_s
            )
        )

        overrides: dict[str, RunConfigValue] = {"config": str(config_file), "out": str(out_path)}
        overrides.update(run_config or {})
        run_id = _submit_run(app_path, overrides, flwr_home, proc_env, procs)

        streamer = _start_process(
            "flwr log",
            [_exe("flwr"), "log", str(run_id), CONNECTION_NAME, "--stream"],
            logs_path / "run.log",
            proc_env,
            cwd=flwr_home,
        )
        status, details = _wait_for_run(
            run_id,
            streamer,
            procs,
            flwr_home,
            proc_env,
            deadline,
            echo,
            bystanders=[*outsiders, *expendables],
        )
        finished = True
        stream_log = _finish_streamer(streamer)
        streamer = None
        refused = _wait_for_exit(outsiders, startup_timeout_s)
        result = DeploymentResult(
            args=[_exe("flwr"), "run", str(app_path), CONNECTION_NAME],
            returncode=0 if status == "finished:completed" else 1,
            stdout=stream_log,
            run_id=run_id,
            status=status,
            status_details=details,
            elapsed_s=time.monotonic() - started,
            out_dir=out_path,
            log_dir=logs_path,
            logs={p.name: p.log_path for p in [*procs, *expendables, *outsiders]}
            | {"run": logs_path / "run.log"},
            unenrolled_returncodes=refused,
        )
        if check:
            result.check_returncode()
        return result
    except BaseException:
        if run_id is not None and not finished and procs and procs[0].popen.poll() is None:
            _stop_run(run_id, flwr_home, proc_env)
        raise
    finally:
        if streamer is not None:
            _stop_process(streamer)
        for proc in reversed([*procs, *expendables, *outsiders]):  # SuperLink last
            _stop_process(proc)
        shutil.rmtree(flwr_home, ignore_errors=True)


# --- start-up -------------------------------------------------------------------------


def _flower_env(flwr_home: Path, extra: Mapping[str, str] | None) -> dict[str, str]:
    """Environment for every Flower process: private FLWR_HOME, no network side effects."""
    env = dict(os.environ)
    env.update(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_DISABLE_UPDATE_CHECK": "1",  # else every process POSTs to flower.ai
            "FLWR_TELEMETRY_ENABLED": "0",
            # SuperLink would otherwise `uv sync` the app into a fresh venv per run.
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # SuperLink/SuperNode spawn `flower-superexec`, `flwr-serverapp` and `flwr-clientapp`
    # by bare name, so this interpreter's bin folder must be on PATH.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


def _exe(name: str) -> str:
    """Path of a Flower console script next to this interpreter (fallback: PATH)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(f"`{name}` not found; is flwr installed in this environment?")
    return found


def _free_port() -> int:
    """A currently free TCP port on loopback (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _start_process(
    name: str, cmd: Sequence[str], log_path: Path, env: Mapping[str, str], cwd: Path | None = None
) -> _Proc:
    """Start `cmd` in its own session (so its process group can be killed) logging to a file."""
    log_file = log_path.open("wb")
    popen = subprocess.Popen(
        list(cmd),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
    )
    return _Proc(name=name, popen=popen, log_path=log_path, log_file=log_file)


def _start_superlink(
    logs_path: Path,
    env: Mapping[str, str],
    startup_timeout_s: float,
    tls: _TlsFiles | None = None,
    authenticate: bool = False,
    attempts: int = 3,
) -> tuple[_Proc, _Link]:
    """Start a SuperLink on a free port; retry if the port was taken meanwhile."""
    security = ["--insecure"] if tls is None else tls.server_args()
    if authenticate:
        security.append("--enable-supernode-auth")
    scheme, context = ("http", None) if tls is None else ("https", tls.ssl_context())
    for attempt in range(attempts):
        port = _free_port()
        proc = _start_process(
            "superlink",
            [
                _exe("flower-superlink"),
                *security,
                "--host",
                _HOST,
                "--port",
                str(port),
                "--isolation",
                "subprocess",
                "--disable-runtime-dependency-installation",
            ],
            logs_path / "superlink.log",
            env,
        )
        deadline = time.monotonic() + startup_timeout_s
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                break
            if _http_ok(f"{scheme}://{_HOST}:{port}/health", context):
                return proc, _Link(port, tls)
            time.sleep(_POLL_S)
        _stop_process(proc)
        if attempt + 1 < attempts and _port_clash(proc.log_path):
            continue
        raise _process_error(proc, f"did not become ready within {startup_timeout_s:.0f}s")
    raise AssertionError("unreachable")


def shared_file_node_configs(config_file: Path, count: int) -> list[dict[str, RunConfigValue]]:
    """Node configs that give node `i` part `i` of the config's `data.source` (one machine,
    one file: what the simulation trains on, through the deployment's node-local data)."""
    from fedpress.config import load_config

    source = load_config(str(config_file)).data.source
    if not source.startswith("builtin:") and Path(source).expanduser().exists():
        source = str(Path(source).expanduser().resolve())
    return [{"data-path": source, "partition-id": i, "num-partitions": count} for i in range(count)]


def node_config_arg(config: Mapping[str, RunConfigValue]) -> str:
    """A node config as `flower-supernode --node-config` reads it: `key=<TOML value>` pairs."""
    return " ".join(f"{key}={_toml_value(value)}" for key, value in _run_config(config).items())


def _start_supernodes(
    keys: Sequence[Path | None],
    node_configs: Sequence[str],
    link: _Link,
    logs_path: Path,
    env: Mapping[str, str],
    startup_timeout_s: float,
    running: list[_Proc],
) -> list[_Proc]:
    """Start one SuperNode per entry of `keys` (its auth private key or None) and wait
    until each has connected to the SuperLink."""
    nodes: list[_Proc] = []
    try:
        for i, (key, node_config) in enumerate(zip(keys, node_configs, strict=True)):
            nodes.append(
                _start_supernode(
                    f"supernode-{i}",
                    link,
                    logs_path,
                    env,
                    node_config=node_config,
                    private_key=key,
                )
            )
        deadline = time.monotonic() + startup_timeout_s
        pending = list(nodes)
        while pending:
            for proc in [*running, *nodes]:
                if proc.popen.poll() is not None:
                    raise _process_error(proc, "exited during start-up")
            pending = [p for p in pending if _SUPERNODE_READY_MARKER not in _read_log(p.log_path)]
            if pending and time.monotonic() > deadline:
                raise _process_error(
                    pending[0], f"did not register within {startup_timeout_s:.0f}s"
                )
            if pending:
                time.sleep(_POLL_S)
    except BaseException:
        for proc in nodes:
            _stop_process(proc)
        raise
    return nodes


def _start_supernode(
    name: str,
    link: _Link,
    logs_path: Path,
    env: Mapping[str, str],
    *,
    node_config: str | None = None,
    private_key: Path | None = None,
    extra_args: Sequence[str] = (),
) -> _Proc:
    """Start a SuperNode (optionally with a node config and an auth private key)."""
    cmd = [
        _exe("flower-supernode"),
        *link.supernode_args(),
        "--host",
        _HOST,
        "--port",
        str(_free_port()),  # its ClientAppIo/Runtime API
    ]
    if node_config is not None:
        cmd += ["--node-config", node_config]
    if private_key is not None:
        cmd += ["--auth-supernode-private-key", str(private_key)]
    return _start_process(name, [*cmd, *extra_args], logs_path / f"{name}.log", env)


def _cli_failure(
    completed: subprocess.CompletedProcess, procs: Sequence[_Proc]
) -> tuple[str, str] | None:
    """(message, detail about a dead Flower process) when a `--format json` call failed.

    `flwr ... --format json` can exit 0 on failure: its `success` field is what counts.
    """
    payload = _parse_json(completed.stdout)
    if completed.returncode == 0 and payload and payload.get("success"):
        return None
    message = (payload or {}).get("error-message") or completed.stdout + completed.stderr
    dead = [p for p in procs if p.popen.poll() is not None]
    detail = "\n" + str(_process_error(dead[0], "is not running")) if dead else ""
    return str(message), detail


def _enrol_supernodes(
    public_keys: Sequence[Path], flwr_home: Path, env: Mapping[str, str], procs: list[_Proc]
) -> None:
    """Register each public key with the SuperLink (`flwr supernode register`)."""
    for public_key in public_keys:
        completed = _cli(
            ["supernode", "register", str(public_key), CONNECTION_NAME, "--format", "json"],
            flwr_home,
            env,
            timeout=_CLI_TIMEOUT_S,
            check=False,
        )
        failure = _cli_failure(completed, procs)
        if failure is not None:
            message, detail = failure
            raise DeploymentError(
                f"`flwr supernode register {public_key}` failed: {message}{detail}"
            )


def _start_unenrolled(
    count: int,
    link: _Link,
    logs_path: Path,
    env: Mapping[str, str],
    flwr_home: Path,
    startup_timeout_s: float,
) -> list[_Proc]:
    """Start `count` SuperNodes whose fresh keys were never enrolled (they should be refused).

    `--max-wait-time` bounds their connection retries, so even a node that cannot reach
    the SuperLink at all gives up within `startup_timeout_s`.
    """
    nodes = []
    for j in range(count):
        key = _write_throwaway_node_key(flwr_home / f"unenrolled-{j}.key")
        nodes.append(
            _start_supernode(
                f"unenrolled-{j}",
                link,
                logs_path,
                env,
                private_key=key,
                extra_args=["--max-wait-time", str(startup_timeout_s)],
            )
        )
    return nodes


def _write_throwaway_node_key(path: Path) -> Path:
    """Write a new EC P-384 private key in OpenSSH format (as SuperNodes load it)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def _write_connection_config(flwr_home: Path, link: _Link) -> None:
    """Write the `flwr` CLI's connection file; it is read from `$FLWR_HOME/config.toml`."""
    connection: dict[str, str | bool] = {"address": link.address}
    if link.tls is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(link.tls.ca)  # absolute path
    (flwr_home / "config.toml").write_text(
        tomli_w.dumps({"superlink": {"default": CONNECTION_NAME, CONNECTION_NAME: connection}}),
        encoding="utf-8",
    )


# --- run submission and monitoring -----------------------------------------------------


def _run_config(values: Mapping[str, RunConfigValue]) -> dict[str, RunConfigValue]:
    """The values, checked: a Flower run or node config holds str, int, float or bool only,
    and tomli_w would also write lists, tables, dates and nan without complaint."""
    for value in values.values():
        if not isinstance(value, str | int | float):
            raise TypeError(f"run-config values must be str, int, float or bool, got {type(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"run-config float must be finite, got {value}")
    return dict(values)


def _toml_value(value: RunConfigValue) -> str:
    """One value as TOML: tomli_w writes documents only, so the right side of `v = ...`."""
    return tomli_w.dumps({"v": value}).removeprefix("v = ").rstrip("\n")


def _submit_run(
    app_path: Path,
    overrides: Mapping[str, RunConfigValue],
    flwr_home: Path,
    env: Mapping[str, str],
    procs: list[_Proc],
) -> int:
    """`flwr run` the app with overrides from a TOML file; return the run id."""
    # One `--run-config <file>.toml` avoids the CLI's whitespace/quote parsing of
    # `k=v` pairs (paths with spaces, or a bare `x.toml` value read as a file).
    override_file = flwr_home / "run-config-overrides.toml"
    override_file.write_text(tomli_w.dumps(_run_config(overrides)), encoding="utf-8")
    completed = _cli(
        [
            "run",
            str(app_path),
            CONNECTION_NAME,
            "--run-config",
            str(override_file),
            "--format",
            "json",
        ],
        flwr_home,
        env,
        timeout=_CLI_TIMEOUT_S,
        check=False,
    )
    payload = _parse_json(completed.stdout)
    failure = _cli_failure(completed, procs)
    if failure is not None:
        message, detail = failure
        hint = ""
        if "Invalid run configuration" in str(message):
            hint = (
                f"\nEvery run-config key ({', '.join(overrides)}) must be declared in "
                f"[tool.flwr.app.config] of {app_path / 'pyproject.toml'}."
            )
        raise DeploymentError(f"`flwr run {app_path}` was rejected: {message}{hint}{detail}")
    return int(payload["run-id"])


def _wait_for_run(
    run_id: int,
    streamer: _Proc,
    procs: list[_Proc],
    flwr_home: Path,
    env: Mapping[str, str],
    deadline: float,
    echo: bool,
    bystanders: Sequence[_Proc] = (),
) -> tuple[str, str]:
    """Block until the run is `finished:*`; fail fast if a Flower process in `procs` dies.

    `bystanders` (unenrolled SuperNodes) may exit at any time; they are only polled, so
    that an exited one is reaped and its SuperExec child notices and exits too.
    """
    echoed = 0
    status, details = "unknown", ""
    next_status_check = time.monotonic() + _STATUS_SAFETY_NET_S
    stream_done = False
    while True:
        if echo:
            text = _read_log(streamer.log_path)
            sys.stdout.write(text[echoed:])
            sys.stdout.flush()
            echoed = len(text)
        for proc in procs:
            if proc.popen.poll() is not None:
                raise _process_error(proc, f"died while run {run_id} was in progress")
        for proc in bystanders:
            proc.popen.poll()
        # The log stream ends when the run finishes (its exit code is 0 either way, so
        # the run status is what counts); also poll the status now and then in case the
        # stream hangs.
        if not stream_done and streamer.popen.poll() is not None:
            stream_done = True
            next_status_check = time.monotonic()
        if time.monotonic() >= next_status_check:
            status, details = _run_status(run_id, flwr_home, env)
            if status.startswith("finished"):
                return status, details
            interval = _STATUS_POLL_S if stream_done else _STATUS_SAFETY_NET_S
            next_status_check = time.monotonic() + interval
        if time.monotonic() > deadline:
            status, details = _run_status(run_id, flwr_home, env)
            raise DeploymentError(
                f"Flower run {run_id} did not finish before the timeout (status "
                f"{status}: {details}).\n--- run log (tail) ---\n"
                + _tail_text(_read_log(streamer.log_path))
            )
        time.sleep(_POLL_S)


def _run_status(run_id: int, flwr_home: Path, env: Mapping[str, str]) -> tuple[str, str]:
    """Return (status, details) of a run, e.g. ("finished:completed", "N/A")."""
    completed = _cli(
        ["ls", CONNECTION_NAME, "--run-id", str(run_id), "--format", "json"],
        flwr_home,
        env,
        timeout=_CLI_TIMEOUT_S,
        check=False,
    )
    payload = _parse_json(completed.stdout) or {}
    runs = payload.get("runs") or []
    if not payload.get("success") or not runs:
        return "unknown", str(payload.get("error-message") or completed.stderr.strip())
    return str(runs[0].get("status", "unknown")), str(runs[0].get("status-details", ""))


def _stop_run(run_id: int, flwr_home: Path, env: Mapping[str, str]) -> None:
    """Best effort `flwr stop` so the ServerApp is told to end before the teardown."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        _cli(["stop", str(run_id), CONNECTION_NAME], flwr_home, env, timeout=30.0, check=False)


def _cli(
    args: Sequence[str],
    flwr_home: Path,
    env: Mapping[str, str],
    timeout: float,
    check: bool,
) -> subprocess.CompletedProcess[str]:
    """Run the `flwr` CLI with the private FLWR_HOME as working directory."""
    # cwd=flwr_home: `flwr` treats a connection name that is also a folder with a
    # pyproject.toml in the cwd as legacy usage, so keep it away from project folders.
    return subprocess.run(
        [_exe("flwr"), *args],
        capture_output=True,
        text=True,
        env=dict(env),
        cwd=flwr_home,
        timeout=timeout,
        check=check,
    )


def _parse_json(text: str) -> dict[str, Any] | None:
    """Parse the JSON object that `flwr ... --format json` prints (ignoring other lines)."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        value = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _wait_for_exit(procs: Sequence[_Proc], limit_s: float) -> dict[str, int | None]:
    """Exit code of each process, waiting until `limit_s` after its start (None: running)."""
    codes: dict[str, int | None] = {}
    for proc in procs:
        remaining = limit_s - (time.monotonic() - proc.started)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=max(remaining, 0.1))
        codes[proc.name] = proc.popen.poll()
    return codes


def _finish_streamer(streamer: _Proc) -> str:
    """Give `flwr log --stream` a moment to flush, stop it and return what it wrote."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        streamer.popen.wait(timeout=10.0)
    _stop_process(streamer)
    return _read_log(streamer.log_path)


# --- teardown and diagnostics ------------------------------------------------------------


def _descendants(pid: int) -> list[psutil.Process]:
    """All descendants of `pid` (none if it is gone)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_all(kids: Sequence[psutil.Process], pgid: int, sig: signal.Signals) -> None:
    """Send `sig` to a process group and to each process, ignoring ones already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for kid in kids:
        with contextlib.suppress(psutil.Error):  # psutil checks the PID was not reused
            kid.send_signal(sig)


def _stop_process(proc: _Proc) -> None:
    """SIGTERM the process, its group and its descendants; SIGKILL what is left.

    Descendants are collected first because SuperLink starts its SuperExec in a new
    session (outside SuperLink's process group), and the SuperExec only notices its
    parent is gone once the parent has been reaped.
    """
    popen = proc.popen
    kids = _descendants(popen.pid)
    if popen.poll() is None or kids:
        _signal_all(kids, popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=_TERM_GRACE_S)
        grace_end = time.monotonic() + 2.0
        while time.monotonic() < grace_end and any(_alive(k) for k in kids):
            time.sleep(0.1)
        _signal_all([k for k in kids if _alive(k)], popen.pid, signal.SIGKILL)
        if popen.poll() is None:
            popen.kill()
        popen.wait()
    proc.log_file.close()


def _alive(process: psutil.Process) -> bool:
    """Whether the process still runs (zombies count as gone: they wait only to be reaped)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    """True if GET `url` answers 2xx within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1.0, context=context) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _read_log(path: Path) -> str:
    """A log file's text ('' if missing)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _tail_text(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    """Last `lines` lines of `text`."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _port_clash(log_path: Path) -> bool:
    """Whether a log says the port was already taken."""
    text = _read_log(log_path).lower()
    return any(marker in text for marker in _PORT_IN_USE_MARKERS)


def _process_error(proc: _Proc, what: str) -> DeploymentError:
    """A `DeploymentError` naming the process, its exit code and its log tail."""
    code = proc.popen.poll()
    state = "still running" if code is None else f"exit code {code}"
    return DeploymentError(
        f"{proc.name} {what} ({state}); log: {proc.log_path}\n"
        f"--- {proc.name} log (tail) ---\n{_tail_text(_read_log(proc.log_path))}"
    )
