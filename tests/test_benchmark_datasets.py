"""Benchmark data sets on tiny fake copies of their on-disk layouts (nothing is downloaded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multifcl.config import ExperimentConfig
from multifcl.data import DataError, decoded_cache, hub_datasets, load_splits
from multifcl.data.decoded_cache import CACHE_FOLDER_NAME
from multifcl.data.imagenet_r import CLASS_NAMES_FILE, SPLIT_FILE, imagenet_r_classes
from multifcl.data.images import fit_square
from multifcl.data.tiny_imagenet import tiny_imagenet_words
from tests.test_config import one_line_error

RNG = np.random.default_rng(0)


def save_image(path: Path, width: int, height: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)


def config_for(dataset: str, root: Path | None, **values) -> ExperimentConfig:
    return ExperimentConfig(dataset=dataset, data_root=root, **values)


def forbid_decoding(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("decoded again although the cache holds the images")

    monkeypatch.setattr(decoded_cache, "decode_image", fail)
    monkeypatch.setattr(hub_datasets, "fit_square", fail)


# ImageNet-R: imagenet-r/<wnid>/<style>_<k>.jpg


def images_per_class(index: int) -> int:
    return 10 if index == 0 else 2 + index % 3  # 10, 3, 4, 2, 3, ...


@pytest.fixture(scope="module")
def imagenet_r(tmp_path_factory) -> Path:
    """The archive's layout: 200 WordNet-id folders of JPEGs of mixed sizes and modes."""
    root = tmp_path_factory.mktemp("imr") / "imagenet-r"
    for index, wnid in enumerate(imagenet_r_classes()):
        for k in range(images_per_class(index)):
            mode = "L" if k == 1 else "RGB"
            save_image(root / wnid / f"art_{k}.jpg", 12 + k, 20 - k, mode)
    (root / "README.txt").write_text("not an image")
    return root


def test_imagenet_r_has_200_named_classes_and_a_seeded_80_20_split(imagenet_r):
    splits = load_splits(config_for("imagenet-r", imagenet_r, num_tasks=10), image_size=16)
    assert splits.num_classes == 200
    assert splits.class_names[:3] == ["goldfish", "great white shark", "hammerhead"]
    assert splits.class_names[-1] == "acorn"
    total = sum(images_per_class(i) for i in range(200))
    assert len(splits.train) + len(splits.test) == total
    test_per_class = np.bincount(splits.test.labels, minlength=200)
    assert test_per_class[0] == 2 and set(test_per_class[1:]) == {1}  # 20% of 10; at least 1
    taken = splits.test.take(np.arange(4))
    assert taken.images.shape == (4, 3, 16, 16) and taken.labels.tolist() == [0, 0, 1, 2]
    assert (imagenet_r / SPLIT_FILE).is_file()


def test_imagenet_r_split_is_identical_across_loads_and_read_from_its_file(imagenet_r):
    config = config_for("imagenet-r", imagenet_r)
    first = load_splits(config, image_size=16)
    written = (imagenet_r / SPLIT_FILE).read_text()
    second = load_splits(config, image_size=16)
    assert np.array_equal(first.train.rows, second.train.rows)
    assert np.array_equal(first.test.rows, second.test.rows)
    assert (imagenet_r / SPLIT_FILE).read_text() == written
    assert written.count(" test\n") == len(first.test)


def test_imagenet_r_redrawn_split_is_the_same_seeded_split(imagenet_r, tmp_path):
    copy = shutil.copytree(imagenet_r, tmp_path / "imagenet-r")
    (copy / SPLIT_FILE).unlink()
    shutil.rmtree(copy / CACHE_FOLDER_NAME, ignore_errors=True)
    redrawn = load_splits(config_for("imagenet-r", copy), image_size=8)
    original = load_splits(config_for("imagenet-r", imagenet_r), image_size=8)
    assert np.array_equal(redrawn.test.rows, original.test.rows)


def test_imagenet_r_second_load_reads_the_cache(imagenet_r, monkeypatch):
    config = config_for("imagenet-r", imagenet_r)
    first = load_splits(config, image_size=12).train.take(np.arange(5)).images
    assert list((imagenet_r / CACHE_FOLDER_NAME).glob("imagenet-r-12px-*.npy"))
    forbid_decoding(monkeypatch)
    again = load_splits(config, image_size=12).train.take(np.arange(5)).images
    assert again.equal(first)


def test_imagenet_r_data_root_may_be_the_archive_parent(imagenet_r):
    splits = load_splits(config_for("imagenet-r", imagenet_r.parent), image_size=8)
    assert splits.num_classes == 200


def test_imagenet_r_split_file_that_does_not_match_the_images_is_named(imagenet_r, tmp_path):
    copy = shutil.copytree(imagenet_r, tmp_path / "imagenet-r")
    (copy / "n01443537" / "art_0.jpg").unlink()
    message = one_line_error(DataError, lambda: load_splits(config_for("imagenet-r", copy), 8))
    assert SPLIT_FILE in message and "n01443537/art_0.jpg" in message and "delete" in message


def test_imagenet_r_wrong_layout_names_the_first_missing_folder(tmp_path):
    wnids = list(imagenet_r_classes())
    for wnid in wnids[:5]:
        save_image(tmp_path / "imagenet-r" / wnid / "a.jpg", 8, 8)
    config = config_for("imagenet-r", tmp_path / "imagenet-r")
    message = one_line_error(DataError, lambda: load_splits(config, 8))
    assert str(tmp_path / "imagenet-r" / wnids[5]) in message and "is missing" in message


def test_imagenet_r_missing_data_names_what_to_download_and_where(tmp_path):
    root = tmp_path / "data" / "imagenet-r"
    message = one_line_error(DataError, lambda: load_splits(config_for("imagenet-r", root), 8))
    assert "imagenet-r.tar" in message and "https://people.eecs.berkeley.edu" in message
    assert str(root / "n01443537") in message
    message = one_line_error(DataError, lambda: load_splits(config_for("imagenet-r", None), 8))
    assert message.startswith("run config key 'data-root'") and "imagenet-r.tar" in message


def test_unreadable_image_file_is_named(tmp_path):
    for wnid in imagenet_r_classes():
        save_image(tmp_path / "imagenet-r" / wnid / "a.jpg", 8, 8)
    broken = tmp_path / "imagenet-r" / "n01443537" / "a.jpg"
    broken.write_bytes(b"not a jpeg")
    config = config_for("imagenet-r", tmp_path / "imagenet-r")
    message = one_line_error(DataError, lambda: load_splits(config, 8))
    assert str(broken) in message and "cannot be read" in message


# Tiny ImageNet: tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/images, val/...}

TINY_WNIDS = ["n12267677", "n01443537", "n02124075", "n01629819"]  # wnids.txt is unsorted


@pytest.fixture
def tiny_imagenet(tmp_path) -> Path:
    root = tmp_path / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    words = tiny_imagenet_words()
    entries = ["n00001740\tentity"] + [f"{wnid}\t{words[wnid]}" for wnid in TINY_WNIDS]
    (root / "words.txt").write_text("\n".join(entries) + "\n")
    for wnid in TINY_WNIDS:
        for k in range(3):
            save_image(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", 64, 64)
    annotations = []
    for k, wnid in enumerate(TINY_WNIDS * 2):
        save_image(root / "val" / "images" / f"val_{k}.JPEG", 64, 64, "L" if k == 0 else "RGB")
        annotations.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return root


def test_tiny_imagenet_folder_names_splits_and_counts(tiny_imagenet, monkeypatch):
    config = config_for("tiny-imagenet", tiny_imagenet.parent, num_tasks=2)
    splits = load_splits(config, image_size=224)
    assert splits.class_names == ["goldfish", "European fire salamander", "Egyptian cat", "acorn"]
    assert len(splits.train) == 12 and len(splits.test) == 8
    assert np.bincount(splits.train.labels).tolist() == [3, 3, 3, 3]
    assert splits.test.labels.tolist() == [3, 0, 2, 1, 3, 0, 2, 1]  # val_k's wnid, sorted order
    assert splits.test.take(np.arange(2)).images.shape == (2, 3, 64, 64)  # kept at 64 px
    forbid_decoding(monkeypatch)
    assert load_splits(config, image_size=224).test.take(np.arange(8)).images.shape[0] == 8


def test_tiny_imagenet_folder_names_the_first_missing_file(tiny_imagenet):
    (tiny_imagenet / "val" / "val_annotations.txt").unlink()
    config = config_for("tiny-imagenet", tiny_imagenet)
    message = one_line_error(DataError, lambda: load_splits(config, 64))
    assert str(tiny_imagenet / "val" / "val_annotations.txt") in message


def test_tiny_imagenet_missing_folder_names_the_archive_and_the_hub(tmp_path):
    config = config_for("tiny-imagenet", tmp_path / "nowhere")
    message = one_line_error(DataError, lambda: load_splits(config, 64))
    assert "tiny-imagenet-200.zip" in message and "zh-plus/tiny-imagenet" in message


def test_tiny_imagenet_from_a_hub_copy_uses_sorted_wordnet_ids(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=TINY_WNIDS)}
    )
    rows = {
        "image": [Image.new("L" if i == 0 else "RGB", (64, 64)) for i in range(8)],
        "label": [i % 4 for i in range(8)],
    }
    split = datasets.Dataset.from_dict(rows, features=features)
    copy = tmp_path / "tiny-hub"
    datasets.DatasetDict({"train": split, "valid": split}).save_to_disk(str(copy))
    splits = load_splits(config_for("tiny-imagenet", copy, num_tasks=2), image_size=224)
    assert splits.class_names == ["goldfish", "European fire salamander", "Egyptian cat", "acorn"]
    assert splits.train.labels.tolist() == [3, 0, 2, 1, 3, 0, 2, 1]
    assert splits.test.take(np.arange(8)).images.shape == (8, 3, 64, 64)
    assert list((copy / CACHE_FOLDER_NAME).glob("tiny-imagenet-valid-64px-*.npy"))


def test_shipped_class_names_are_complete_and_distinct():
    imagenet_r = imagenet_r_classes()
    assert len(imagenet_r) == 200 == len(set(imagenet_r.values()))
    assert imagenet_r["n02106662"] == "german shepherd dog" and imagenet_r["n07697537"] == "hotdog"
    tiny = tiny_imagenet_words()
    assert len(tiny) == 200 and tiny["n02124075"] == "Egyptian cat"
    assert len({words.split(",")[0] for words in tiny.values()}) == 200
    shared = set(imagenet_r) & set(tiny)
    assert "n01443537" in shared and len(shared) < 200


# CUB-200-2011: CUB_200_2011/{classes,images,image_class_labels,train_test_split}.txt, images/

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


@pytest.fixture
def cub(tmp_path) -> Path:
    root = tmp_path / "CUB_200_2011"
    lines: dict[str, list[str]] = {"images": [], "labels": [], "split": []}
    image_id = 0
    for class_id, folder in enumerate(CUB_CLASSES, start=1):
        for k in range(4):
            image_id += 1
            relative = f"{folder}/{folder[4:]}_{k}.jpg"
            save_image(root / "images" / relative, 30 + k, 20)
            lines["images"].append(f"{image_id} {relative}")
            lines["labels"].append(f"{image_id} {class_id}")
            lines["split"].append(f"{image_id} {1 if k < 3 else 0}")
    classes = [f"{i} {name}" for i, name in enumerate(CUB_CLASSES, start=1)]
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    (root / "images.txt").write_text("\n".join(lines["images"]) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(lines["labels"]) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(lines["split"]) + "\n")
    return root


def test_cub200_names_official_split_and_counts(cub, monkeypatch):
    config = config_for("cub200", cub.parent, num_tasks=3)
    splits = load_splits(config, image_size=16)
    assert splits.class_names == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    assert len(splits.train) == 9 and len(splits.test) == 3
    assert splits.test.labels.tolist() == [0, 1, 2]
    assert splits.train.take(np.arange(9)).images.shape == (9, 3, 16, 16)
    forbid_decoding(monkeypatch)
    assert load_splits(config, image_size=16).test.take(np.arange(3)).labels.tolist() == [0, 1, 2]


def test_cub200_wrong_layout_names_the_first_missing_file(cub):
    (cub / "train_test_split.txt").unlink()
    message = one_line_error(DataError, lambda: load_splits(config_for("cub200", cub), 16))
    assert str(cub / "train_test_split.txt") in message and "CUB_200_2011.tgz" in message


def test_cub200_missing_image_file_is_named(cub):
    missing = cub / "images" / "002.Laysan_Albatross" / "Laysan_Albatross_1.jpg"
    missing.unlink()
    message = one_line_error(DataError, lambda: load_splits(config_for("cub200", cub), 16))
    assert str(missing) in message


# CIFAR-100 (Hugging Face) and the cache itself


def test_cifar100_second_load_reads_the_cache(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=["apple", "bee"])}
    )
    rows = {
        "img": [Image.new("RGB", (32, 32), (i, 0, 0)) for i in range(4)],
        "fine_label": [0, 1] * 2,
    }
    split = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "c100"))
    config = config_for("cifar100", tmp_path / "c100", num_tasks=2)
    first = load_splits(config, image_size=224).train.take(np.arange(4)).images
    assert first[:, 0, 0, 0].tolist() == [0, 1, 2, 3]
    forbid_decoding(monkeypatch)
    again = load_splits(config, image_size=224).train.take(np.arange(4)).images
    assert again.equal(first)


def test_fit_square_scales_the_shorter_side_and_crops_the_centre():
    image = Image.new("L", (40, 20))
    image.paste(255, (10, 0, 30, 20))  # a white centre square
    fitted = fit_square(image, 10)
    assert fitted.shape == (10, 10, 3) and fitted.min() > 200  # the centre, now RGB


def test_cache_file_is_replaced_when_its_shape_is_stale(tmp_path):
    def decode(start, stop):
        return [np.full((4, 4, 3), 7, dtype=np.uint8)] * (stop - start)

    np.save(tmp_path / "key.npy", np.zeros((1, 3, 4, 4), dtype=np.uint8))
    array = decoded_cache.cached_images(tmp_path, "key", 2, 4, decode)
    assert array.shape == (2, 3, 4, 4) and int(array.min()) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.npy"]  # no partial file left


def test_class_name_files_travel_with_the_app_bundle():
    folder = CLASS_NAMES_FILE.parent
    files = sorted(folder.iterdir())
    assert [f.suffix for f in files] == [".json", ".json"]  # the FAB takes *.json, not *.txt
    assert all(json.loads(f.read_text())["classes"] for f in files)


def test_a_missing_archive_data_set_is_named_before_the_backbone_loads(tmp_path, monkeypatch):
    from multifcl import experiment

    def must_not_load(*args, **kwargs):
        raise AssertionError("the backbone was loaded before the data were checked")

    monkeypatch.setattr(experiment, "load_backbone", must_not_load)
    config = ExperimentConfig(dataset="cub200", data_root=tmp_path / "nowhere")
    with pytest.raises(DataError, match="CUB_200_2011.tgz"):
        experiment.load_experiment(config)
