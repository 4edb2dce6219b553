"""Scale-out: the Ray executor against the local one, a killed worker, a failing attack
(README, "Scaling out"). Ray runs here as a private two-CPU instance on the loopback address."""
from __future__ import annotations

import contextlib
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from robustbench_lite import executors, profiles
from robustbench_lite.store import Store

# An FGSM that, while ``marker`` does not exist, writes its pid there and hangs: the test kills
# that worker process mid-cell. Once the marker exists it is a plain FGSM.
PLUGIN = '''
from dataclasses import dataclass
import os, time
from pathlib import Path
from robustbench_lite.registry import ATTACKS
from robustbench_lite.attacks.base import Attack
from robustbench_lite.attacks.fgsm import FGSM


@ATTACKS.register("hang_once")
@dataclass(frozen=True, kw_only=True)
class HangOnce(Attack):
    marker: str = ""

    def run(self, model, x, y, threat, generator):
        mark = Path(self.marker)
        if not mark.exists():
            mark.write_text(str(os.getpid()))
            time.sleep(600)
        return FGSM()(model, x, y, threat, generator=generator)


@ATTACKS.register("boom")
@dataclass(frozen=True, kw_only=True)
class Boom(Attack):
    def run(self, model, x, y, threat, generator):
        raise RuntimeError(f"boom at eps {threat.eps}")
'''

EPS = (0.0, 0.05, 0.1)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plugin") / "scale_plugin.py"
    path.write_text(textwrap.dedent(PLUGIN))
    from robustbench_lite import plugins

    plugins.load(path)
    return path


def _same_rows(a: list, b: list) -> None:
    assert [r.key for r in a] == [r.key for r in b]
    for x, y in zip(a, b, strict=True):
        rx, ry = x.to_record(), y.to_record()
        rx.pop("seconds"), ry.pop("seconds")
        assert rx == ry
        assert np.array_equal(x.robust, y.robust) and np.array_equal(x.robust_top5_mask, y.robust_top5_mask)


@contextlib.contextmanager
def one_thread():
    """A Ray task runs with the torch threads it declares (1 here); the local run matches it, as
    float reductions may round differently with another thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _tiny(trained, attacks, checks: bool = False) -> profiles.Profile:
    return profiles.Profile("tiny", models=(trained.name,), attacks=attacks, eps=EPS, n=100, checks=checks)


@pytest.mark.slow
def test_ray_rows_equal_local_rows_and_stored_cells_are_not_resubmitted(trained, cluster, tmp_path):
    prof = _tiny(trained, ("fgsm", "pgd:steps=5"), checks=True)  # the checks' verdicts are in the rows too
    with Store(tmp_path / "local.sqlite") as s, one_thread():
        local = profiles.run(prof, s)
    seen: list[executors.Progress] = []
    with Store(tmp_path / "ray.sqlite") as s:
        remote = profiles.run(prof, s, executor=executors.RayExecutor(),
                              on_progress=lambda p, _o: seen.append(executors.Progress(**vars(p))))
        assert len(s) == 9 and not s.failures()
        again = profiles.run(prof, s, executor=executors.RayExecutor(),
                             on_progress=lambda p, _o: seen.append(executors.Progress(**vars(p))))
    assert remote[0].checks  # the first attack's task ran the masking checks on a worker
    _same_rows(local, remote)
    _same_rows(remote, again)
    # Two tasks of three cells on two CPUs: both run at once, then finish one by one; the
    # rerun submits nothing.
    assert [(p.done, p.running, p.failed, p.queued) for p in seen] in ([(3, 3, 0, 0), (6, 0, 0, 0)],)


@pytest.mark.slow
def test_a_worker_killed_mid_cell_is_retried_and_every_cell_stored_once(trained, cluster, plugin, tmp_path):
    marker = tmp_path / "pid"
    prof = _tiny(trained, ("fgsm", f"hang_once:marker={marker}"))
    killed: list[int] = []

    def kill_when_hung() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not marker.exists():
            time.sleep(0.1)
        time.sleep(0.5)  # the pid is written before the sleep starts
        pid = int(marker.read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    watcher = threading.Thread(target=kill_when_hung, daemon=True)
    watcher.start()
    with Store(tmp_path / "ray.sqlite") as s:
        grid = profiles.run_grid(prof, s, executor=executors.RayExecutor(max_retries=2), plugins=[plugin])
        keys = [r.key for r in s.results()]
    watcher.join(5)
    assert killed and killed[0] != os.getpid()
    assert not grid.failures
    assert len(keys) == len(set(keys)) == 9
    with Store(tmp_path / "local.sqlite") as s, one_thread():  # the marker exists now: a plain FGSM
        local = profiles.run(prof, s)
    _same_rows(local, grid.results)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_raising_attack_is_recorded_as_failed_never_as_a_result(trained, cluster, plugin, tmp_path, executor):
    prof = _tiny(trained, ("fgsm", "boom"))
    with Store(tmp_path / "s.sqlite") as s:
        grid = profiles.run_grid(prof, s, executor=executors.make(executor), plugins=[plugin])
        failures = s.failures()
        stored = {r.key: r for r in s.results()}
        with pytest.raises(profiles.GridError, match="boom at eps"):
            profiles.run(prof, s, executor=executors.make(executor), plugins=[plugin])
    (failed,) = grid.failures
    assert failed.task.attack == "boom" and "RuntimeError: boom at eps 0.0" in failed.error
    assert {f["key"] for f in failures} == set(failed.task.keys) and all("boom" in f["error"] for f in failures)
    assert not set(failed.task.keys) & set(stored)
    # fgsm's cells are results; no worst case over a failed attack (it would overstate robustness).
    assert sorted(r.attacks for r in stored.values()) == [("fgsm",)] * 3
    assert [r.attacks for r in grid.results] == [("fgsm",)] * 3


def test_executor_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown executor 'dask'; allowed: local, ray"):
        executors.make("dask")
    with pytest.raises(ValueError, match="--ray-address needs --executor ray"):
        executors.make("local", address="10.0.0.1:6379")
    with pytest.raises(ValueError, match="max_retries"):
        executors.RayExecutor(max_retries=-1)


def test_cli_run_rejects_bad_executor_arguments(capsys):
    from robustbench_lite import cli

    assert cli.main(["run", "--ray-address", "10.0.0.1:6379"]) == 2
    assert "--ray-address needs --executor ray" in capsys.readouterr().err
    assert cli.main(["run", "--executor", "ray", "--max-retries", "-1"]) == 2
    assert "max_retries must be" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--executor", "dask"])
    assert exit_.value.code == 2 and "invalid choice: 'dask'" in capsys.readouterr().err
