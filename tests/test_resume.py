"""Scale-out and resume: 2 processes under accelerate, a real SIGKILL mid-run, interrupted final steps, and
changed settings, each checked byte for byte against one uninterrupted single-process run.

CPU float results depend on the thread count, so every run here uses one thread: subprocesses get
OMP_NUM_THREADS=1, in-process runs torch.set_num_threads(1).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

from adaptive_dd.cli import build_parser, config_from_args, main
from adaptive_dd.config import DistillConfig
from adaptive_dd.distill import BatchDone, ClassDone, Distiller, Shard
from adaptive_dd.export import ExportError, ExportRun

ROOT = Path(__file__).resolve().parent.parent
# 2 classes x 3 images, one seed per mini-batch: 6 batches of a fraction of a second each.
RUN = ["--classes", "0,1", "--ipc", "3", "--m-seed", "1", "--budget", "2", "--steps", "4", "--gammas", "0.5,1",
       "--device", "cpu", "--seed", "3"]
N_BATCHES = 6


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def args(tiny_unet_dir, tiny_teacher_dir) -> list[str]:
    return [*RUN, "--model", str(tiny_unet_dir), "--teacher", str(tiny_teacher_dir)]


def _distill(args: list[str], out: Path, *extra: str) -> int:
    return main(["distill", *args, "--out", str(out), *extra])


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(args, one_thread, tmp_path_factory) -> dict[str, bytes]:
    """One uninterrupted single-process run: what every other way of running must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert _distill(args, out) == 0
    tree = _tree(out)
    assert sorted(tree) == ["0/0000.png", "0/0001.png", "0/0002.png", "1/0000.png", "1/0001.png", "1/0002.png",
                            "manifest.json"]
    return tree


def _env() -> dict[str, str]:
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    return {**os.environ, **threads, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def _records(work: Path) -> int:
    return len(list((work / ".progress").glob("c*b*.json")))


def _start(args: list[str], out: Path, log: Path, *extra: str) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "adaptive_dd", "distill", *args, "--out", str(out), *extra],
                                cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT)


def _kill_after(proc: subprocess.Popen, work: Path, k: int, log: Path) -> int:
    """SIGKILL proc once k batch records exist; returns how many there were when it died."""
    deadline = time.monotonic() + 300
    while _records(work) < k:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {k} batches were recorded:\n"
                        + log.read_text()[-2000:])
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return _records(work)


def _assert_clean_result(parent: Path, reference: dict[str, bytes]) -> None:
    """The output equals the reference byte for byte, and nothing else is left beside it."""
    out = parent / "out"
    assert _tree(out) == reference
    assert sorted(p.name for p in parent.iterdir()) == ["out"]


def _kill_and_resume(args, reference, tmp_path: Path, kill_points: list[int]) -> list[int]:
    """Kill a run after kill_points[0] batches, its resumption after kill_points[1], ...; finish in-process."""
    parent, logs = tmp_path / "parent", tmp_path / "logs"
    parent.mkdir()
    logs.mkdir()
    out, work = parent / "out", parent / ".out.partial"
    recorded = []
    for i, k in enumerate(kill_points):
        log = logs / f"run{i}.log"
        proc = _start(args, out, log, *(["--resume"] if i else []))
        recorded.append(_kill_after(proc, work, k, log))
        if k < N_BATCHES:  # the last kill point may land after the run finished
            assert not out.exists(), "a killed run must not leave a folder under the output name"
            assert work.is_dir()
    assert _distill(args, out, "--resume") == 0
    _assert_clean_result(parent, reference)
    return recorded


def test_sigkill_mid_run_then_resume_is_byte_identical(args, reference, tmp_path):
    recorded = _kill_and_resume(args, reference, tmp_path, [2])
    assert 2 <= recorded[0] < N_BATCHES


@pytest.mark.slow
def test_repeated_sigkills_then_resume_is_byte_identical(args, reference, tmp_path):
    """Five kills, each of the resumed run before: after the first batch, in class 0, at the class boundary,
    in class 1, and as the last batch lands (during the class record, manifest or rename)."""
    recorded = _kill_and_resume(args, reference, tmp_path, [1, 2, 3, 5, 6])
    assert recorded == sorted(recorded) and recorded[0] >= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], out: Path, log: Path, n: int, *extra: str) -> subprocess.Popen:
    """`accelerate launch` of n CPU processes. `--cpu` would pick accelerate's single-process launcher here:
    its multi-process launcher (torchrun) is `--multi_gpu`, and `--device cpu` makes the processes use gloo."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "adaptive_dd", "distill", *args, "--out", str(out), *extra]
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


@pytest.mark.slow
def test_two_processes_write_the_same_bytes_as_one(args, reference, tmp_path):
    parent = tmp_path / "parent"
    parent.mkdir()
    log = tmp_path / "launch.log"
    proc = _launch(args, parent / "out", log, 2)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "(process 2/2)" in text and f"-> {parent / 'out'}" in text  # both processes ran; process 0 finished
    _assert_clean_result(parent, reference)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # catch_warnings is not thread-safe
def test_three_shards_meeting_at_a_barrier_write_the_same_bytes_as_one(args, reference, one_thread, tmp_path):
    """The protocol the CLI runs under accelerate, in threads: shards deal the classes (the third gets none),
    meet at the barrier, and only shard 0 writes the manifest and renames. The accelerate launch itself is the
    slow test above."""
    parent = tmp_path / "parent"
    parent.mkdir()
    barrier = threading.Barrier(3, timeout=120)
    classes: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def process(index: int) -> None:
        try:
            config = config_from_args(build_parser().parse_args(["distill", *args, "--out", "x"])).validate()
            shard = Shard(index, 3, barrier.wait)
            dist = Distiller(config)
            run = ExportRun(parent / "out", config, dist.dataset.classes, dist.describe(), resumable=True, shard=shard)
            events = run.write(dist.run(shard, run.progress))
            classes[index] = [ev.class_name for ev in events if isinstance(ev, ClassDone)]
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=process, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert classes == {0: ["0"], 1: ["1"], 2: []}
    _assert_clean_result(parent, reference)


@pytest.mark.slow
def test_killed_two_process_run_resumes_with_one(args, reference, tmp_path):
    parent = tmp_path / "parent"
    parent.mkdir()
    log = tmp_path / "launch.log"
    proc = _launch(args, parent / "out", log, 2)
    deadline = time.monotonic() + 300
    while _records(parent / ".out.partial") < 3:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.002)
    _kill_launch(proc)
    assert not (parent / "out").exists()
    assert _distill(args, parent / "out", "--resume") == 0
    _assert_clean_result(parent, reference)



def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _kill_launch(proc: subprocess.Popen) -> None:
    """SIGKILL the workers, which torchrun starts in sessions of their own, then the launcher; wait until the
    workers are gone (their file locks with them)."""
    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
              for pid in workers):
        assert time.monotonic() < deadline
        time.sleep(0.01)


# --- interrupted states a kill can leave, built directly ------------------------------------------------------

def _interrupted(args: list[str], out: Path, batches: int) -> Path:
    """A run stopped after `batches` mini-batches, as a kill between batches leaves it; returns the work folder."""
    config = config_from_args(build_parser().parse_args(["distill", *args, "--out", str(out)])).validate()
    dist = Distiller(config)
    run = ExportRun(out, config, dist.dataset.classes, dist.describe(), resumable=True)
    events = run.write(dist.run())
    seen = 0
    for ev in events:
        seen += isinstance(ev, BatchDone)
        if seen == batches:
            break
    events.close()
    assert _records(run.work) == batches and not out.exists()
    return run.work


def test_resume_after_kill_mid_write_is_byte_identical(args, reference, one_thread, tmp_path):
    """The next batch's PNG half written (a temporary file), one written without its record, and a record
    half written: all are redone or removed."""
    parent = tmp_path / "parent"
    parent.mkdir()
    work = _interrupted(args, parent / "out", 4)
    (work / "1" / ".0001.png.tmp").write_bytes(b"\x89PNG\r\n")
    (work / "1" / "0001.png").write_bytes(reference["1/0001.png"][:40])
    (work / ".progress" / ".c00001b00001.json.tmp").write_text('{"class": "1", "ba')
    assert _distill(args, parent / "out", "--resume") == 0
    _assert_clean_result(parent, reference)


@pytest.mark.parametrize("scope", ["class", "run"])
def test_warm_started_search_resumes_byte_identical(args, one_thread, tmp_path, scope):
    """A warm-started batch's GP starts from the finished batches' observations (the class's; with "run", also the
    first class's), which a resumed run reads back from the batch records: stopping after any batch and resuming
    writes the same bytes as one uninterrupted run. With a budget of 4 and a warm budget of 1 every warm batch
    records 1 evaluation, and under "run" class 1's first batch the fast mode's first warm budget of 3, so a resumed
    run that lost the prior (and ran the full budget) would differ."""
    warm = [*args, "--budget", "4", "--bo-scope", scope, "--warm-budget", "1"]
    (tmp_path / "ref").mkdir()
    assert _distill(warm, tmp_path / "ref" / "out") == 0
    expected = _tree(tmp_path / "ref" / "out")
    history = [len(b["history"]) for b in json.loads(expected["manifest.json"])["batches"]]
    assert history == ([4, 1, 1] * 2 if scope == "class" else [4, 1, 1, 3, 1, 1])
    for stop in (1, 3, 4):
        out = tmp_path / f"stop{stop}" / "out"
        out.parent.mkdir()
        _interrupted(warm, out, stop)
        assert _distill(warm, out, "--resume") == 0
        assert _tree(out) == expected, stop


def test_resume_refuses_other_settings_naming_them(args, one_thread, tmp_path, capsys):
    parent = tmp_path / "parent"
    parent.mkdir()
    work = _interrupted(args, parent / "out", 2)
    before = _tree(work)
    other = [a if a != "3" else "5" for a in args]  # --seed 3 -> 5 (--ipc 3 too)
    assert _distill(other + ["--budget", "3"], parent / "out", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adaptive-dd: error: cannot resume") and len(err.splitlines()) == 1
    for field in ("ipc (3 recorded, 5 now)", "seed (3 recorded, 5 now)", "bo.budget (2 recorded, 3 now)"):
        assert field in err
    assert "steps" not in err and "classes" not in err
    assert _tree(work) == before and sorted(p.name for p in parent.iterdir()) == [".out.partial"]


def test_partial_run_needs_resume_or_overwrite(args, reference, one_thread, tmp_path, capsys):
    parent = tmp_path / "parent"
    parent.mkdir()
    _interrupted(args, parent / "out", 2)
    assert _distill(args, parent / "out") == 2
    err = capsys.readouterr().err
    assert "2 mini-batches done" in err and "--resume" in err and "--overwrite" in err
    assert _distill(args, parent / "out", "--overwrite") == 0  # discards the partial run and starts over
    _assert_clean_result(parent, reference)


def test_a_second_run_on_the_same_output_is_refused_while_one_is_writing(args, tmp_path, tiny_backend, tiny_teacher):
    config = config_from_args(build_parser().parse_args(["distill", *args, "--out", str(tmp_path / "out")]))
    dist = Distiller(config.validate(), backend=tiny_backend, teacher=tiny_teacher)
    first = ExportRun(tmp_path / "out", config, dist.dataset.classes, dist.describe(), resumable=True)
    with pytest.raises(ExportError, match="another adaptive-dd run is writing"):
        ExportRun(tmp_path / "out", config, dist.dataset.classes, dist.describe(), resumable=True, resume=True)
    list(first.write(()))  # the end of the first run's stream releases its lock
    again = ExportRun(tmp_path / "out", config, dist.dataset.classes, dist.describe(), resumable=True, resume=True)
    list(again.write(()))


def _copy(tree: dict[str, bytes], root: Path) -> None:
    for name, data in tree.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def _older_export(reference: dict[str, bytes]) -> dict[str, bytes]:
    """An earlier export of ours with other images: the output a finished run replaces."""
    manifest = json.loads(reference["manifest.json"])
    manifest["config"]["seed"] = 99
    return {"manifest.json": json.dumps(manifest).encode(), "0/0000.png": b"old"}


@pytest.mark.parametrize("state", ["manifest written", "old output moved aside", "renamed, old not yet removed"])
def test_resume_finishes_an_interrupted_final_rename(args, reference, one_thread, tmp_path, capsys, state):
    parent = tmp_path / "parent"
    out, work, old = parent / "out", parent / ".out.partial", parent / ".out.old"
    if state == "manifest written":  # .progress/ already dropped; the earlier output still in place
        _copy(reference, work)
        _copy(_older_export(reference), out)
    elif state == "old output moved aside":
        _copy(reference, work)
        _copy(_older_export(reference), old)
    else:
        _copy(reference, out)
        _copy(_older_export(reference), old)
    assert _distill(args, out, "--resume") == 0
    if state == "renamed, old not yet removed":
        assert "nothing left to distill" in capsys.readouterr().out
    _assert_clean_result(parent, reference)


def test_resume_of_a_finished_run_with_other_settings_is_refused(args, reference, tmp_path, capsys):
    parent = tmp_path / "parent"
    _copy(reference, parent / "out")
    assert _distill([*args, "--budget", "3"], parent / "out", "--resume") == 2
    err = capsys.readouterr().err
    assert "the finished run in" in err and "bo.budget (2 recorded, 3 now)" in err and "without --resume" in err
    assert _tree(parent / "out") == reference


def test_zip_of_a_resumed_run_matches(args, reference, one_thread, tmp_path):
    parent = tmp_path / "parent"
    parent.mkdir()
    _interrupted(args, parent / "out", 3)
    assert _distill(args, parent / "out", "--resume", "--zip") == 0
    with zipfile.ZipFile(parent / "out.zip") as zf:
        assert {n: zf.read(n) for n in zf.namelist()} == {f"out/{k}": v for k, v in reference.items()}
    assert sorted(p.name for p in parent.iterdir()) == ["out", "out.zip"]


def _stream(classes: list[str], batches: int = 3):
    """Events as Distiller.run yields them, two 4-pixel images per batch, without RunDone."""
    for i, name in enumerate(classes):
        for b in range(batches):
            images = torch.rand(2, 1, 4, 4)
            yield BatchDone(name, i, b, images, images, ["s", "t"], [2 * b, 2 * b + 1], 1.0, 0.5, -0.1, -0.2, 0.0,
                            [], 0.0, 0.0)
        yield ClassDone(name, i, 2 * batches, False, [])


def test_export_memory_stays_flat_in_the_number_of_classes(tmp_path):
    """Images and their manifest rows go to disk as batches finish; nothing is kept per image while streaming
    (keeping the rows, as the export once did, grows by about 0.6 kB per image: 150 kB here)."""
    import tracemalloc

    classes = [f"c{i:02d}" for i in range(40)]
    stream = ExportRun(tmp_path / "out", DistillConfig(classes=classes), classes, resumable=True).write(_stream(classes))
    tracemalloc.start()
    try:
        next(stream)
        base, peak = tracemalloc.get_traced_memory()[0], 0
        for _ in stream:
            peak = max(peak, tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    assert _records(tmp_path / ".out.partial") == 120
    assert peak < 32_000, f"the export held {peak} more bytes after 240 images"


def test_a_write_that_fails_part_way_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    from adaptive_dd.export import _write_atomic

    target = tmp_path / "0000.png"

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        _write_atomic(target, b"x" * 4096)
    assert not target.exists()
    monkeypatch.undo()
    _write_atomic(target, b"y" * 10)
    assert target.read_bytes() == b"y" * 10
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["0000.png"]
