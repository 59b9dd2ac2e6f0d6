"""Datasets: the stored splits, the built-in loaders, and ImageFolder's handling of bad and unusual files."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adaptive_dd.data import (
    BUILTIN_DATASETS,
    TEST_FRACTION,
    VAL_FRACTION,
    DataError,
    _builtin_arrays,
    load_dataset,
    load_image_folder,
    open_image,
    split_path,
    stratified_split,
    train_val_test,
)


def _gray(value: int = 128, size: int = 8) -> Image.Image:
    return Image.new("L", (size, size), value)


def _folder(root: Path, counts: dict[str, int]) -> Path:
    """An ImageFolder with counts[class] 8x8 gray PNGs per class; image k of a class has value 10 * (k + 1)."""
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for k in range(n):
            _gray(10 * (k + 1)).save(root / name / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def uci() -> tuple[np.ndarray, np.ndarray]:
    return _builtin_arrays("uci-digits")


# --- built-in datasets and their fixed splits -----------------------------------------------------------------

@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_stored_split_is_the_regenerated_stratified_split(name: str) -> None:
    _, y = _builtin_arrays(name)
    stored = json.loads(split_path(name).read_text())
    train, val, test = train_val_test(y)
    assert stored["train"] == train and stored["val"] == val and stored["test"] == test
    assert stored["test"] == stratified_split(y)[1]  # carving val out of train left test as it was
    assert not set(train) & set(test) and not set(val) & set(test) and not set(train) & set(val)
    assert sorted(train + val + test) == list(range(len(y)))
    for c in np.unique(y):
        n_val = int((y[val] == c).sum())
        assert abs(n_val - VAL_FRACTION * (1 - TEST_FRACTION) * (y == c).sum()) <= 1.5, f"class {c}: {n_val} in val"
        n, n_test = int((y == c).sum()), int((y[test] == c).sum())
        assert 0 < n_test < n, f"class {c} missing from one side of the split"
        assert abs(n_test - TEST_FRACTION * n) <= 1, f"class {c}: {n_test} of {n} in test"


def test_stratified_split_is_seeded() -> None:
    y = np.repeat(np.arange(3), 10)
    assert stratified_split(y, seed=0) == stratified_split(y, seed=0)
    assert stratified_split(y, seed=0) != stratified_split(y, seed=1)
    train, test = stratified_split(y)
    assert len(test) == 6 and sorted(np.bincount(y[test]).tolist()) == [2, 2, 2]


def test_builtin_train_split_holds_only_train_images(uci) -> None:
    x, y = uci
    train = set(json.loads(split_path("uci-digits").read_text())["train"])
    ds = load_dataset("uci-digits", "train")
    idx = [int(i.split("/")[1]) for i in ds.ids]
    assert len(ds) == len(train) == len(set(idx)) and set(idx) == train
    assert all(i.startswith("uci-digits/") for i in ds.ids)
    np.testing.assert_array_equal(ds.labels, y[idx])
    np.testing.assert_array_equal(np.asarray(ds.images[5]), x[idx[5]])
    assert ds.classes == [str(i) for i in range(10)]
    test_ids, val_ids = set(load_dataset("uci-digits", "test").ids), set(load_dataset("uci-digits", "val").ids)
    assert not test_ids & set(ds.ids) and not val_ids & set(ds.ids)
    assert len(test_ids) + len(val_ids) + len(ds) == len(y)


def test_builtin_unknown_split() -> None:
    with pytest.raises(DataError, match="unknown split 'dev'; use train, val, test or all"):
        load_dataset("uci-digits", "dev")


def test_tensor_shape_range_and_values(uci) -> None:
    x, _ = uci
    ds = load_dataset("uci-digits", "train")
    idx = [int(i.split("/")[1]) for i in ds.ids[:4]]
    native = ds.tensor(range(4), 8, 1)
    assert native.shape == (4, 1, 8, 8) and native.dtype == torch.float32
    torch.testing.assert_close(native[:, 0], torch.from_numpy(x[idx] / 255.0).float())
    big = ds.tensor(np.arange(4), 32, 3)
    assert big.shape == (4, 3, 32, 32)
    assert float(big.min()) >= 0.0 and float(big.max()) <= 1.0 and float(big.max()) > 0.9
    torch.testing.assert_close(big[:, 0], big[:, 2])


# --- ImageFolder: bad input ----------------------------------------------------------------------------------

def test_truncated_png(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 1})
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    bad = root / "a" / "cut.png"
    bad.write_bytes(data[: len(data) // 2])
    ds = load_image_folder(root)  # indexing decodes nothing: the bad file is reported when it is read
    with pytest.raises(DataError, match="cut.png.*truncated"):
        ds.tensor(range(len(ds)), 8, 1)


@pytest.mark.parametrize("name,content", [("zero.png", b""), ("text.png", b"not a picture\n"),
                                          ("notes.txt", b"some notes\n")])
def test_non_image_files(tmp_path: Path, name: str, content: bytes) -> None:
    root = _folder(tmp_path / "d", {"a": 1})
    (root / "a" / name).write_bytes(content)
    ds = load_image_folder(root)
    with pytest.raises(DataError, match=rf"{name}: not an image file"):
        ds.images[ds.ids.index(f"a/{name}")]


def test_empty_class_folder(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 1})
    (root / "empty").mkdir()
    (root / "empty" / ".hidden").write_bytes(b"")
    with pytest.raises(DataError, match="empty: empty class folder"):
        load_image_folder(root)


def test_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_image_folder(tmp_path / "d")


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"{missing}: no such directory"):
        load_image_folder(missing)
    with pytest.raises(DataError, match="unknown dataset.*nowhere"):
        load_dataset(str(missing))
    with pytest.raises(DataError, match="no such file"):
        open_image(missing / "x.png")


def test_symlink_out_of_root(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 1})
    outside = tmp_path / "secret.png"
    _gray().save(outside)
    os.symlink(outside, root / "a" / "link.png")
    with pytest.raises(DataError, match="link.png: links outside"):
        load_image_folder(root)


def test_symlinked_class_folder_out_of_root(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 1})
    _folder(tmp_path / "elsewhere", {"b": 1})
    os.symlink(tmp_path / "elsewhere" / "b", root / "b")
    with pytest.raises(DataError, match="b: class folder links outside"):
        load_image_folder(root)


def test_symlink_inside_root_is_allowed(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 2})
    os.symlink(root / "a" / "0.png", root / "a" / "2.png")
    ds = load_image_folder(root)
    assert len(ds) == 3 and np.asarray(ds.images[2]).max() == 10


def test_pixel_cap(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    _gray(size=20).save(path)
    with pytest.raises(DataError, match=r"big.png: 20x20 pixels is over the limit of 399"):
        open_image(path, max_pixels=399)
    assert open_image(path, max_pixels=400).size == (20, 20)


def test_unknown_class_name(tmp_path: Path) -> None:
    ds = load_image_folder(_folder(tmp_path / "d", {"cat": 1, "dog": 1}))
    assert ds.class_index("dog") == 1
    with pytest.raises(DataError, match="'nope'.*cat, dog"):
        ds.class_index("nope")


# --- ImageFolder: modes are converted, not rejected ----------------------------------------------------------

def _roundtrip(tmp_path: Path, im: Image.Image, name: str, **save) -> Image.Image:
    path = tmp_path / name
    im.save(path, **save)
    return open_image(path)


def test_rgba_composites_on_black(tmp_path: Path) -> None:
    a = np.zeros((2, 2, 4), np.uint8)
    a[0, 0] = (200, 100, 50, 255)  # opaque: kept
    a[0, 1] = (200, 100, 50, 0)    # fully transparent: black
    a[1, 0] = (200, 100, 50, 128)  # half: scaled towards black
    out = _roundtrip(tmp_path, Image.fromarray(a, "RGBA"), "rgba.png")
    assert out.mode == "RGB"
    px = np.asarray(out).astype(int)
    assert px[0, 0].tolist() == [200, 100, 50] and px[0, 1].tolist() == [0, 0, 0]
    assert np.abs(px[1, 0] - np.array([100, 50, 25])).max() <= 1


def test_la_composites_to_gray(tmp_path: Path) -> None:
    a = np.array([[[180, 255], [180, 0]]], np.uint8)
    out = _roundtrip(tmp_path, Image.fromarray(a, "LA"), "la.png")
    assert out.mode == "L" and np.asarray(out).tolist() == [[180, 0]]


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    p.putdata([1, 2])
    plain = _roundtrip(tmp_path, p, "p.png")
    assert plain.mode == "RGB" and np.asarray(plain).tolist() == [[[255, 0, 0], [0, 0, 255]]]
    transparent = _roundtrip(tmp_path, p, "pt.png", transparency=2)
    assert transparent.mode == "RGB" and np.asarray(transparent).tolist() == [[[255, 0, 0], [0, 0, 0]]]


def test_16_bit_gray_scales_to_8_bit(tmp_path: Path) -> None:
    a = np.array([[0, 257 * 128, 65535]], np.uint16)
    src = Image.fromarray(a)
    assert src.mode == "I;16"
    out = _roundtrip(tmp_path, src, "i16.png")
    assert out.mode == "L" and np.asarray(out).tolist() == [[0, 128, 255]]


def test_32_bit_int_uses_the_16_bit_scale(tmp_path: Path) -> None:
    # Pillow decodes PGM and PNG deeper than 8 bits to mode I on a 0..65535 scale; a dim image stays dim.
    hdr = b"P5 3 1 65535\n"
    (tmp_path / "dim.pgm").write_bytes(hdr + np.array([0, 257 * 64, 65535], ">u2").tobytes())
    (tmp_path / "uniform.pgm").write_bytes(hdr + np.full(3, 500, ">u2").tobytes())
    assert Image.open(tmp_path / "dim.pgm").mode == "I"
    assert np.asarray(open_image(tmp_path / "dim.pgm")).tolist() == [[0, 64, 255]]
    assert np.asarray(open_image(tmp_path / "uniform.pgm")).tolist() == [[2, 2, 2]]


def test_cmyk_becomes_rgb(tmp_path: Path) -> None:
    a = np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [255, 0, 0, 0]]], np.uint8)
    out = _roundtrip(tmp_path, Image.fromarray(a, "CMYK"), "cmyk.tif")
    assert out.mode == "RGB"
    assert np.asarray(out).tolist() == [[[255, 255, 255], [0, 0, 0], [0, 255, 255]]]


def test_one_bit_becomes_gray(tmp_path: Path) -> None:
    im = Image.new("1", (2, 1))
    im.putpixel((1, 0), 1)
    out = _roundtrip(tmp_path, im, "bw.png")
    assert out.mode == "L" and np.asarray(out).tolist() == [[0, 255]]


def test_mixed_modes_in_one_folder_give_one_tensor_format(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    Image.new("RGBA", (4, 4), (255, 255, 255, 255)).save(root / "a" / "0.png")
    Image.fromarray(np.full((6, 6), 65535, np.uint16)).save(root / "a" / "1.png")
    Image.new("1", (5, 5), 1).save(root / "a" / "2.png")
    ds = load_image_folder(root)
    assert [im.mode for im in ds.images] == ["RGB", "L", "L"]
    t = ds.tensor(range(3), 4, 1)
    assert t.shape == (3, 1, 4, 4)
    torch.testing.assert_close(t, torch.ones_like(t))


# --- ImageFolder: layout and splits --------------------------------------------------------------------------

def test_class_folders_sorted_and_hidden_entries_skipped(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"zebra": 1, "ant": 2})
    (root / ".cache").mkdir()
    (root / "ant" / ".DS_Store").write_bytes(b"junk")
    ds = load_image_folder(root)
    assert ds.classes == ["ant", "zebra"]
    assert ds.labels.tolist() == [0, 0, 1]
    assert ds.ids == ["ant/0.png", "ant/1.png", "zebra/0.png"]
    assert [int(np.asarray(im).max()) for im in ds.images] == [10, 20, 10]


def test_train_and_test_subfolders(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _folder(root / "train", {"a": 3, "b": 2})
    _folder(root / "test", {"a": 1, "b": 1})
    train, test = load_dataset(str(root), "train"), load_dataset(str(root), "test")
    assert len(train) == 5 and all(i.startswith("train/") for i in train.ids)
    assert len(test) == 2 and all(i.startswith("test/") for i in test.ids)
    assert train.classes == test.classes == ["a", "b"]
    assert train.labels.tolist() == [0, 0, 0, 1, 1] and test.labels.tolist() == [0, 1]


def test_val_folder_stands_in_for_a_missing_test_folder(tmp_path: Path) -> None:
    root = tmp_path / "nette"
    _folder(root / "train", {"a": 2})
    _folder(root / "val", {"a": 1})
    test = load_dataset(str(root), "test")
    assert len(test) == 1 and test.ids == ["val/a/0.png"]


def test_missing_split_folders(tmp_path: Path) -> None:
    _folder(tmp_path / "tt" / "train", {"a": 1})
    with pytest.raises(DataError, match="has no test/ folder"):
        load_image_folder(tmp_path / "tt", "test")
    flat = _folder(tmp_path / "flat", {"a": 1})
    assert len(load_image_folder(flat, "train")) == 1
    for split in ("test", "val"):
        with pytest.raises(DataError, match=f"has no {split}/ folder"):
            load_image_folder(flat, split)


def test_nested_folder_in_class_is_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 1})
    (root / "a" / "sub").mkdir()
    with pytest.raises(DataError, match="sub: nested folders"):
        load_image_folder(root)


# --- ImageFolder: entries that are not plain files or folders --------------------------------------------------

def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 1})
    os.mkfifo(root / "a" / "pipe.png")  # opening it for reading would wait for a writer forever
    with pytest.raises(DataError, match="pipe.png: not a regular file"):
        load_image_folder(root)
    with pytest.raises(DataError, match="pipe.png: not a regular file"):
        open_image(root / "a" / "pipe.png")


def test_symlink_loop(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 1})
    os.symlink(root / "a" / "loop.png", root / "a" / "loop.png")
    with pytest.raises(DataError, match="loop.png: a symlink loop"):
        load_image_folder(root)
    with pytest.raises(DataError, match="loop.png: unreadable"):
        open_image(root / "a" / "loop.png")


def test_unicode_and_odd_class_folder_names_are_kept_as_names(tmp_path: Path) -> None:
    names = ["café", "猫", "a b", "back\\slash", "new\nline", "-rf"]
    root = _folder(tmp_path / "d", dict.fromkeys(names, 1))
    ds = load_image_folder(root)
    assert ds.classes == sorted(names) and len(ds) == len(names)
