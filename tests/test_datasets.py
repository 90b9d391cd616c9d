"""MNIST: the embedded subset's split, and the loader for torchvision's folder layout."""

import gzip

import numpy as np
import pytest
import torch

import tdakit
from tdakit.datasets import mnist_arrays, mnist_folder
from tdakit.datasets.images import stratified


def test_mnist5k_split_is_seeded_stratified_and_standardized():
    data = tdakit.datasets.load("mnist5k")
    assert (len(data.train), len(data.query), len(data.test)) == (4000, 100, 900)
    assert data.train.x.shape == (4000, 784) and data.train.y.dtype == torch.int64
    assert torch.bincount(data.train.y).tolist() == [400] * 10
    assert torch.bincount(data.query.y).tolist() == [10] * 10
    assert abs(float(data.train.x.mean())) < 1e-4 and abs(float(data.train.x.std()) - 1) < 1e-3
    labels = np.repeat(np.arange(10), 500)
    parts = stratified(labels, (4000, 100), seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(5000))  # disjoint, and nothing left out
    again = tdakit.datasets.load("mnist5k")
    assert torch.equal(again.query.x, data.query.x) and torch.equal(again.train.y, data.train.y)
    other = tdakit.datasets.load("mnist5k", seed=1)
    assert not torch.equal(other.query.x, data.query.x)
    images = tdakit.datasets.load("mnist5k", n_train=1000, n_query=50, flatten=False)
    assert images.train.x.shape == (1000, 1, 28, 28) and len(images.test) == 3950


def _write_idx(path, array, gz):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_folder_reads_torchvision_layout(tmp_path, gz):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (300, 28, 28)), np.repeat(np.arange(10), 30)
    suffix = ".gz" if gz else ""
    _write_idx(raw / f"train-images-idx3-ubyte{suffix}", images, gz)
    _write_idx(raw / f"train-labels-idx1-ubyte{suffix}", labels, gz)
    got_images, got_labels = mnist_arrays(tmp_path)
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    data = mnist_folder(tmp_path, n_train=200, n_query=50)
    assert (len(data.train), len(data.query), len(data.test)) == (200, 50, 50)
    assert torch.bincount(data.train.y).tolist() == [20] * 10


def test_missing_mnist_folder_says_where_it_looked_and_never_downloads(tmp_path):
    with pytest.raises(tdakit.TdakitError, match=r"MNIST files .* not found under .*MNIST/raw.*download=True"):
        mnist_folder(tmp_path / "nowhere")


def test_too_large_a_split_is_refused():
    with pytest.raises(ValueError, match="mnist5k has 5000 images"):
        tdakit.datasets.load("mnist5k", n_train=5000, n_query=100)


def test_label_noise_is_seeded_and_changes_exactly_the_fraction():
    data = tdakit.datasets.load("mnist5k")
    noisy, changed = tdakit.datasets.with_label_noise(data.train, 0.3, classes=10, seed=3)
    assert int(changed.sum()) == 1200
    assert (noisy.y[changed] != data.train.y[changed]).all() and torch.equal(noisy.y[~changed], data.train.y[~changed])
    again, changed_again = tdakit.datasets.with_label_noise(data.train, 0.3, classes=10, seed=3)
    assert torch.equal(again.y, noisy.y) and torch.equal(changed, changed_again)
    other, _ = tdakit.datasets.with_label_noise(data.train, 0.3, classes=10, seed=4)
    assert not torch.equal(other.y, noisy.y)
    with pytest.raises(ValueError, match="fraction must lie in"):
        tdakit.datasets.with_label_noise(data.train, 1.5, classes=10)


def test_rotation_is_exact_for_quarter_turns_and_keeps_shapes():
    data = tdakit.datasets.load("mnist5k")
    part = data.train.subset(slice(0, 8))
    quarter = tdakit.datasets.rotated(part, 90.0)
    expected = torch.rot90(part.x.reshape(-1, 28, 28), k=1, dims=(1, 2)).reshape(8, -1)
    assert quarter.x.shape == part.x.shape and torch.allclose(quarter.x, expected, atol=1e-4)
    assert torch.equal(tdakit.datasets.rotated(part, 45.0).x, tdakit.datasets.rotated(part, 45.0).x)
    assert torch.allclose(tdakit.datasets.rotated(part, 0.0).x, part.x, atol=1e-5)


def test_balanced_subset_spreads_the_classes():
    data = tdakit.datasets.load("mnist5k")
    assert torch.bincount(data.train.y[:500], minlength=10).max() > 100  # file order: a prefix is not balanced
    part = tdakit.datasets.balanced_subset(data.train, 500, seed=0)
    assert torch.bincount(part.y, minlength=10).tolist() == [50] * 10
    assert torch.equal(part.x, tdakit.datasets.balanced_subset(data.train, 500, seed=0).x)
    with pytest.raises(ValueError, match="n must lie in 1..4000"):
        tdakit.datasets.balanced_subset(data.train, 0)


def test_balanced_parts_are_disjoint_balanced_and_seeded():
    data = tdakit.datasets.load("mnist5k")
    parts = tdakit.datasets.balanced_parts(data.train, (2000, 1000, 1000), seed=0)
    assert [len(p) for p in parts] == [2000, 1000, 1000]
    assert [torch.bincount(p.y, minlength=10).tolist() for p in parts] == [[200] * 10, [100] * 10, [100] * 10]
    rows = {tuple(r) for p in parts for r in p.x[:, ::7].tolist()}  # every image lands in one part only
    assert len(rows) == len({tuple(r) for r in data.train.x[:, ::7].tolist()})
    again = tdakit.datasets.balanced_parts(data.train, (2000, 1000, 1000), seed=0)
    assert all(torch.equal(a.x, b.x) for a, b in zip(parts, again, strict=True))
    other = tdakit.datasets.balanced_parts(data.train, (2000, 1000, 1000), seed=1)
    assert not torch.equal(parts[1].x, other[1].x)
    with pytest.raises(ValueError, match="sum to at most 4000"):
        tdakit.datasets.balanced_parts(data.train, (3000, 2000))
