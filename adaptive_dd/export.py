"""Write a distillation event stream as an ImageFolder dataset with manifest.json, atomically.

Images stream to a hidden temporary folder beside the output as batches finish (memory stays flat); only when
the run is done is the manifest written and the folder renamed into place. A crash, an exception or a stopped
consumer removes the temporary folder, so a half-written dataset never appears under the output name.
"""
from __future__ import annotations

import io
import json
import os
import platform
import re
import shutil
import zipfile
from pathlib import Path
from typing import Iterable, Iterator

from .config import DistillConfig
from .data import to_pil
from .distill import BatchDone, ClassDone, Event, RunDone

MANIFEST = "manifest.json"
FORMAT = "adaptive_dd/1"
ZIP_DATE = (2020, 1, 1, 0, 0, 0)


class ExportError(ValueError):
    """An output location that cannot be used; the message names it."""


def class_folders(classes: list[str]) -> list[str]:
    """Folder name per class such that ImageFolder's sorted order is the class order.

    Class names are used as they are when they are safe path components and already sorted (digits, WordNet
    ids); otherwise each gets its index as a zero-padded prefix and unsafe characters are replaced.
    """
    safe = [re.sub(r"[^\w.\-]+", "_", c).strip(".") or "_" for c in classes]
    if safe == list(classes) and sorted(classes) == list(classes) and len(set(classes)) == len(classes):
        return list(classes)
    width = len(str(len(classes) - 1))
    return [f"{i:0{width}d}_{s}" for i, s in enumerate(safe)]


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "diffusers", "timm", "scikit-optimize", "numpy", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def is_ours(directory: Path) -> bool:
    try:
        return json.loads((directory / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output path that exists and holds something other than an earlier export of ours."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not is_ours(out) and not overwrite:
        raise ExportError(f"output directory {out} exists and is not an adaptive_dd export; "
                          f"choose another or pass --overwrite")
    if not out.parent.exists():
        raise ExportError(f"parent folder {out.parent} of the output does not exist")


def _png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_zip(folder: Path, target: Path) -> Path:
    """A deterministic zip of folder (sorted names, fixed dates), written beside target then renamed."""
    tmp = target.with_name(f".{target.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{folder.name}/{path.relative_to(folder).as_posix()}", ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    os.replace(tmp, target)
    return target


def export(events: Iterable[Event], out: str | os.PathLike, config: DistillConfig, classes: list[str],
           describe: dict | None = None, overwrite: bool = False, make_zip: bool = False) -> Iterator[Event]:
    """Pass events through while writing them to out/ (one folder per class, PNG) with manifest.json.

    classes is the class list the class indices refer to (the dataset's); describe adds model descriptions
    to the manifest. The zip, when asked for, is written to out + ".zip".
    """
    out = Path(out).absolute()
    check_output(out, overwrite)
    folders = dict(zip(classes, class_folders(classes)))
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    images, batches, class_rows = [], [], []
    try:
        for ev in events:
            if isinstance(ev, BatchDone):
                folder = tmp / folders[ev.class_name]
                folder.mkdir(exist_ok=True)
                for slot, seed_id, im in zip(ev.slots, ev.seed_ids, to_pil(ev.images)):
                    name = f"{folders[ev.class_name]}/{slot:04d}.png"
                    (tmp / name).write_bytes(_png_bytes(im))
                    images.append({"file": name, "class": ev.class_name, "class_index": ev.class_index,
                                   "seed_id": seed_id, "beta": ev.beta, "gamma": ev.gamma, "f": ev.f_proxy,
                                   "batch": ev.batch_index})
                batches.append({"class": ev.class_name, "batch": ev.batch_index, "beta": ev.beta, "gamma": ev.gamma,
                                "f_proxy": ev.f_proxy, "f_final": ev.f_final, "seed_ids": list(ev.seed_ids),
                                "history": [{"step": o.step, "beta": o.beta, "gamma": o.gamma, "f": o.f}
                                            for o in ev.observations]})
            elif isinstance(ev, ClassDone):
                class_rows.append({"name": ev.class_name, "index": ev.class_index, "folder": folders[ev.class_name],
                                   "n_images": ev.n_images, "seeds_wrapped": ev.wrapped})
            elif isinstance(ev, RunDone):
                manifest = {"format": FORMAT, "config": config.to_dict(), "versions": library_versions(),
                            "models": describe or {},
                            "cfg": "eps = eps_uncond + beta * (eps_cond - eps_uncond)",
                            "class_order": list(classes), "classes": class_rows, "images": images,
                            "batches": batches}
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
                _replace(tmp, out)
                if make_zip:
                    write_zip(out, out.with_name(out.name + ".zip"))
            yield ev
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an earlier output is swapped out first and then removed."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
