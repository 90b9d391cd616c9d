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


def cifar_archive():
    """The CIFAR-10 image archive kept beside the repository for tests and benchmarks ($TDAKIT_CIFAR_ARCHIVE,
    else ../shared/data/cifar10-jpeg.tar.xz from the repository root), or None."""
    import os
    from pathlib import Path

    given = os.environ.get("TDAKIT_CIFAR_ARCHIVE")
    path = Path(given) if given else Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.xz"
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory):
    """The archive extracted once per session into a temporary folder (never into the repository)."""
    import tarfile

    archive = cifar_archive()
    if archive is None:
        pytest.skip("the CIFAR-10 archive is absent: set TDAKIT_CIFAR_ARCHIVE to cifar10-jpeg.tar.xz (an image "
                    "folder train/<class>/*.jpg, test/<class>/*.jpg) to run this test")
    root = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root
