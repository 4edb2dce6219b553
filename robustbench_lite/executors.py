"""Where the cells of a benchmark grid are computed: in this process (``local``, the default, no
extra install) or as tasks on a Ray cluster (``ray``, ``pip install robustbench_lite[ray]``).

The unit of work is a :class:`Task`: one model under one attack over the profile's eps grid (the
gradient-masking checks need every eps of a model's first attack, so a task never splits an eps
grid). Both executors run the same function, :func:`run_task`, which evaluates without a store
and hands back the rows; the driver alone writes the SQLite store (one writer), one transaction
per task, so a task is stored whole or not at all. Tasks whose cells are all stored are never
submitted. A task that raises is recorded as failed, with its error, and never as a result; a
Ray worker that dies mid-task (killed, out of memory, node lost) has its task retried up to
``max_retries`` times before it is recorded as failed.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
import tempfile
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .validation import check_int
from .checks import CheckConfig
from .data import Split
from .engine import EvalResult, evaluate
from .zoo import LoadedModel
from . import atomic, plugins

_log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Task:
    """One model under one attack at every eps of a grid: ``len(keys)`` cells."""

    model: str
    attack: str
    eps: tuple[float, ...]
    norm: str
    n: int
    checks: bool
    keys: tuple[str, ...]  # the store keys of its cells, one per eps (engine.cell_keys)
    check_attacks: tuple[str, ...] | None = None  # what the checks' binarization test runs (the row's attacks)
    device: str = "cpu"  # where the driver planned its cells (their keys hold the device type)

    @property
    def label(self) -> str:
        return f"{self.model} / {self.attack}"


@dataclass(frozen=True)
class Done:
    """A finished task: its results, each with the configuration its key hashes and its
    provenance; the verdicts of its checks (key, config, verdicts); and the models it evaluated
    (identity, card, source)."""

    task: Task
    rows: tuple[tuple[EvalResult, Any, dict[str, Any]], ...]
    checks: tuple[tuple[str, dict[str, Any], Any], ...] = ()
    models: tuple[tuple[Any, Any, str | None], ...] = ()


@dataclass(frozen=True)
class Failed:
    """A task that raised, or whose worker died more often than the retry bound allows."""

    task: Task
    error: str
    attempts: int = 1


@dataclass
class Progress:
    """Cells done, running, failed and queued (a task counts as ``len(task.keys)`` cells)."""

    done: int = 0
    running: int = 0
    failed: int = 0
    queued: int = 0

    def __str__(self) -> str:
        return f"{self.done} done, {self.running} running, {self.failed} failed, {self.queued} queued"


@dataclass(frozen=True)
class Plugin:
    """A plugin file shipped by content, so that a worker on another machine can load it."""

    name: str
    source: str

    @classmethod
    def read(cls, path: str | Path) -> "Plugin":
        path = Path(path)
        return cls(path.name, path.read_text())

    def load(self) -> None:
        digest = hashlib.sha256(self.source.encode()).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / f"rbl-plugins-{os.getuid()}" / digest
        path = folder / self.name
        if not path.is_file():
            atomic.write_text(path, self.source)
        plugins.load(path)


class _Collector:
    """The store a task evaluates into: it keeps what would be written and reads nothing."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[Any, dict[str, Any]]] = {}
        self.checks: list[tuple[str, dict[str, Any], Any]] = []
        self.models: list[tuple[Any, Any, str | None]] = []

    def get(self, key: str) -> None:
        return None

    def put(self, result: EvalResult, config: Any, provenance: dict[str, Any] | None = None) -> None:
        self.rows[result.key] = (config, provenance or {})

    def get_checks(self, key: str) -> None:
        return None

    def put_checks(self, key: str, config: dict[str, Any], verdicts: Any) -> None:
        self.checks.append((key, config, verdicts))

    def put_model(self, identity: Any, card: Any = None, source: str | None = None) -> None:
        self.models.append((identity, card, source))


def run_task(task: Task, model: LoadedModel, test: Split, plugins: Sequence[Plugin] = ()) -> Done:
    """Evaluate one task in this process, exactly as ``profiles.run`` always has."""
    for plugin in plugins:
        plugin.load()
    sink = _Collector()
    results = evaluate(model, test, [task.attack], task.eps, norm=task.norm, n=task.n, store=sink, device=task.device,
                       checks=CheckConfig(attacks=task.check_attacks) if task.checks else None, escalate=None)  # the grid escalates its worst cases
    got = tuple(r.key for r in results)
    if got != task.keys:  # the driver and the worker disagree on what the cell is: never store it
        raise RuntimeError(f"{task.label}: the worker computed cells {got} but the driver planned {task.keys} "
                           "(different library versions, code or data on the worker?)")
    return Done(task, tuple((r, *sink.rows[r.key]) for r in results), tuple(sink.checks), tuple(sink.models))


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Executor(ABC):
    """Runs tasks and yields a :class:`Done` or :class:`Failed` for each, in completion order."""

    name: str

    @abstractmethod
    def run(self, tasks: Sequence[Task], models: dict[str, LoadedModel], test: Split, plugins: Sequence[Plugin],
            progress: Progress) -> Iterator[Done | Failed]:
        ...


class LocalExecutor(Executor):
    """One task after another in this process (the default)."""

    name = "local"

    def run(self, tasks: Sequence[Task], models: dict[str, LoadedModel], test: Split, plugins: Sequence[Plugin],
            progress: Progress) -> Iterator[Done | Failed]:
        for task in tasks:
            cells = len(task.keys)
            progress.queued -= cells
            progress.running += cells
            try:
                # The plugins are loaded in this process already (rbl --plugin, or the caller).
                outcome: Done | Failed = run_task(task, models[task.model], test)
            except Exception as exc:  # noqa: BLE001 - recorded as the cell's failure, never as a result
                _log.debug("task %s failed:\n%s", task.label, traceback.format_exc())
                outcome = Failed(task, _error(exc))
            progress.running -= cells
            yield outcome


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ValueError("the ray executor needs Ray, which is not installed: pip install 'robustbench_lite[ray]'") from exc
    return ray


def _ray_task(task: Task, model: LoadedModel, test: Split, plugins: Sequence[Plugin], threads: int) -> Done:
    import torch

    torch.set_num_threads(threads)  # the CPUs the task declared, not every core of the node
    if task.device.startswith("cuda"):  # Ray shows a task the GPU it was given as its only one
        task = dataclasses.replace(task, device="cuda")
    return run_task(task, model, test, plugins)


@dataclass
class RayExecutor(Executor):
    """Each task is a Ray task declaring ``cpus_per_task`` CPUs (and ``gpus_per_task`` GPUs).

    Args:
        address: the cluster to join (``ray start --head`` prints it; ``auto`` finds a local
            one); None starts a private Ray on this machine, unless ``RAY_ADDRESS`` is set.
        cpus_per_task: CPUs each task declares, and the torch threads it uses.
        gpus_per_task: GPUs each task declares (``make`` sets 1 for a CUDA device, else 0).
        max_retries: how often a task whose worker died is run again before it is recorded
            as failed. An exception raised by the task itself is never retried: it would
            raise again.
        init: extra keyword arguments for ``ray.init`` (tests pass ``num_cpus``).
    """

    address: str | None = None
    cpus_per_task: int = 1
    gpus_per_task: float = 0
    max_retries: int = 3
    init: dict[str, Any] = field(default_factory=dict)
    name = "ray"

    def __post_init__(self) -> None:
        _import_ray()
        check_int("ray executor", "cpus_per_task", self.cpus_per_task, 1)
        check_int("ray executor", "max_retries", self.max_retries, 0)
        if not isinstance(self.gpus_per_task, (int, float)) or self.gpus_per_task < 0:
            raise ValueError(f"ray executor: gpus_per_task must be >= 0, got {self.gpus_per_task!r}")

    def _ray(self) -> Any:
        ray = _import_ray()
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False, **self.init)
            except ConnectionError as exc:
                raise ValueError(f"cannot reach the Ray cluster at {self.address or os.environ.get('RAY_ADDRESS')!r}: {exc} "
                                 "(start one with `ray start --head`, or leave out --ray-address for a private one)") from exc
        return ray

    def run(self, tasks: Sequence[Task], models: dict[str, LoadedModel], test: Split, plugins: Sequence[Plugin],
            progress: Progress) -> Iterator[Done | Failed]:
        ray = self._ray()
        remote = ray.remote(_ray_task).options(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task,
                                               max_retries=self.max_retries, retry_exceptions=False)
        test_ref = ray.put(test)
        # Shipped from the CPU: each worker moves its model to the device it was given.
        model_refs = {name: ray.put(dataclasses.replace(models[name], model=copy.deepcopy(models[name].model).cpu()))
                      for name in {t.model for t in tasks}}
        # Submit no more tasks than the cluster can run at once: the submitted ones are then the
        # running ones, and the progress line tells running from queued.
        resources = ray.cluster_resources()
        slots = max(1, int(resources.get("CPU", 1) // self.cpus_per_task))
        if self.gpus_per_task:
            slots = max(1, min(slots, int(resources.get("GPU", 0) // self.gpus_per_task)))
        todo = list(tasks)
        flying: dict[Any, Task] = {}
        while todo or flying:
            while todo and len(flying) < slots:
                task = todo.pop(0)
                ref = remote.remote(task, model_refs[task.model], test_ref, tuple(plugins), self.cpus_per_task)
                flying[ref] = task
                progress.queued -= len(task.keys)
                progress.running += len(task.keys)
            (ref,), _ = ray.wait(list(flying), num_returns=1)
            task = flying.pop(ref)
            progress.running -= len(task.keys)
            yield self._outcome(ray, ref, task)

    def _outcome(self, ray: Any, ref: Any, task: Task) -> Done | Failed:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the task raised: its own error, not Ray's wrapper
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            return Failed(task, _error(cause))
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.OutOfMemoryError, ray.exceptions.TaskUnschedulableError) as exc:
            return Failed(task, f"worker died {self.max_retries + 1} times: {_error(exc)}", self.max_retries + 1)
        except Exception as exc:  # noqa: BLE001 - any other Ray error (lost object, ...) fails the task, not the grid
            return Failed(task, _error(exc))


def make(name: str, *, address: str | None = None, cpus_per_task: int = 1, max_retries: int = 3,
         device: str = "cpu") -> Executor:
    """An executor by name (the CLI's ``--executor``); a Ray task declares one GPU when the
    device is a CUDA one."""
    if name == "local":
        if address is not None:
            raise ValueError("--ray-address needs --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address=address, cpus_per_task=cpus_per_task, max_retries=max_retries,
                           gpus_per_task=1 if str(device).startswith("cuda") else 0)
    raise ValueError(f"unknown executor {name!r}; allowed: {', '.join(EXECUTORS)}")


def execute(tasks: Sequence[Task], store: Any, executor: Executor, models: dict[str, LoadedModel], test: Split, *,
            plugins: Sequence[Plugin] = (), on_progress: Callable[[Progress, Done | Failed], Any] | None = None,
            ) -> tuple[list[EvalResult], list[Failed]]:
    """Run the tasks not yet stored; the caller's store receives every finished task's rows
    (and every failure) here, in this process. Returns the results of every task, read from
    the store for those already there, and the failures."""
    stored = {t for t in tasks if all(store.has(k) for k in t.keys)}
    pending = [t for t in tasks if t not in stored]
    progress = Progress(done=sum(len(t.keys) for t in stored), queued=sum(len(t.keys) for t in pending))
    failures: list[Failed] = []
    start = time.perf_counter()
    for outcome in executor.run(pending, models, test, plugins, progress) if pending else ():
        if isinstance(outcome, Done):
            for identity, card, source in outcome.models:
                store.put_model(identity, card, source=source)
            store.put_many(outcome.rows)
            for key, config, verdicts in outcome.checks:
                store.put_checks(key, config, verdicts)
            store.clear_failures(outcome.task.keys)
            progress.done += len(outcome.task.keys)
        else:
            store.put_failures(outcome.task.keys, outcome.task.label, outcome.error, outcome.attempts)
            progress.failed += len(outcome.task.keys)
            failures.append(outcome)
        _log.info("[%.0fs] %s: %s (cells: %s)", time.perf_counter() - start, outcome.task.label,
                  "done" if isinstance(outcome, Done) else f"FAILED: {outcome.error}", progress)
        if on_progress:
            on_progress(progress, outcome)
    failed = {k for f in failures for k in f.task.keys}
    results = [store.get(k) for t in tasks for k in t.keys if k not in failed]
    return [r for r in results if r is not None], failures
