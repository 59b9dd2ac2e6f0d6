"""Data sources beyond the built-in sets: lazy ImageFolders, saved Hugging Face datasets, ImageNet wnids."""
from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptive_dd import imagenet
from adaptive_dd.data import DataError, load_dataset, load_image_folder


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
def test_opening_a_folder_of_100k_files_decodes_none_of_them(tmp_path: Path) -> None:
    # 32x32 RGB: decoded, the 100,000 images would hold over 300 MB of pixels alone (measured: ~450 MB of RSS).
    # Hard links to one PNG per class keep the folder cheap to build.
    root = tmp_path / "big"
    for c in range(10):
        (root / f"c{c}").mkdir(parents=True)
        src = tmp_path / f"c{c}.png"
        Image.fromarray(np.full((32, 32, 3), 20 * c, np.uint8)).save(src)
        for k in range(10_000):
            os.link(src, root / f"c{c}" / f"{k:05d}.png")
    gc.collect()
    before = _rss()
    ds = load_image_folder(root)
    grown = _rss() - before
    assert len(ds) == 100_000 and ds.classes == [f"c{c}" for c in range(10)]
    assert grown < 200e6, f"RSS grew by {grown / 1e6:.0f} MB"
    assert ds.ids[10_000] == "c1/00000.png" and ds.labels[10_000] == 1
    assert np.asarray(ds.images[10_000])[0, 0].tolist() == [20, 20, 20]  # decoded on access


def test_images_decode_on_every_access_and_index_like_a_list(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    for k in range(3):
        Image.new("L", (4, 4), 10 * k).save(root / "a" / f"{k}.png")
    ds = load_image_folder(root)
    assert [int(np.asarray(im).max()) for im in ds.images] == [0, 10, 20]
    assert int(np.asarray(ds.images[-1]).max()) == 20 and len(ds.images[1:]) == 2
    Image.new("L", (4, 4), 99).save(root / "a" / "1.png")  # the file, not a cached copy, is what is read
    assert int(np.asarray(ds.images[1]).max()) == 99
    with pytest.raises(IndexError):
        ds.images[3]


def test_dangling_symlink_is_refused_while_indexing(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    os.symlink(root / "a" / "gone.png", root / "a" / "link.png")
    with pytest.raises(DataError, match="link.png: a dangling symlink"):
        load_image_folder(root)


@pytest.fixture(scope="module")
def hf_saved(tmp_path_factory) -> Path:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"img": datasets.Image(), "note": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["tench", "English springer", "church"])})

    def split(values: list[int], labels: list[int]):
        images = [Image.new("RGB", (6, 6), (v, 0, 0)) for v in values]
        return datasets.Dataset.from_dict({"img": images, "note": ["x"] * len(values), "label": labels},
                                          features=features)

    path = tmp_path_factory.mktemp("hf") / "saved"
    datasets.DatasetDict({"train": split([10, 20, 30, 40], [2, 0, 1, 0]),
                          "validation": split([50, 60], [1, 2])}).save_to_disk(str(path))
    return path


def test_saved_hugging_face_dataset(hf_saved: Path) -> None:
    train = load_dataset(str(hf_saved), "train")
    assert train.classes == ["tench", "English springer", "church"]  # from the ClassLabel feature, in its order
    assert train.labels.tolist() == [2, 0, 1, 0] and train.ids == ["train/0", "train/1", "train/2", "train/3"]
    assert [np.asarray(im)[0, 0, 0] for im in train.images] == [10, 20, 30, 40]
    assert train.tensor([2], 6, 3)[0, 0, 0, 0].item() == pytest.approx(30 / 255)
    test = load_dataset(str(hf_saved), "test")  # no test split: the validation split stands in
    assert test.labels.tolist() == [1, 2] and test.ids[0] == "validation/0"
    with pytest.raises(DataError, match="no 'val' split.*train, validation"):
        load_dataset(str(hf_saved), "val")


def test_saved_dataset_without_a_class_label_is_refused(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"image": [Image.new("L", (4, 4))], "label": [3]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.Value("int64")}))
    ds.save_to_disk(str(tmp_path / "plain"))
    with pytest.raises(DataError, match="needs an Image column and a ClassLabel column.*label \\(Value\\)"):
        load_dataset(str(tmp_path / "plain"))


def test_imagenet_table_and_presets() -> None:
    table = imagenet.classes()
    assert len(table) == 1000 and table[0] == (0, "n01440764", "tench")
    assert imagenet.lookup("n02102040").index == 217 and imagenet.lookup("English Springer").index == 217
    # ImageNette's anchors: the indices RDED and D4M use, in this order
    assert imagenet.indices(list(imagenet.PRESETS["imagenette"])) == [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]
    assert imagenet.indices(list(imagenet.PRESETS["imagewoof"])) == [155, 159, 162, 167, 182, 193, 207, 229, 258, 273]
    assert imagenet.readable("n03888257") == "parachute" and imagenet.readable("7") == "7"
    assert imagenet.indices(["n01440764", "not-a-class"]) is None
    assert imagenet.expand_classes(["ImageWoof", "n01440764"])[::10] == ["n02086240", "n01440764"]
    assert len({c.name for c in table}) == 1000  # readable names are unique, but two only by case:
    assert imagenet.lookup("Cardigan").index == 264 and imagenet.lookup("cardigan").index == 474
    assert imagenet.lookup("CARDIGAN") is None


def test_cli_distills_from_a_saved_hugging_face_dataset(tmp_path: Path, tiny_unet_dir, tiny_teacher_dir) -> None:
    datasets = pytest.importorskip("datasets")
    from adaptive_dd.cli import main

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["3", "5"])})
    images = [Image.new("L", (8, 8), 20 * k) for k in range(6)]
    datasets.Dataset.from_dict({"image": images, "label": [0, 1] * 3}, features=features).save_to_disk(
        str(tmp_path / "hf"))
    out = tmp_path / "out"
    assert main(["distill", "--data", str(tmp_path / "hf"), "--model", str(tiny_unet_dir), "--teacher",
                 str(tiny_teacher_dir), "--ipc", "2", "--steps", "4", "--betas", "1", "--gammas", "0.5",
                 "--out", str(out), "--device", "cpu"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(p.parent.name for p in out.rglob("*.png")) == ["3", "3", "5", "5"]
    # seed ids are the saved split's rows; rows alternate between the two labels
    assert {(im["class"], int(im["seed_id"].removeprefix("train/")) % 2) for im in manifest["images"]} == {
        ("3", 0), ("5", 1)}
