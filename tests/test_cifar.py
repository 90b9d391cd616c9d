"""CIFAR-10 loaders (torchvision's python batches and an image folder) on small files written here, and on
the shared JPEG archive when it is present."""

import pickle

import numpy as np
import pytest
import torch

from tdakit import TdakitError
from tdakit.datasets import Split, cifar, cifar10_folder
from tdakit.presets import preset


def fake_images(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, 32, 32, 3] whose pixels encode (index, channel), labels cycling over the 10 classes."""
    index = np.arange(offset, offset + n)
    images = np.zeros((n, 32, 32, 3), np.uint8)
    for c in range(3):
        images[..., c] = ((index * 7 + c * 50) % 251)[:, None, None]
    images[:, :16, :16, :] = 255 - images[:, :16, :16, :]  # not constant: a per-channel std to standardize with
    return images, index % 10


def write_pickled(root, per_batch: int = 20):
    folder = root / cifar.PICKLE_FOLDER
    folder.mkdir(parents=True)
    everything = []
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        images, labels = fake_images(per_batch, b * per_batch)
        everything.append((images, labels))
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": images.transpose(0, 3, 1, 2).reshape(per_batch, -1), b"labels": labels.tolist()},
                        f)
    return everything


def write_folder(root, everything):
    from PIL import Image

    for split, parts in (("train", everything[:5]), ("test", everything[5:])):
        for images, labels in parts:
            for image, label, k in zip(images, labels, range(len(images)), strict=True):
                folder = root / split / cifar.CLASSES[label]
                folder.mkdir(parents=True, exist_ok=True)
                # names sort like the pickled order within a class
                Image.fromarray(image).save(folder / f"{int(image[20, 20, 0]):03d}-{k}.png")


def test_pickled_batches_load_standardized_and_class_balanced(tmp_path):
    everything = write_pickled(tmp_path)
    data = cifar10_folder(tmp_path, n_train=50, n_query=10, n_test=5)
    assert data.train.x.shape == (50, 3, 32, 32) and data.query.x.shape == (10, 3, 32, 32) and len(data.test) == 5
    assert data.train.y.bincount(minlength=10).tolist() == [5] * 10
    assert data.query.y.bincount(minlength=10).tolist() == [1] * 10
    assert torch.allclose(data.train.x.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(data.train.x.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-4)
    # every loaded image is one of the written ones, with its own label and pixels
    pixels = (data.pixels(data.query.x) * 255).round().to(torch.uint8).numpy()
    test_images, test_labels = everything[5]
    for image, label in zip(pixels, data.query.y.tolist(), strict=True):
        match = [j for j in range(len(test_images)) if np.array_equal(test_images[j], image)]
        assert len(match) == 1 and test_labels[match[0]] == label
    assert data.class_names == cifar.CLASSES
    # all of it, and the same seed gives the same split
    assert len(cifar10_folder(tmp_path, n_train=None, n_query=10, n_test=5).train) == 100
    again = cifar10_folder(tmp_path, n_train=50, n_query=10, n_test=5)
    assert torch.equal(again.train.x, data.train.x) and torch.equal(again.query.y, data.query.y)


def test_an_image_folder_of_the_same_pictures_gives_the_same_dataset(tmp_path):
    everything = write_pickled(tmp_path / "a")
    write_folder(tmp_path / "b", everything)
    pickled = cifar10_folder(tmp_path / "a", n_train=None, n_query=10, n_test=10)
    folder = cifar10_folder(tmp_path / "b", n_train=None, n_query=10, n_test=10)

    def rows(split):  # the same images and labels, whatever the order
        flat = torch.cat([split.x.flatten(1), split.y[:, None].double().float()], 1)
        return flat[torch.argsort(flat[:, 0] * 1e3 + flat[:, 700])]

    def test_split(d):  # queries are drawn per class in file order, which differs between layouts: compare all
        return Split(torch.cat([d.query.x, d.test.x]), torch.cat([d.query.y, d.test.y]))

    for a, b in ((pickled.train, folder.train), (test_split(pickled), test_split(folder))):
        assert torch.allclose(rows(a), rows(b), atol=1e-6)


def test_missing_and_malformed_folders_say_what_was_expected(tmp_path):
    with pytest.raises(TdakitError, match=r"cifar-10-batches-py.*train/<class>"):
        cifar10_folder(tmp_path / "nowhere")
    broken = tmp_path / "broken" / cifar.PICKLE_FOLDER
    broken.mkdir(parents=True)
    (broken / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        cifar10_folder(tmp_path / "broken")
    wrong = tmp_path / "wrong" / cifar.PICKLE_FOLDER
    wrong.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(wrong / name, "wb") as f:
            pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, f)
    with pytest.raises(ValueError, match=r"expected \[n, 3072\]"):
        cifar10_folder(tmp_path / "wrong")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir(parents=True)
    with pytest.raises(ValueError, match="no class folders"):
        cifar10_folder(tmp_path / "empty")


def test_the_shared_archive_gives_the_papers_subset(cifar_folder):
    data = preset("cifar10").data(root=cifar_folder)
    assert data.train.x.shape == (3072, 3, 32, 32) and data.query.x.shape == (100, 3, 32, 32)
    assert sorted(data.train.y.bincount().tolist()) == [307] * 8 + [308] * 2
    assert data.query.y.bincount().tolist() == [10] * 10
    assert torch.allclose(data.train.x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    means = [s.mean for s in data.channel_scalers]
    assert 0.4 < min(means) and max(means) < 0.55  # CIFAR-10's familiar channel means (about 0.49, 0.48, 0.45)
