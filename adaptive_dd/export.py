"""Write a distillation event stream as an ImageFolder dataset with manifest.json: atomically, and resumably.

Images stream into a hidden work folder beside the output as batches finish (memory stays flat). Every file is
written under a temporary name, fsynced and renamed, and every finished batch and class leaves a progress
record in the work folder's .progress/. When all classes are done, process 0 assembles manifest.json from the
records, drops .progress/ and renames the work folder into place: a dataset appears under the output name only
complete.

A resumable export (the CLI) names its work folder after the output, .OUT.partial, and keeps it when killed or
failed; a run with resume=True checks that it was made with the same settings and skips what it recorded. The
images of a batch depend only on the seed, the class and the batch, so the result is byte-identical to an
uninterrupted run, however many processes share the run. A one-off export (the app, export()) uses a
per-process folder that any failure removes.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import platform
import re
import shutil
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .config import DistillConfig
from .data import to_pil
from .distill import ONE_PROCESS, BatchDone, BatchSummary, ClassDone, Event, Progress, RunDone, Searched, Shard

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a second run on the same output is not detected there
    fcntl = None

MANIFEST = "manifest.json"
FORMAT = "adaptive_dd/1"
ZIP_DATE = (2020, 1, 1, 0, 0, 0)
PROGRESS = ".progress"
RUN_RECORD = "run.json"
TMP = ".tmp"
MAX_FOLDER_BYTES = 120
RESERVED = {MANIFEST.casefold()}
# The manifest fields a resumed run must share with the run it continues: they decide every byte written.
RECORDED = ("config", "class_order", "models", "versions")


class ExportError(ValueError):
    """An output location that cannot be used; the message names it."""


def _folder_name(name: str) -> str:
    """One safe path component: word characters, dots and dashes, no leading dot, at most MAX_FOLDER_BYTES."""
    safe = re.sub(r"[^\w.\-]+", "_", name).strip(".")
    return safe.encode()[:MAX_FOLDER_BYTES].decode(errors="ignore").strip(".") or "_"


def class_folders(classes: list[str]) -> list[str]:
    """Folder name per class such that ImageFolder's sorted order is the class order.

    Class names are used as they are when they are safe path components, already sorted, and distinct even
    on case-insensitive file systems (digits, WordNet ids); otherwise each gets its index as a zero-padded
    prefix and unsafe characters are replaced, so no name can leave the output folder or clash with another.
    """
    safe = [_folder_name(c) for c in classes]
    keys = {unicodedata.normalize("NFC", c).casefold() for c in classes}
    if (safe == list(classes) and sorted(classes) == list(classes) and len(keys) == len(classes)
            and not keys & RESERVED):
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


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_ours(directory: Path) -> bool:
    return (_read_json(directory / MANIFEST) or {}).get("format") == FORMAT


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


def _write_atomic(path: Path, data: bytes) -> None:
    """Write beside path, fsync, rename over it: a reader, or a run resumed after a kill, sees all or nothing."""
    tmp = path.with_name(f".{path.name}{TMP}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    """Make the renames in a folder durable, so a record never outlives the files it vouches for."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_zip(folder: Path, target: Path, root: str | None = None) -> Path:
    """A deterministic zip of folder's files under root/ (default: the folder's name): sorted names, fixed dates,
    written beside target then renamed. A symlink in the folder is refused, so every member is a file inside it."""
    folder, target = Path(folder), Path(target)
    root = folder.name if root is None else root
    if _folder_name(root) != root:
        raise ExportError(f"zip root {root!r} is not a single safe folder name")
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise ExportError(f"{path} is a symlink; the zip holds only files inside {folder}")
        if path.is_file():
            files.append(path)
    tmp = target.with_name(f".{target.name}{TMP}")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                info = zipfile.ZipInfo(f"{root}/{path.relative_to(folder).as_posix()}", ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, path.read_bytes())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _differences(recorded: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ, with both values."""
    out = []
    for key in dict.fromkeys([*recorded, *current]):
        a, b, name = recorded.get(key), current.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name} ({json.dumps(a)} recorded, {json.dumps(b)} now)")
    return out


class ExportRun:
    """One export's work folder: progress records as batches and classes finish, then the manifest and the rename.

    Opening it checks the output and, for resume, the recorded settings (in every process, reading only); then
    process 0 prepares the work folder, and every process reads the progress. shard.wait() separates the steps,
    so all processes see the same progress and deal the unfinished classes alike.
    """

    def __init__(self, out: str | os.PathLike, config: DistillConfig, classes: list[str], describe: dict | None = None,
                 *, overwrite: bool = False, resumable: bool = False, resume: bool = False, shard: Shard = ONE_PROCESS):
        if shard.count > 1 and not resumable:
            raise ValueError("processes can share only a resumable export, whose work folder is named after the output")
        self.out = Path(out).absolute()
        self.config = config
        self.classes = list(classes)
        self.folders = dict(zip(self.classes, class_folders(self.classes)))
        self.shard = shard
        self.resumable = resumable
        self.overwrite = overwrite
        self.record = json.loads(json.dumps({
            "format": FORMAT, "config": config.to_dict(), "class_order": self.classes, "models": describe or {},
            "versions": library_versions()}))
        suffix = ".partial" if resumable else f".tmp-{os.getpid()}"
        self.work = self.out.with_name(f".{self.out.name}{suffix}")
        self.old = self.out.with_name(f".{self.out.name}.old")
        self.zip = self.out.with_name(self.out.name + ".zip")
        self.progress = Progress()
        self._lock: int | None = None
        try:
            self.state = self._inspect(overwrite, resume)
            shard.wait()
            if shard.is_main:
                self._prepare()
            shard.wait()
            if self.state == "partial":
                self.progress = self._read_progress()
            shard.wait()
        except BaseException:
            self._unlock()
            raise

    @property
    def finished(self) -> bool:
        """Nothing is left to distill: the output is complete, or only the final rename was interrupted."""
        return self.state in ("assembled", "complete")

    def _recorded(self, record: dict | None) -> dict:
        """The fields a resumed run must share, the config's at the top level so messages read "bo.budget"."""
        record = record or {}
        return {**(record.get("config") or {}), **{k: record.get(k) for k in RECORDED if k != "config"}}

    def _inspect(self, overwrite: bool, resume: bool) -> str:
        """What is on disk: fresh, partial or assembled (a work folder), complete (the output), or discard."""
        check_output(self.out, overwrite)
        if not self.resumable:
            return "fresh"
        if not self.work.exists():
            if not (resume and is_ours(self.out)):
                return "fresh"
            self._refuse_other_settings(_read_json(self.out / MANIFEST), f"the finished run in {self.out}",
                                        "or without --resume to replace it")
            return "complete"
        if not self.work.is_dir():
            raise ExportError(f"{self.work} is in the way of the work folder of {self.out}: remove it")
        if self.shard.is_main:
            self._take_lock()
        if is_ours(self.work):
            state, recorded = "assembled", _read_json(self.work / MANIFEST)
        elif (self.work / PROGRESS / RUN_RECORD).exists():
            state, recorded = "partial", _read_json(self.work / PROGRESS / RUN_RECORD)
        elif not any(self.work.iterdir()):
            return "fresh"
        else:
            raise ExportError(f"{self.work} is in the way of the work folder of {self.out}: it holds no "
                              f"adaptive_dd run record; remove it")
        if not resume:
            if overwrite:
                return "discard"
            done = len(list((self.work / PROGRESS).glob("c*b*.json")))
            raise ExportError(f"{self.work} holds an unfinished run of {self.out} ({done} mini-batches done): "
                              f"pass --resume to continue it, or --overwrite to discard it")
        self._refuse_other_settings(recorded, f"the run recorded in {self.work}",
                                    "or without --resume and with --overwrite to start over")
        return state

    def _refuse_other_settings(self, recorded: dict | None, what: str, instead: str) -> None:
        diff = _differences(self._recorded(recorded), self._recorded(self.record))
        if diff:
            raise ExportError(f"cannot resume {self.out}: {what} was made with other settings: {'; '.join(diff)}. "
                              f"Rerun with the recorded settings, {instead}")

    def _take_lock(self) -> None:
        """Hold an advisory lock on the work folder for the run's lifetime; the kernel drops it if we are killed."""
        if fcntl is None or self._lock is not None:
            return
        fd = os.open(self.work, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ExportError(f"another adaptive-dd run is writing {self.out} (it holds {self.work})") from None
        self._lock = fd

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _prepare(self) -> None:
        """Process 0: a work folder holding the run record and no leftovers of writes a kill interrupted."""
        self.zip.with_name(f".{self.zip.name}{TMP}").unlink(missing_ok=True)
        if self.state == "complete":
            return
        if self.state == "discard" or (not self.resumable and self.work.exists()):
            for child in self.work.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        self.work.mkdir(exist_ok=True)
        self._take_lock()
        for stray in self.work.rglob(f".*{TMP}"):
            stray.unlink()
        if self.state in ("fresh", "discard"):
            (self.work / PROGRESS).mkdir(exist_ok=True)
            _write_atomic(self.work / PROGRESS / RUN_RECORD, json.dumps(self.record, indent=1).encode())
            self.state = "partial"

    def _batch_path(self, class_index: int, batch: int) -> Path:
        return self.work / PROGRESS / f"c{class_index:05d}b{batch:05d}.json"

    def _class_path(self, class_index: int) -> Path:
        return self.work / PROGRESS / f"c{class_index:05d}.json"

    def _load(self, path: Path) -> dict:
        record = _read_json(path)
        if record is None:
            raise ExportError(f"progress record {path} is missing or unreadable; discard the run with --overwrite")
        return record

    def _read_progress(self) -> Progress:
        progress = Progress()
        for path in sorted((self.work / PROGRESS).glob("c*.json")):
            record = self._load(path)
            if "batch" in record:
                progress.batches.setdefault(record["class"], {})[record["batch"]] = BatchSummary(**record["summary"])
                row = record["row"]
                progress.history.setdefault(record["class"], {})[record["batch"]] = Searched(
                    [(h["beta"], h["gamma"], h["f"]) for h in row["history"]], row["beta"], row["gamma"])
            else:
                progress.classes.add(record["name"])
        return progress

    def _write_batch(self, ev: BatchDone) -> None:
        """The batch's PNGs, each atomically, then its record: the record is what makes the batch count as done."""
        folder = self.folders[ev.class_name]
        (self.work / folder).mkdir(exist_ok=True)
        images = []
        for slot, seed_id, im in zip(ev.slots, ev.seed_ids, to_pil(ev.images)):
            name = f"{folder}/{slot:04d}.png"
            _write_atomic(self.work / name, _png_bytes(im))
            images.append({"file": name, "class": ev.class_name, "class_index": ev.class_index, "seed_id": seed_id,
                           "beta": ev.beta, "gamma": ev.gamma, "batch_f_proxy": ev.f_proxy, "batch": ev.batch_index})
        _fsync_dir(self.work / folder)
        row = {"class": ev.class_name, "batch": ev.batch_index, "beta": ev.beta, "gamma": ev.gamma,
               "f_proxy": ev.f_proxy, "f_final": ev.f_final, "seed_ids": list(ev.seed_ids),
               "history": [{"step": o.step, "beta": o.beta, "gamma": o.gamma, "f": o.f, "scores": list(o.scores)}
                           for o in ev.observations]}
        record = {"class": ev.class_name, "batch": ev.batch_index, "summary": dataclasses.asdict(ev.summary()),
                  "images": images, "row": row}
        _write_atomic(self._batch_path(ev.class_index, ev.batch_index), json.dumps(record).encode())
        _fsync_dir(self.work / PROGRESS)

    def _write_class(self, ev: ClassDone) -> None:
        record = {"name": ev.class_name, "index": ev.class_index, "folder": self.folders[ev.class_name],
                  "n_images": ev.n_images, "seeds_wrapped": ev.wrapped}
        _write_atomic(self._class_path(ev.class_index), json.dumps(record).encode())
        _fsync_dir(self.work / PROGRESS)

    def _manifest(self) -> dict:
        """The manifest from the records, in the configured class order whichever process wrote them."""
        class_rows, images, batches = [], [], []
        for name in self.config.classes or self.classes:
            c = self.classes.index(name)
            if not self._class_path(c).exists():
                raise ExportError(f"class {name!r} has no progress record in {self.work}: a process stopped early; "
                                  f"rerun with --resume")
            class_rows.append(self._load(self._class_path(c)))
            for path in sorted((self.work / PROGRESS).glob(f"c{c:05d}b*.json")):
                record = self._load(path)
                images += record["images"]
                batches.append(record["row"])
        r = self.record
        return {"format": FORMAT, "config": r["config"], "versions": r["versions"], "models": r["models"],
                "cfg": "eps = eps_uncond + beta * (eps_cond - eps_uncond)", "class_order": r["class_order"],
                "classes": class_rows, "images": images, "batches": batches}

    def _finish(self, make_zip: bool) -> None:
        """Process 0, once every class is recorded: manifest, zip, then the swap into place; each step can be
        redone, so a run killed anywhere in here finishes on resume."""
        if self.state == "partial":
            _write_atomic(self.work / MANIFEST, json.dumps(self._manifest(), indent=1).encode())
            self.state = "assembled"
        if self.state == "assembled":
            shutil.rmtree(self.work / PROGRESS, ignore_errors=True)
            if make_zip:
                write_zip(self.work, self.zip, root=self.out.name)
            self._drop_old()
            replaced = self.out.exists()
            if replaced:
                os.replace(self.out, self.old)
            os.replace(self.work, self.out)
            if replaced:
                shutil.rmtree(self.old)
        elif make_zip and not self.zip.exists():
            write_zip(self.out, self.zip)
        self._drop_old()
        self.state = "complete"

    def _drop_old(self) -> None:
        """Remove an earlier output that an interrupted rename left aside, as the output itself would be."""
        if not self.old.exists():
            return
        if not is_ours(self.old) and not self.overwrite:
            raise ExportError(f"{self.old}, an earlier output set aside by an interrupted run, is not an adaptive_dd "
                              f"export: remove it or pass --overwrite")
        shutil.rmtree(self.old)

    def write(self, events: Iterable[Event], make_zip: bool = False) -> Iterator[Event]:
        """Pass events through while recording them; at RunDone all processes meet and process 0 finishes.

        When the run is already finished the events are not consumed: only the interrupted final steps run.
        """
        try:
            if self.finished:
                if self.shard.is_main:
                    self._finish(make_zip)
                return
            for ev in events:
                if isinstance(ev, BatchDone):
                    self._write_batch(ev)
                elif isinstance(ev, ClassDone):
                    self._write_class(ev)
                elif isinstance(ev, RunDone):
                    self.shard.wait()
                    if self.shard.is_main:
                        self._finish(make_zip)
                yield ev
        finally:
            self._unlock()
            if not self.resumable and self.work.exists():
                shutil.rmtree(self.work, ignore_errors=True)


def export(events: Iterable[Event], out: str | os.PathLike, config: DistillConfig, classes: list[str],
           describe: dict | None = None, overwrite: bool = False, make_zip: bool = False) -> Iterator[Event]:
    """Pass events through while writing them to out/ (one folder per class, PNG) with manifest.json.

    classes is the class list the class indices refer to (the dataset's); describe adds model descriptions
    to the manifest. The zip, when asked for, is written to out + ".zip". A one-off export: a failure or a
    consumer that stops early leaves nothing behind (ExportRun with resumable=True is what --resume uses).
    """
    yield from ExportRun(out, config, classes, describe, overwrite=overwrite).write(events, make_zip)
