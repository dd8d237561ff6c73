"""`split-file`: a published train/test split chooses the images of an image folder or of
ImageNet-R; bad lines and missing images are named with file:line before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from multifcl.config import ExperimentConfig
from multifcl.data import DataError, load_splits
from multifcl.data.fingerprint import split_fingerprint
from multifcl.data.imagenet_r import SPLIT_FILE, imagenet_r_classes
from multifcl.data.sources import check_data_present
from multifcl.errors import ConfigError
from multifcl.results.resume import config_differences
from tests.test_benchmark_datasets import imagenet_r  # noqa: F401 (a fixture)
from tests.test_config import one_line_error
from tests.test_data_sources import make_image_folder

CLASSES = ("cat", "dog", "emu", "fox")


@pytest.fixture
def pool(tmp_path) -> Path:
    """`<class>/000.png .. 005.png` for four classes: one folder of class folders."""
    return make_image_folder(tmp_path / "data", classes=CLASSES) / "train"


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def assignment_lines() -> list[str]:
    """Files 000-003 train, 004 test, 005 left out, for every class."""
    lines = ["# a comment", ""]
    for name in CLASSES:
        lines += [f"{name}/{k:03d}.png train" for k in range(4)] + [f"{name}/004.png test"]
    return lines


def imagefolder(root: Path, split_file: Path) -> ExperimentConfig:
    return ExperimentConfig(dataset="imagefolder", data_root=root, split_file=split_file)


def listed(images) -> list[tuple[str, int]]:
    pairs = zip(images.paths, images.labels.tolist())
    return sorted((f"{path.parent.name}/{path.name}", label) for path, label in pairs)


def test_a_split_file_selects_exactly_the_listed_images_per_split(pool, tmp_path):
    split_file = write(tmp_path / "split.txt", assignment_lines())
    splits = load_splits(imagefolder(pool, split_file), image_size=12)
    assert splits.class_names == list(CLASSES)
    assert listed(splits.train) == [
        (f"{name}/{k:03d}.png", label) for label, name in enumerate(CLASSES) for k in range(4)
    ]
    assert listed(splits.test) == [(f"{name}/004.png", label) for label, name in enumerate(CLASSES)]
    assert len(splits.split_digest) == 16


def test_train_and_test_files_of_path_label_lines_are_the_same_split(pool, tmp_path):
    pairs = [line.split() for line in assignment_lines() if line.endswith(("train", "test"))]
    for word in ("train", "test"):
        lines = [f"{p} {CLASSES.index(p.split('/')[0])}" for p, w in reversed(pairs) if w == word]
        write(tmp_path / "published" / f"{word}.txt", lines)
    by_folder = load_splits(imagefolder(pool, tmp_path / "published"), image_size=12)
    by_file = load_splits(imagefolder(pool, write(tmp_path / "s.txt", assignment_lines())), 12)
    assert listed(by_folder.train) == listed(by_file.train)
    assert listed(by_folder.test) == listed(by_file.test)
    assert by_folder.split_digest == by_file.split_digest  # line order and form do not matter


@pytest.mark.parametrize(
    ("name", "line", "says"),
    [
        ("split.txt", "cat/000.png", "expected 'PATH train|test', got 1 fields"),
        ("split.txt", "cat/000.png train extra", "expected 'PATH train|test', got 3 fields"),
        ("split.txt", "cat/000.png val", "unknown split 'val' (expected train or test)"),
        ("split.txt", "/abs/cat/000.png train", "must be a relative path"),
        ("split.txt", "yak/000.png train", "'yak' is not a class folder"),
        ("split.txt", "cat/000.png test", "'cat/000.png' is listed again (first at "),
        ("published/train.txt", "cat/000.png cat", "label 'cat' is not a class number"),
        ("published/train.txt", "dog/000.png 0", "label 0, but class folder 'dog' is class 1"),
    ],
)
def test_a_bad_line_is_named_with_its_file_and_line_number(pool, tmp_path, name, line, says):
    lines = assignment_lines()
    if name == "split.txt":
        location = write(tmp_path / name, lines[:5] + [line] + lines[5:])
    else:
        location = tmp_path / "published"
        write(location / "train.txt", ["cat/001.png 0", "", line])
        write(location / "test.txt", ["cat/002.png 0"])
    message = one_line_error(DataError, lambda: load_splits(imagefolder(pool, location), 12))
    number = 6 if name == "split.txt" else 3
    assert message.startswith(f"run config key 'split-file': {tmp_path / name}:{number}: ")
    assert says in message


def test_a_missing_image_fails_at_start_naming_the_key_and_file_line(pool, tmp_path):
    split_file = write(tmp_path / "split.txt", [*assignment_lines(), "emu/999.png test"])
    message = one_line_error(DataError, lambda: check_data_present(imagefolder(pool, split_file)))
    end = len(assignment_lines()) + 1
    assert message == (
        f"run config key 'split-file': {split_file}:{end}: image 'emu/999.png' not found "
        f"under {str(pool)!r}"
    )


def test_an_image_in_both_train_txt_and_test_txt_is_named(pool, tmp_path):
    write(tmp_path / "published" / "train.txt", ["cat/000.png 0", "dog/000.png 1"])
    test_file = write(tmp_path / "published" / "test.txt", ["dog/000.png 1"])
    config = imagefolder(pool, tmp_path / "published")
    message = one_line_error(DataError, lambda: load_splits(config, 12))
    assert message.startswith(f"run config key 'split-file': {test_file}:1: 'dog/000.png' is ")


def test_a_split_without_test_images_is_refused(pool, tmp_path):
    split_file = write(tmp_path / "split.txt", ["cat/000.png train", "dog/000.png train"])
    message = one_line_error(DataError, lambda: load_splits(imagefolder(pool, split_file), 12))
    assert "must list both train and test images" in message


def test_nodes_with_other_split_files_have_other_fingerprints(pool, tmp_path):
    lines = assignment_lines()

    def fingerprint(*split_lines: str):
        split_file = write(tmp_path / f"{len(list(tmp_path.iterdir()))}.txt", list(split_lines))
        splits = load_splits(imagefolder(pool, split_file), image_size=12)
        return split_fingerprint(splits.train, splits.class_names, splits.split_digest)

    reference = fingerprint(*lines)
    assert fingerprint(*reversed(lines)) == reference  # the same split, listed in another order
    more_test = fingerprint(*lines, "cat/005.png test")  # the same train images, one more test
    assert (more_test.samples, more_test.digest) == (reference.samples, reference.digest)
    assert more_test.difference(reference).startswith("another split-file split (digest ")
    without = load_splits(ExperimentConfig(dataset="imagefolder", data_root=pool.parent), 12)
    plain = split_fingerprint(without.train, without.class_names, without.split_digest)
    assert plain.split == "" and "where the server has" in plain.difference(reference)


def test_split_file_is_checked_by_the_config_and_changes_results(tmp_path):
    message = one_line_error(
        ConfigError, lambda: ExperimentConfig(dataset="digits", split_file=tmp_path)
    )
    assert message.startswith("run config key 'split-file': dataset 'digits' has its own split")
    absent = tmp_path / "absent.txt"
    message = one_line_error(
        ConfigError, lambda: ExperimentConfig(dataset="imagenet-r", split_file=absent)
    )
    assert message == f"run config key 'split-file': {str(absent)!r} does not exist"
    run_config = ExperimentConfig().to_run_config()
    assert run_config["split-file"] == ""
    write(tmp_path / "x.txt", ["a"])  # data-root must not be empty
    resumed = ExperimentConfig(dataset="imagefolder", data_root=tmp_path, split_file=tmp_path)
    saved = {**run_config, "dataset": "imagefolder", "data-root": str(tmp_path)}
    assert [key for key, *_ in config_differences(saved, resumed)] == ["split-file"]


def test_imagenet_r_reads_a_published_split_instead_of_its_hash_split(imagenet_r, tmp_path):  # noqa: F811
    lines = []
    for wnid in imagenet_r_classes():
        lines += [f"{wnid}/art_0.jpg train", f"{wnid}/art_1.jpg test"]
    split_file = write(tmp_path / "imagenet-r-split.txt", lines)
    config = ExperimentConfig(dataset="imagenet-r", data_root=imagenet_r, split_file=split_file)
    check_data_present(config)
    splits = load_splits(config, image_size=8)
    assert (len(splits.train), len(splits.test), splits.num_classes) == (200, 200, 200)
    assert splits.train.labels.tolist() == list(range(200)) == splits.test.labels.tolist()
    assert splits.split_digest and not (imagenet_r / SPLIT_FILE).exists()
