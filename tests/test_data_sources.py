"""Data sources: digits, image folders (made here and the shared CIFAR-10 copy), CIFAR-100."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multifcl.config import ExperimentConfig
from multifcl.data import DataError, FederatedStream, load_splits
from tests.test_config import one_line_error

SHARED_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg"


def make_image_folder(root: Path, classes=("cat", "dog", "emu", "fox"), per_class=6, size=12):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index:03d}.png")
    return root


def test_digits_split_is_stratified_and_fixed():
    splits = load_splits(ExperimentConfig(), image_size=32)
    assert splits.class_names[:3] == ["zero", "one", "two"]
    assert len(splits.train) + len(splits.test) == 1797
    assert tuple(splits.train.images.shape[1:]) == (3, 8, 8)
    assert np.array_equal(splits.test.labels, load_splits(ExperimentConfig(), 32).test.labels)


def test_image_folder_reads_classes_from_folder_names(tmp_path):
    root = make_image_folder(tmp_path / "data")
    config = ExperimentConfig(dataset="imagefolder", data_root=root, num_tasks=2)
    splits = load_splits(config, image_size=32)
    assert splits.class_names == ["cat", "dog", "emu", "fox"]
    taken = splits.train.take(np.array([0, 7]))
    assert taken.images.shape == (2, 3, 12, 12) and taken.labels.tolist() == [0, 1]


def test_hidden_folders_and_files_are_not_classes_or_images(tmp_path, caplog):
    """Issue 18.6: a `.ipynb_checkpoints/` folder became a class; it is skipped with a note."""
    root = make_image_folder(tmp_path / "data")
    for split in ("train", "test"):
        hidden = root / split / ".ipynb_checkpoints"
        hidden.mkdir()
        Image.new("RGB", (12, 12)).save(hidden / "000-checkpoint.png")
    (root / "train" / "cat" / "._000.png").write_bytes(b"macOS resource fork, not an image")
    config = ExperimentConfig(dataset="imagefolder", data_root=root, num_tasks=2)
    with caplog.at_level("WARNING", logger="multifcl.data.images"):
        splits = load_splits(config, image_size=32)
    assert splits.class_names == ["cat", "dog", "emu", "fox"]
    assert len(splits.train) == len(splits.test) == 4 * 6
    notes = [r.getMessage() for r in caplog.records if "hidden" in r.getMessage()]
    assert len(notes) == 2 and all(".ipynb_checkpoints" in note for note in notes)
    assert str(root / "train") in notes[0] and str(root / "test") in notes[1]


def test_mixed_image_sizes_are_resized_to_the_backbone_size(tmp_path):
    root = make_image_folder(tmp_path / "data")
    Image.new("RGB", (30, 20)).save(root / "train" / "cat" / "big.png")
    splits = load_splits(ExperimentConfig(dataset="imagefolder", data_root=root), image_size=16)
    assert splits.train.take(np.arange(7)).images.shape == (7, 3, 16, 16)


def test_unreadable_image_is_named_before_training(tmp_path):
    root = make_image_folder(tmp_path / "data")
    broken = root / "train" / "dog" / "002.png"
    broken.write_bytes(b"not an image at all")
    config = ExperimentConfig(dataset="imagefolder", data_root=root, num_tasks=2, partition="iid")
    data = FederatedStream(load_splits(config, 32), config)
    message = one_line_error(DataError, data.check_readable)
    assert str(broken) in message and "cannot be read" in message


def test_image_folder_without_test_split_is_named(tmp_path):
    root = make_image_folder(tmp_path / "data")
    import shutil

    shutil.rmtree(root / "test")
    config = ExperimentConfig(dataset="imagefolder", data_root=root)
    message = one_line_error(DataError, lambda: load_splits(config, 32))
    assert str(root / "test") in message


def test_a_client_with_no_samples_is_an_error_before_training(tmp_path):
    config = ExperimentConfig(dataset="synthetic", num_tasks=2, partition="iid")
    data = FederatedStream(load_splits(config, 32), config)
    data.check_clients(4)
    message = one_line_error(DataError, lambda: data.check_clients(1000))
    assert "partition 'iid'" in message and "no samples" in message


def test_cifar100_loader_reads_a_local_copy_with_official_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    names = [f"class_{i}" for i in range(4)]
    features = datasets.Features(
        {"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=names)}
    )
    rows = {
        "img": [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(8)],
        "fine_label": [i % 4 for i in range(8)],
    }
    split = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "c100"))
    config = ExperimentConfig(dataset="cifar100", data_root=tmp_path / "c100", num_tasks=2)
    splits = load_splits(config, 32)
    assert splits.class_names == names
    assert splits.train.labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert splits.train.take(np.arange(8)).images.shape == (8, 3, 32, 32)


@pytest.mark.skipif(not SHARED_CIFAR10.is_dir(), reason="../shared/data/cifar10-jpg is absent")
def test_shared_cifar10_image_folder():
    config = ExperimentConfig(dataset="imagefolder", data_root=SHARED_CIFAR10, num_tasks=5)
    splits = load_splits(config, 32)
    assert splits.class_names[:2] == ["airplane", "automobile"] and splits.num_classes == 10
    assert len(splits.train) == 50_000 and len(splits.test) == 10_000
    first = splits.test.take(np.array([0]))
    assert first.images.shape == (1, 3, 32, 32)


def test_cifar100_download_failure_is_one_line(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub\nsecond line of detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    config = ExperimentConfig(dataset="cifar100", data_root=tmp_path)
    message = one_line_error(DataError, lambda: load_splits(config, 32))
    assert "cannot load 'uoft-cs/cifar100': Couldn't reach the Hub" in message
