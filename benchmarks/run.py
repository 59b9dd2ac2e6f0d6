"""The paper's Tables 2, 4 and 5 on the bundled models, baselines included, in one command on a CPU.

    python benchmarks/run.py            # full: IPC 1 and 10, 2 student architectures x 3 seeds (<= 60 min, 2 cores)
    python benchmarks/run.py --quick    # IPC 1, 1 student seed, shorter sampling and training (a few minutes)

Settings: the mnist-5k backbone distilling uci-digits (unaligned: other scanner, resolution and writers) and
mnist-5k (aligned). Methods, on the same seeds, noise and teacher: random real images (the seeds themselves),
pure generation (gamma = 1) at the grid's middle beta, fixed img2img (D4M's strength 0.7, middle beta, no
repulsion), ours without repulsion (BO only), ours without BO (the fixed point, repulsion on), and ours. Every
generated set comes from the engine's event stream, one after another in this process (each run's peak RSS is
its own: the peak is reset before it); students then train in parallel worker processes. The test split is only measured against.

Writes benchmark.json, table2.md, table4.md, table5.md, accuracy.png and samples_*.png to benchmarks/results/
(--quick: benchmarks/results/quick/).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adaptive_dd.config import BOConfig, DistillConfig, RepulsionConfig, SamplerConfig  # noqa: E402
from adaptive_dd.data import load_dataset, to_pil  # noqa: E402
from adaptive_dd.distill import BatchDone, Distiller, RunDone  # noqa: E402
from adaptive_dd.evaluation import DistilledSet, quality, student_accuracy, summarize, target_test_set  # noqa: E402
from adaptive_dd.evaluation.students import StudentConfig  # noqa: E402
from adaptive_dd.fidelity import load_teacher  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SETTINGS = {"unaligned": "uci-digits", "aligned": "mnist-5k"}
MID_BETA, D4M_GAMMA = "mid", 0.7
# name -> (label, betas, gammas, lambda); "mid" is the backbone grid's middle beta, None the engine's default.
METHODS: dict[str, tuple[str, object, object, float | None]] = {
    "random_real": ("Random real (the seeds)", None, None, None),
    "pure_generation": ("Pure generation (gamma=1, mid beta)", MID_BETA, (1.0,), 0.0),
    "img2img_fixed": ("Fixed img2img (gamma=0.7, mid beta, no repulsion)", MID_BETA, (D4M_GAMMA,), 0.0),
    "ours_no_repulsion": ("Ours without repulsion (BO only)", None, None, 0.0),
    "ours_no_bo": ("Ours without BO (gamma=0.7, mid beta, repulsion)", MID_BETA, (D4M_GAMMA,), None),
    "ours": ("Ours (BO + repulsion)", None, None, None),
}
# With one seed per mini-batch (IPC 1) there is no pair to repel: these equal their counterpart by construction.
SAME_WITHOUT_PAIRS = {"ours_no_bo": "img2img_fixed", "ours": "ours_no_repulsion"}


def _config(data: str, ipc: int, method: str, quick: bool, betas_grid: tuple[float, ...]) -> DistillConfig:
    _, betas, gammas, lam = METHODS[method]
    if betas == MID_BETA:
        betas = (betas_grid[len(betas_grid) // 2],)
    bo = BOConfig(betas=betas, **({"gammas": gammas} if gammas else {}), **({"budget": 4} if quick else {}))
    return DistillConfig(data=data, ipc=ipc, m_seed=min(10, ipc), seed=0, device="cpu",
                         sampler=SamplerConfig(steps=20 if quick else 50), repulsion=RepulsionConfig(weight=lam), bo=bo)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    """Linux resets the peak RSS (VmHWM) to the current RSS on "5" > /proc/self/clear_refs, so each run's peak
    is its own although all runs share this process."""
    Path("/proc/self/clear_refs").write_text("5")


def generate(config: DistillConfig) -> dict:
    """One distilled set from the engine's stream: images as 8-bit (what an export stores), the chosen
    (beta, gamma) per batch, timings, and the peak RSS while it ran (models loaded before the reset)."""
    dist = Distiller(config)
    rss_loaded = _status_mb("VmRSS")
    _reset_peak_rss()
    images, labels, batches, done = [], [], [], None
    for ev in dist.run():
        if isinstance(ev, BatchDone):
            images.append((ev.images.clamp(0, 1) * 255).round().to(torch.uint8))
            labels += [dist.classes.index(ev.class_name)] * len(ev.images)
            batches.append({"class": ev.class_name, "beta": ev.beta, "gamma": ev.gamma, "f_proxy": ev.f_proxy,
                            "f_final": ev.f_final, "seconds_bo": ev.seconds_bo, "seconds_final": ev.seconds_final})
        elif isinstance(ev, RunDone):
            done = ev
    return {"images": torch.cat(images).numpy(), "labels": np.array(labels), "classes": dist.classes,
            "batches": batches, "n_images": done.n_images, "seconds": done.seconds, "seconds_bo": done.seconds_bo,
            "seconds_final": done.seconds_final, "peak_rss_mb": _status_mb("VmHWM"), "rss_after_load_mb": rss_loaded,
            "lambda": dist.weight, "betas": list(dist.betas)}


def real_seeds(config: DistillConfig) -> dict:
    """The random-real baseline: exactly the seeds the generative methods start from, at native resolution."""
    data = load_dataset(config.data, "train")
    dist = Distiller(config, dataset=data)
    idx = [i for c in dist.classes for batch in dist.seed_plan(c)[0] for i in batch]
    size = data.images[idx[0]].size[0]
    images = (data.tensor(idx, size, 1) * 255).round().to(torch.uint8).numpy()
    return {"images": images, "labels": data.labels[idx].astype(np.int64), "classes": dist.classes}


_WORKER: dict = {}


def _init_student_worker() -> None:
    torch.set_num_threads(1)
    for setting, data in SETTINGS.items():
        teacher = load_teacher(data)
        _WORKER[setting] = (teacher, *target_test_set(load_dataset(data, "test"), teacher))


def as_set(run: dict, name: str = "distilled") -> DistilledSet:
    """Sets travel between processes as 8-bit numpy arrays (pickled by value, unlike shared torch storage)."""
    return DistilledSet(torch.from_numpy(run["images"]).float() / 255, torch.from_numpy(run["labels"]),
                        run["classes"], name)


def _student_job(setting: str, run: dict, arch: str, seed: int, cfg: StudentConfig) -> float:
    teacher, test_images, test_labels = _WORKER[setting]
    dset = as_set(run)
    return student_accuracy(dset, teacher, test_images, test_labels, arch, seed, cfg)


def fmt(s: dict) -> str:
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"


def write_tables(results: dict, ipcs: list[int], archs: tuple[str, ...], out: Path) -> dict[str, str]:
    """Markdown in the shape of the paper's Tables 2, 4 and 5."""
    head2 = "| method | " + " | ".join(f"{s} IPC {i} {a}" for s in SETTINGS for i in ipcs for a in archs) + " |"
    t2 = [head2, "|---" * (1 + len(SETTINGS) * len(ipcs) * len(archs)) + "|"]
    for m, (label, *_) in METHODS.items():
        cells = [fmt(results[s][str(i)][m]["students"][a]) for s in SETTINGS for i in ipcs for a in archs]
        t2.append(f"| {label} | " + " | ".join(cells) + " |")
    keys = ["fid", "kid_mean", "precision", "recall", "density", "coverage", "vendi_1", "vendi_2", "class_vendi_1",
            "rmi_2"]
    t4 = []
    for s in SETTINGS:
        for i in ipcs:
            t4 += [f"\n**{s} ({SETTINGS[s]}), IPC {i}**, teacher features\n",
                   "| method | FID | KID | precision | recall | density | coverage | Vendi-1 | Vendi-2 | class "
                   "Vendi-1 | RMI-2 |", "|---" * 11 + "|"]
            for m, (label, *_) in METHODS.items():
                q = results[s][str(i)][m]["quality"]
                t4.append(f"| {label} | " + " | ".join(f"{q[k]:.3g}" for k in keys) + " |")
    t5 = ["| setting | IPC | method | s/image | BO share | peak RSS in run (MB) | above models loaded (MB) |",
          "|---|---|---|---|---|---|---|"]
    for s in SETTINGS:
        for i in ipcs:
            for m, (label, *_) in METHODS.items():
                c = results[s][str(i)][m].get("cost")
                if c:
                    t5.append(f"| {s} | {i} | {label} | {c['seconds_per_image']:.3f} | {100 * c['bo_share']:.0f}% | "
                              f"{c['peak_rss_mb']:.0f} | {max(0.0, c['peak_rss_mb'] - c['rss_after_load_mb']):.0f} |")
    t5 += ["", "| setting | IPC | repulsion overhead: final-pass seconds, ours / ours without repulsion "
           "(same (beta*, gamma*) per batch) |", "|---|---|---|"]
    for s in SETTINGS:
        for i in ipcs:
            r = results[s][str(i)].get("repulsion_overhead")
            t5.append(f"| {s} | {i} | {'n/a (batch of 1: no pairs)' if r is None else f'{r:.3f}'} |")
    tables = {"table2": "\n".join(t2), "table4": "\n".join(t4), "table5": "\n".join(t5)}
    for name, text in tables.items():
        (out / f"{name}.md").write_text(text + "\n")
    return tables


def plot_accuracy(results: dict, ipcs: list[int], archs: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(s, i) for s in SETTINGS for i in ipcs]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), sharey=True)
    width = 0.8 / len(archs)
    for ax, (s, i) in zip(np.atleast_1d(axes), panels):
        for k, a in enumerate(archs):
            st = [results[s][str(i)][m]["students"][a] for m in METHODS]
            ax.bar(np.arange(len(METHODS)) + k * width, [100 * x["mean"] for x in st], width,
                   yerr=[100 * x["std"] for x in st], label=a, capsize=2)
        ax.set_xticks(np.arange(len(METHODS)) + width * (len(archs) - 1) / 2, list(METHODS), rotation=60, ha="right",
                      fontsize=8)
        ax.set_title(f"{s} ({SETTINGS[s]}), IPC {i}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("student test accuracy (%)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_grid(sets: dict[str, dict], path: Path, per_class: int = 10, cell: int = 28) -> None:
    """One labelled block per method: a row per class, up to per_class images each."""
    from PIL import Image, ImageDraw

    blocks = []
    for m, s in sets.items():
        labels = s["labels"]
        n_cls = len(s["classes"])
        block = Image.new("RGB", (per_class * cell, 14 + n_cls * cell), "white")
        ImageDraw.Draw(block).text((2, 1), m, fill="black")
        for c in range(n_cls):
            idx = np.flatnonzero(labels == c)[:per_class]
            for j, im in enumerate(to_pil(torch.from_numpy(s["images"][idx]).float() / 255)):
                block.paste(im.resize((cell, cell), Image.Resampling.NEAREST).convert("RGB"), (j * cell, 14 + c * cell))
        blocks.append(block)
    canvas = Image.new("RGB", (sum(b.width + 8 for b in blocks), max(b.height for b in blocks)), "white")
    x = 0
    for b in blocks:
        canvas.paste(b, (x, 0))
        x += b.width + 8
    canvas.save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="IPC 1, one student seed, 20 sampler steps, BO budget 4")
    p.add_argument("--workers", type=int, default=2, help="parallel student processes (one thread each)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for generation")
    p.add_argument("--out", type=Path, help="default: benchmarks/results (--quick: benchmarks/results/quick)")
    a = p.parse_args()
    a.out = a.out or (RESULTS / "quick" if a.quick else RESULTS)
    t_start = time.time()
    ipcs = [1] if a.quick else [1, 10]
    scfg = StudentConfig(seeds=(0,), steps=100) if a.quick else StudentConfig()
    a.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    spawn = multiprocessing.get_context("spawn")
    grid = Distiller(DistillConfig(data="uci-digits"), dataset=load_dataset("uci-digits", "train")).betas
    sets: dict[str, dict[str, dict[str, dict]]] = {}
    for s, data in SETTINGS.items():
        for i in ipcs:
            runs = sets.setdefault(s, {}).setdefault(str(i), {})
            for m in METHODS:
                cfg = _config(data, i, m, a.quick, grid)
                if m == "random_real":
                    runs[m] = real_seeds(cfg)
                    continue
                runs[m] = generate(cfg)
                runs[m]["config"] = cfg.to_dict()
                print(f"[{time.time() - t_start:6.0f} s] {s} IPC {i} {m}: {runs[m]['n_images']} images in "
                      f"{runs[m]['seconds']:.1f} s; (beta*, gamma*) {sorted({(b['beta'], b['gamma']) for b in runs[m]['batches']})}",
                      flush=True)
    t_gen = time.time() - t_start
    jobs, results, scored_as = {}, {}, {}
    with ProcessPoolExecutor(a.workers, mp_context=spawn, initializer=_init_student_worker) as pool:
        for s in SETTINGS:
            for i in ipcs:
                for m, run in sets[s][str(i)].items():
                    twin = SAME_WITHOUT_PAIRS.get(m) if i == 1 else None
                    if twin and np.array_equal(run["images"], sets[s][str(i)][twin]["images"]):
                        scored_as[s, i, m] = twin
                        continue
                    scored_as[s, i, m] = m
                    for arch in scfg.archs:
                        for seed in scfg.seeds:
                            jobs[s, i, m, arch, seed] = pool.submit(
                                _student_job, s, {k: run[k] for k in ("images", "labels", "classes")}, arch, seed, scfg)
        teachers = {s: load_teacher(d) for s, d in SETTINGS.items()}
        for s, data in SETTINGS.items():
            test_images, _ = target_test_set(load_dataset(data, "test"), teachers[s])
            for i in ipcs:
                res = results.setdefault(s, {}).setdefault(str(i), {})
                for m, run in sets[s][str(i)].items():
                    src = scored_as[s, i, m]
                    dset = as_set(run, m)
                    entry = {"label": METHODS[m][0], "identical_to": src if src != m else None,
                             "students": {arch: summarize([jobs[s, i, src, arch, seed].result()
                                                           for seed in scfg.seeds]) for arch in scfg.archs},
                             "quality": quality(dset, teachers[s], test_images)}
                    if m != "random_real":
                        entry["cost"] = {"seconds_per_image": run["seconds"] / run["n_images"],
                                         "bo_share": run["seconds_bo"] / (run["seconds_bo"] + run["seconds_final"]),
                                         **{k: run[k] for k in ("seconds", "seconds_bo", "seconds_final",
                                                                "peak_rss_mb", "rss_after_load_mb", "n_images")}}
                        entry["batches"] = run["batches"]
                        entry["config"] = run["config"]
                    res[m] = entry
                    print(f"[{time.time() - t_start:6.0f} s] {s} IPC {i} {m}: " + ", ".join(
                        f"{arch} {fmt(entry['students'][arch])}" for arch in scfg.archs), flush=True)
                ours, plain = sets[s][str(i)]["ours"], sets[s][str(i)]["ours_no_repulsion"]
                same_points = [(b["beta"], b["gamma"]) for b in ours["batches"]] == \
                    [(b["beta"], b["gamma"]) for b in plain["batches"]]
                res["repulsion_overhead"] = ours["seconds_final"] / plain["seconds_final"] \
                    if i > 1 and same_points else None
    tables = write_tables(results, ipcs, scfg.archs, a.out)
    plot_accuracy(results, ipcs, scfg.archs, a.out / "accuracy.png")
    for s in SETTINGS:
        sample_grid(sets[s][str(max(ipcs))], a.out / f"samples_{s}.png")
    meta = {"command": "python benchmarks/run.py" + (" --quick" if a.quick else ""),
            "seconds_total": time.time() - t_start, "seconds_generation": t_gen,
            "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} CPUs", "torch": torch.__version__,
            "student_config": asdict(scfg), "settings": SETTINGS, "methods": {m: v[0] for m, v in METHODS.items()},
            "feature_space": "teacher penultimate layer (quality metrics)"}
    (a.out / "benchmark.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1))
    for name, text in tables.items():
        print(f"\n## {name}\n{text}")
    print(f"\ntotal {meta['seconds_total']:.0f} s (generation {t_gen:.0f} s)")


if __name__ == "__main__":
    main()
