"""torch.distributed: the same job with two gloo processes (torchrun) gives the single-process numbers, and
each process does its share of the work."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from . import distributed_job


def test_two_gloo_processes_give_the_single_process_numbers(tmp_path):
    out = tmp_path / "two.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(distributed_job.__file__)), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = torch.load(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each worker, so that BLAS sums in the same order
    try:
        one = distributed_job.job()
    finally:
        torch.set_num_threads(threads)
    assert one["world"] == 1 and two["world"] == 2
    # the 72 training points x (influence 1 + SOURCE 3 checkpoints + TracIn 3) passes, dealt out in chunks of 16
    assert sum(two["gradient_rows"]) == one["gradient_rows"][0] and min(two["gradient_rows"]) > 0
    assert max(two["gradient_rows"]) < one["gradient_rows"][0]
    for key in ("eigenvalues", "A", "S"):  # float64 sums in another order
        for a, b in zip(one[key], two[key], strict=True):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12 * float(a.abs().max())), key
    for method, scores in one["scores"].items():
        assert torch.allclose(scores, two["scores"][method], rtol=1e-6, atol=1e-9), method
    assert torch.equal(one["masks"], two["masks"]) and torch.equal(one["truth"], two["truth"])


def test_without_torchrun_nothing_is_shared(monkeypatch):
    from tdakit import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init() is False and distributed.world_size() == 1 and distributed.mine(3) == [0, 1, 2]
    t = torch.arange(3.0)
    assert distributed.sum_over_ranks(t) is t

