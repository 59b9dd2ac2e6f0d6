"""Hostile input at every place that reads user files or names: open_image, the ImageFolder loader, the app's
upload path, the export's folder and zip names, and model checkpoints. Each gets a clear error naming the file
and the problem, or is handled safely; nothing crashes, hangs, or writes outside the output folder.

tests/test_data.py holds the loader's own cases (symlinks out of the root, FIFOs, symlink loops, the exact
values of converted modes); here every hostile file goes through all three image entry points.
"""
from __future__ import annotations

import io
import json
import os
import random
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adaptive_dd.config import DistillConfig
from adaptive_dd.data import DataError, load_image_folder, open_image
from adaptive_dd.distill import BatchDone, BatchSummary, ClassDone, RunDone
from adaptive_dd.export import ExportError, class_folders, export, write_zip
from adaptive_dd.fidelity import ModelLoadError, load_teacher

RED, GREEN = (255, 0, 0), (0, 255, 0)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(size: int = 32) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header declares width x height: a decompression bomb's signature."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


def _jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(_encode(Image.new("RGB", (8, 8)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _frames() -> list[Image.Image]:
    return [Image.new("RGB", (8, 8), c) for c in (RED, GREEN, (0, 0, 255))]


def _write(data: bytes):
    return lambda path: path.write_bytes(data)


def _half(data: bytes):
    return lambda path: path.write_bytes(data[: len(data) // 2])


def _save(im: Image.Image, **kw):
    return lambda path: im.save(path, **kw)


# name -> (how to make it, what open_image must answer: an error message, or a check of the decoded image)
HOSTILE = {
    "zero.png": (_write(b""), "not an image file"),
    "zero.jpg": (_write(b""), "not an image file"),
    "truncated.png": (_half(_encode(_noise(), "PNG")), "unreadable or truncated image"),
    "truncated.jpg": (_half(_encode(_noise(), "JPEG")), "unreadable or truncated image"),
    "bomb.png": (_write(_png_declaring(100_000, 100_000)), "image too large"),
    "bomb.jpg": (_write(_jpeg_declaring(65_500, 65_500)), "image too large"),
    "huge.png": (_write(_png_declaring(5_000, 5_000)), "5000x5000 pixels is over the limit of 16777216"),
    "text.png": (_write(b"just some text\n"), "not an image file"),
    "page.png": (_write(b"<!doctype html><html><script>alert(1)</script></html>"), "not an image file"),
    "pipe.png": (lambda path: os.mkfifo(path), "not a regular file"),
    "sixteen.png": (_save(Image.fromarray(np.full((4, 4), 65535, np.uint16))),
                    lambda im: im.mode == "L" and np.asarray(im).min() == 255),
    "cmyk.jpg": (_save(Image.new("CMYK", (8, 8), (0, 255, 255, 0))),
                 lambda im: im.mode == "RGB" and np.abs(np.asarray(im, int) - RED).max() <= 2),
    "animated.gif": (_save(_frames()[0], save_all=True, append_images=_frames()[1:], duration=40, loop=0),
                     lambda im: im.mode == "RGB" and np.asarray(im)[0, 0].tolist() == list(RED)),
    "animated.png": (_save(_frames()[0], save_all=True, append_images=_frames()[1:]),
                     lambda im: im.mode == "RGB" and np.asarray(im)[0, 0].tolist() == list(RED)),
}
REFUSED = sorted(k for k, (_, want) in HOSTILE.items() if isinstance(want, str))
HANDLED = sorted(k for k, (_, want) in HOSTILE.items() if not isinstance(want, str))


def _make(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    HOSTILE[name][0](path)
    return path


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_open_image_and_image_folder(name: str, tmp_path: Path) -> None:
    path = _make(tmp_path / "data" / "a", name)
    Image.new("L", (8, 8), 7).save(tmp_path / "data" / "a" / "good.png")
    want = HOSTILE[name][1]
    if isinstance(want, str):
        # a folder is indexed without decoding: a bad image is refused, by name, when it is read
        for load in (lambda: open_image(path), lambda: load_image_folder(tmp_path / "data").tensor([0, 1], 8, 1)):
            with pytest.raises(DataError) as e:
                load()
            assert f"{name}: {want}" in str(e.value)
    else:
        assert want(open_image(path))
        ds = load_image_folder(tmp_path / "data")
        assert sorted(ds.ids) == sorted([f"a/{name}", "a/good.png"])
        assert want(ds.images[ds.ids.index(f"a/{name}")])


def test_app_upload_path_skips_each_bad_file_with_a_warning_naming_it(tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    from adaptive_dd import app_handlers

    files = [str(_make(tmp_path, name)) for name in sorted(HOSTILE)]
    (tmp_path / "folder.png").mkdir()
    Image.new("L", (8, 8), 7).save(tmp_path / "good.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, names = app_handlers.read_uploads([*files, str(tmp_path / "folder.png"), str(tmp_path / "good.png")])
    assert names == [*HANDLED, "good.png"]
    assert all(HOSTILE[n][1](im) for n, im in zip(HANDLED, images))
    skipped = sorted(str(w.message) for w in caught if str(w.message).startswith("skipped "))
    # the app's cap is 2048 x 2048: a 5000 x 5000 upload says so
    expected = {n: HOSTILE[n][1] for n in REFUSED} | {"huge.png": "over the limit of 4194304",
                                                       "folder.png": "not a regular file"}
    assert len(skipped) == len(expected)
    for message, (name, want) in zip(skipped, sorted(expected.items())):
        assert message.startswith(f"skipped {name}: ") and want in message, message


FORMATS = {"png": ("PNG", {}), "jpg": ("JPEG", {"quality": 90}), "gif": ("GIF", {}), "bmp": ("BMP", {}),
           "tif": ("TIFF", {"compression": "tiff_lzw"}), "webp": ("WEBP", {}), "ppm": ("PPM", {})}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on corrupt EXIF while it reads the mutants
def test_fuzzed_files_decode_or_raise_data_error(tmp_path: Path) -> None:
    """Truncations, byte flips and insertions of valid files: 40 per format, each an image or a DataError."""
    rng = random.Random(0)
    outcomes = {"image": 0, "DataError": 0}
    for ext, (fmt, kw) in FORMATS.items():
        valid = _encode(_noise(24), fmt, **kw)
        for i in range(40):
            data = bytearray(valid)
            if i % 3 == 0:
                data = data[: rng.randrange(len(data))]
            elif i % 3 == 1:
                for _ in range(rng.randint(1, 8)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            else:
                pos = rng.randrange(len(data))
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
            path = tmp_path / f"fuzz{i}.{ext}"
            path.write_bytes(bytes(data))
            try:
                im = open_image(path)
            except DataError as e:
                assert str(e).startswith(f"{path}: ")
                outcomes["DataError"] += 1
            else:
                assert im.mode in ("L", "RGB")
                outcomes["image"] += 1
    assert sum(outcomes.values()) == 40 * len(FORMATS) and min(outcomes.values()) > 0


# --- names that would leave the output folder or the zip's root ------------------------------------------------

HOSTILE_CLASSES = ["..", "../../escape", "/etc/passwd", "a/b", "a\\b", ".", "", ".hidden", "café", "猫", "Cat",
                   "cat", "x" * 300, "é" * 200, "manifest.json", "-rf", "new\nline"]


def test_class_folder_names_are_single_safe_components():
    folders = class_folders(HOSTILE_CLASSES)
    assert sorted(folders) == folders and len({f.casefold() for f in folders}) == len(folders)
    for f in folders:
        assert "/" not in f and "\\" not in f and not f.startswith(".") and len(f.encode()) <= 128
        assert f.casefold() != "manifest.json"
    for safe in (["0", "1", "2"], ["n01440764", "n01443537"]):
        assert class_folders(safe) == safe
    assert class_folders(["Cat", "cat"]) == ["0_Cat", "1_cat"]  # one folder on a case-insensitive disk
    assert class_folders(["manifest.json"]) == ["0_manifest.json"]


def _events(classes: list[str]):
    for i, name in enumerate(classes):
        images = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(i))
        yield BatchDone(name, i, 0, images, images, [f"seed{i}"], [0], 1.0, 0.5, -0.1, -0.2, 0.0, [], 0.0, 0.0)
        yield ClassDone(name, i, 1, False, [BatchSummary(0, 1.0, 0.5, -0.1, -0.2)])
    yield RunDone(len(classes), 0.0, 0.0, 0.0, list(classes))


def test_export_with_hostile_class_names_writes_only_inside_the_output(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    config = DistillConfig(classes=list(HOSTILE_CLASSES))
    list(export(_events(HOSTILE_CLASSES), parent / "out", config, HOSTILE_CLASSES, make_zip=True))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.parent == tmp_path) == ["parent"]
    assert sorted(p.name for p in parent.iterdir()) == ["out", "out.zip"]
    out = parent / "out"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    manifest = json.loads((out / "manifest.json").read_text())
    assert files == sorted(["manifest.json", *(img["file"] for img in manifest["images"])])
    assert [c["name"] for c in manifest["classes"]] == HOSTILE_CLASSES
    assert [c["folder"] for c in manifest["classes"]] == sorted(p.name for p in out.iterdir() if p.is_dir())
    with zipfile.ZipFile(parent / "out.zip") as zf:
        names = zf.namelist()
        assert sorted(names) == sorted(f"out/{f}" for f in files)
        assert all(".." not in n.split("/") and not n.startswith("/") for n in names)
        zf.extractall(tmp_path / "unzipped")
    assert sorted(p.name for p in (tmp_path / "unzipped").iterdir()) == ["out"]


def test_zip_refuses_symlinks_and_unsafe_roots(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"png")
    (tmp_path / "secret").write_text("outside")
    os.symlink(tmp_path / "secret", folder / "b.png")
    with pytest.raises(ExportError, match="b.png is a symlink"):
        write_zip(folder, tmp_path / "out.zip")
    (folder / "b.png").unlink()
    for root in ("..", "../x", "a/b", ""):
        with pytest.raises(ExportError, match="zip root"):
            write_zip(folder, tmp_path / "out.zip", root=root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "secret"]  # no zip, no temporary file
    write_zip(folder, tmp_path / "out.zip")
    assert zipfile.ZipFile(tmp_path / "out.zip").namelist() == ["out/a.png"]


# --- model weights: safetensors or weights-only torch files, never a pickle that runs code ----------------------

class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    import timm

    model = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    marker = tmp_path / "code-ran"
    evil = tmp_path / "teacher.pth"
    torch.save({"state_dict": model.state_dict(), "extra": _RunsCode(marker)}, evil)
    with pytest.raises(ModelLoadError, match=r"teacher\.pth is refused.*weights_only=True"):
        load_teacher(f"resnet10t:{evil}", num_classes=10)
    assert not marker.exists()
    # a plain-tensor training checkpoint (timm's layout, DDP prefixes) loads
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3},
               tmp_path / "plain.pth")
    teacher = load_teacher(f"resnet10t:{tmp_path / 'plain.pth'}", num_classes=10)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(teacher.model.state_dict()[k], v, rtol=0, atol=0)


def test_no_loader_in_the_package_unpickles_freely() -> None:
    """Every torch.load passes weights_only=True; no pickle, joblib or numpy allow_pickle anywhere."""
    package = Path(__file__).resolve().parent.parent / "adaptive_dd"
    for path in package.rglob("*.py"):
        text = path.read_text()
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"
        assert "pickle.load" not in text and "joblib" not in text and "allow_pickle=True" not in text, path
