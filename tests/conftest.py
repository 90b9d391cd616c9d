import pytest
import torch

import tdakit

from .references import smooth_mlp  # noqa: F401  (tests import it from here)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TDAKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def concrete():
    return tdakit.datasets.load("concrete")


@pytest.fixture(scope="session")
def small_regression(concrete):
    """64 Concrete training points and 6 queries, float64."""
    return concrete.train.subset(slice(0, 64)).to(torch.float64), concrete.query.subset(slice(0, 6)).to(torch.float64)
