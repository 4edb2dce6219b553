"""Data-parallel training: `rbl train --nproc 2` (torchrun, gloo, two CPU processes) takes the
same steps as one process with the same global batch (README, "Scaling out")."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robustbench_lite import zoo
from robustbench_lite.train import Distributed


def _train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    # 601 points in batches of 100: the last global batch has one point, fewer than the ranks.
    cmd = [sys.executable, "-m", "robustbench_lite.cli", "train", "--arch", "smallcnn", "--epochs", "2",
           "--train-subset", "601", "--batch-size", "100", "--seed", "3", "--no-resume", "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one(tmp_path):
    one, two = _train(tmp_path / "one"), _train(tmp_path / "two", "--nproc", "2")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("clean accuracy") == 1  # rank 0 alone reports
    a, b = load_file(tmp_path / "one" / zoo.WEIGHTS), load_file(tmp_path / "two" / zoo.WEIGHTS)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"weights of {k} differ")
    card_a = json.loads((tmp_path / "one" / zoo.CARD).read_text())
    card_b = json.loads((tmp_path / "two" / zoo.CARD).read_text())
    for ra, rb in zip(card_a["curves"], card_b["curves"], strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
        assert rb["train_acc"] == ra["train_acc"]  # every point counted once, the lone last one included
    layout = card_b["hyperparameters"]["distributed"]
    assert layout["world_size"] == 2 and layout["backend"] == "gloo"
    digests = layout["rank_weights_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert "distributed" not in card_a["hyperparameters"]
    assert not (tmp_path / "two" / "resume.pt").exists()  # rank 0's final save replaced the folder


def test_a_single_process_is_rank_0_of_1():
    d = Distributed.from_env()
    assert (d.rank, d.world) == (0, 1)
    idx = torch.arange(7)
    assert d.shard(idx)[0] is idx and d.weight(7, 7) == 1
    assert d.sum({"n": 3}) == {"n": 3} and d.from_rank0(lambda: 5) == 5


def test_shards_cover_a_global_batch_once():
    idx = torch.arange(101)
    parts = [Distributed(rank=r, world=3).shard(idx) for r in range(3)]
    assert torch.equal(torch.cat([p for p, _ in parts]), idx) and [n for _, n in parts] == [34, 34, 33]
    lone = [Distributed(rank=r, world=2).shard(torch.tensor([9])) for r in range(2)]
    assert [(p.tolist(), n) for p, n in lone] == [([9], 1), ([9], 0)]  # rank 1 joins at weight 0
