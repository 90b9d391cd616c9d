"""torch.distributed: the same job with several gloo processes (torchrun) gives the single-process numbers, each
process does its share of the work, and processes that would size their chunks differently still agree on one
plan."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from . import distributed_job

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "distributed"


def _torchrun(tmp_path, processes: int, *extra: str) -> dict:
    """Run the job under torchrun; returns rank 0's result. A worker aborted by a signal after the result was
    written (gloo's threads at interpreter exit, seen rarely on a loaded machine) is retried once, its log kept
    in test-artifacts/distributed/; any other failure fails at once."""
    out = tmp_path / "many.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               str(Path(distributed_job.__file__)), str(out), *extra]
    for attempt in range(2):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        if done.returncode == 0:
            return torch.load(out)
        aborted = "Signal 6 (SIGABRT)" in done.stderr or "terminate called" in done.stderr
        if not aborted or attempt:
            break
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"aborted-{processes}-processes.log").write_text(done.stderr)
        out.unlink(missing_ok=True)
    raise AssertionError(done.stderr[-3000:])


def _single(uneven: bool = False) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each worker, so that BLAS sums in the same order
    try:
        return distributed_job.job(uneven)
    finally:
        torch.set_num_threads(threads)


def _same_numbers(one: dict, many: dict, rtol: float = 1e-10, factors=("eigenvalues", "A", "S")) -> None:
    """rtol: float64 sums in another order (1e-10), or float32 pieces of other sizes (1e-5; then the eigenvectors,
    which round-off turns within nearly equal eigenvalues, are left out)."""
    for key in factors:
        for a, b in zip(one[key], many[key], strict=True):
            assert torch.allclose(a, b, rtol=rtol, atol=rtol * 1e-2 * float(a.abs().max())), key
    for method, scores in one["scores"].items():
        assert torch.allclose(scores, many["scores"][method], rtol=max(rtol, 1e-6),
                              atol=max(1e-9, rtol * float(scores.abs().max()))), method
    assert torch.equal(one["masks"], many["masks"]) and torch.equal(one["truth"], many["truth"])


def test_two_gloo_processes_give_the_single_process_numbers(tmp_path):
    two, one = _torchrun(tmp_path, 2), _single()
    assert one["world"] == 1 and two["world"] == 2
    # the 72 training points x (influence 1 + SOURCE 3 checkpoints + TracIn 3) passes, dealt out in chunks of 16
    assert sum(two["gradient_rows"]) == one["gradient_rows"][0] and min(two["gradient_rows"]) > 0
    assert max(two["gradient_rows"]) < one["gradient_rows"][0]
    _same_numbers(one, two)


def test_processes_with_different_chunk_budgets_agree_on_one_plan(tmp_path):
    """Process 0 would cut the data in pieces of 16, the others in pieces of 10 (as unequal free memory makes
    them): every piece must still be computed once (no zeroed or doubled score columns, the same EK-FAC sums),
    and a ground truth of 4 retrainings on 3 processes (one process without a chunk) must finish."""
    three, one = _torchrun(tmp_path, 3, "uneven"), _single(uneven=True)
    assert three["world"] == 3
    assert sum(three["gradient_rows"]) == one["gradient_rows"][0] and min(three["gradient_rows"]) > 0
    _same_numbers(one, three, rtol=1e-5, factors=("eigenvalues",))  # pieces of 10 here, 16 in one process


def test_without_torchrun_nothing_is_shared(monkeypatch):
    from tdakit import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init() is False and distributed.world_size() == 1 and distributed.mine(3) == [0, 1, 2]
    assert distributed.agreed_size(7) == 7
    t = torch.arange(3.0)
    assert distributed.sum_over_ranks(t) is t


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
