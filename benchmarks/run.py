"""The paper's Tables 2, 4 and 5 on the bundled models, fair baselines included, in one command on a CPU.

    python benchmarks/run.py            # full: validation stage, then IPC 1 and 10, 2 students x 3 seeds
    python benchmarks/run.py --ipcs 10,50     # issue 12: ours and ours_paper_bo side by side at IPC 10 and 50
    python benchmarks/run.py --quick    # IPC 1, 1 student seed, shorter sampling and training (a few minutes)

Settings: the mnist-5k backbone distilling uci-digits (unaligned: other scanner, resolution and writers) and
mnist-5k (aligned). Everything that is chosen is chosen on the validation split (carved from train, fixed and
stored in assets/splits; the seeds come from the rest of train), never on the test split:
  1. f over the whole beta x gamma grid for three uci-digits classes under every objective (objective_grid.png).
  2. Validation: for each setting at IPC 10, sets at 6 fixed (beta, gamma) points with repulsion, and BO with each
     objective; students (both architectures, seed 0) are scored on the val split. fixed_best is the point with
     the best mean val accuracy in its setting; the default objective is the one with the best mean over both
     settings and students (validation.json; `--validation FILE` reuses one).
     The BO mode: the default (cheaper, issue 12) mode with the chosen objective against the paper's search; the
     default is kept unless its mean val accuracy is more than 1 point below the paper's.
  3. Test: random real images (the seeds), pure generation (gamma 1), fixed img2img (D4M's strength 0.7, no
     repulsion), fixed_best, BO over beta alone at fixed_best's gamma, ours without repulsion, ours with the paper's
     search (ours_paper_bo) and ours, all with the chosen objective, on the same seeds, noise and teacher. Every
     generated set comes from the engine's event stream, one after another in this process (each run's peak RSS is
     its own: the peak is reset before it); students then train in parallel worker processes.

Writes benchmark.json, validation.json, table2.md, table4.md, table5.md, accuracy.png, objective_grid.png and
samples_*.png to benchmarks/results/ (--quick: benchmarks/results/quick/).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adaptive_dd.config import BOConfig, DistillConfig, RepulsionConfig, SamplerConfig  # noqa: E402
from adaptive_dd.data import load_dataset, to_pil  # noqa: E402
from adaptive_dd.distill import BatchDone, Distiller, RunDone  # noqa: E402
from adaptive_dd.evaluation import DistilledSet, quality, student_accuracy, summarize, target_test_set  # noqa: E402
from adaptive_dd.evaluation.students import StudentConfig  # noqa: E402
from adaptive_dd.fidelity import OBJECTIVES, Objective, load_teacher  # noqa: E402
from adaptive_dd.repulsion import mean_pairwise_distance  # noqa: E402
from adaptive_dd.sampler import noise_seed  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SETTINGS = {"unaligned": "uci-digits", "aligned": "mnist-5k"}
MID_BETA, D4M_GAMMA = "mid", 0.7
# name -> (label, betas, gammas, lambda, BO mode): "mid" is the backbone grid's middle beta, "val" the validation
# stage's choice for the setting, None the engine's default (the backbone's beta grid, the default gamma grid, lambda,
# the BO mode the validation stage chose).
METHODS: dict[str, tuple[str, object, object, float | None, str | None]] = {
    "random_real": ("Random real (the seeds)", None, None, None, None),
    "pure_generation": ("Pure generation (gamma=1, mid beta)", MID_BETA, (1.0,), 0.0, None),
    "img2img_fixed": ("Fixed img2img (D4M's gamma=0.7, mid beta, no repulsion)", MID_BETA, (D4M_GAMMA,), 0.0, None),
    "fixed_best": ("Fixed best (beta, gamma) chosen on val, repulsion", "val", "val", None, None),
    "bo_beta_only": ("BO over beta at fixed_best's gamma, repulsion", None, "val", None, None),
    "ours_no_repulsion": ("Ours without repulsion (BO only)", None, None, 0.0, None),
    "ours_paper_bo": ("Ours, the paper's search (per-batch GP, 8 evaluations, all seeds, 25 proxy steps)", None, None,
                      None, "paper"),
    "ours": ("Ours (BO + repulsion, default BO mode)", None, None, None, None),
}
# With one seed per mini-batch (IPC 1) there is no pair to repel: these equal their counterpart by construction.
SAME_WITHOUT_PAIRS = {"ours": "ours_no_repulsion"}
# The validation stage's fixed points: the second and the second-to-last beta of the backbone's grid (its usable
# range without the ends) x three strengths.
VAL_BETA_INDICES, VAL_GAMMAS = (1, -2), (0.3, 0.5, 0.7)
GRID_CLASSES = ("3", "1", "9")
DEFAULT_MODE = BOConfig().mode
MODE_TOLERANCE = 0.01  # the cheaper BO mode is chosen when its mean val accuracy is within this of the paper's


def _config(data: str, ipc: int, method: str, quick: bool, betas_grid: tuple[float, ...], choice: dict) -> DistillConfig:
    """The method's config; choice holds the validation stage's picks ({"objective", setting: {"beta", "gamma"}})."""
    _, betas, gammas, lam, mode = METHODS[method]
    picked = choice.get(data, {})
    if betas == MID_BETA:
        betas = (betas_grid[len(betas_grid) // 2],)
    elif betas == "val":
        betas = (picked["beta"],)
    if gammas == "val":
        gammas = (picked["gamma"],)
    return _make_config(data, ipc, quick, betas, gammas, lam, choice.get("objective", "kl"),
                        mode or choice.get("bo_mode", DEFAULT_MODE))


def _make_config(data: str, ipc: int, quick: bool, betas, gammas, lam: float | None, objective: str,
                 mode: str = "paper") -> DistillConfig:
    bo = BOConfig(betas=betas, **({"gammas": gammas} if gammas else {}), **({"budget": 4} if quick else {}),
                  objective=objective, mode=mode)
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
            images.append(as_uint8(ev.images))
            labels += [dist.classes.index(ev.class_name)] * len(ev.images)
            batches.append({"class": ev.class_name, "beta": ev.beta, "gamma": ev.gamma, "f_proxy": ev.f_proxy,
                            "f_final": ev.f_final, "seconds_bo": ev.seconds_bo, "seconds_final": ev.seconds_final})
        elif isinstance(ev, RunDone):
            done = ev
    return {"images": np.concatenate(images), "labels": np.array(labels), "classes": dist.classes,
            "batches": batches, "n_images": done.n_images, "seconds": done.seconds, "seconds_bo": done.seconds_bo,
            "seconds_final": done.seconds_final, "peak_rss_mb": _status_mb("VmHWM"), "rss_after_load_mb": rss_loaded,
            "lambda": dist.weight, "betas": list(dist.betas), "objective": dist.objective.name}


def as_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [0, 1] as the 8-bit arrays sets travel in (see as_set), as an export stores them."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def seed_indices(config: DistillConfig, data) -> tuple[list[int], list[str]]:
    """The train-split indices of every seed the run draws, class by class and batch by batch, and its classes."""
    dist = Distiller(config, dataset=data)
    return [i for c in dist.classes for batch in dist.seed_plan(c)[0] for i in batch], dist.classes


def real_seeds(config: DistillConfig) -> dict:
    """The random-real baseline: exactly the seeds the generative methods start from, at native resolution."""
    data = load_dataset(config.data, "train")
    idx, classes = seed_indices(config, data)
    size = data.images[idx[0]].size[0]
    return {"images": as_uint8(data.tensor(idx, size, 1)), "labels": data.labels[idx].astype(np.int64),
            "classes": classes}


_WORKER: dict = {}


def _init_student_worker() -> None:
    torch.set_num_threads(1)
    for setting, data in SETTINGS.items():
        teacher = load_teacher(data)
        for split in ("val", "test"):
            _WORKER[setting, split] = (teacher, *target_test_set(load_dataset(data, split), teacher))


def as_set(run: dict, name: str = "distilled") -> DistilledSet:
    """Sets travel between processes as 8-bit numpy arrays (pickled by value, unlike shared torch storage)."""
    return DistilledSet(torch.from_numpy(run["images"]).float() / 255, torch.from_numpy(run["labels"]),
                        run["classes"], name)


def _student_job(setting: str, run: dict, arch: str, seed: int, cfg: StudentConfig, split: str = "test") -> float:
    teacher, images, labels = _WORKER[setting, split]
    return student_accuracy(as_set(run), teacher, images, labels, arch, seed, cfg)


def _slim(run: dict) -> dict:
    return {k: run[k] for k in ("images", "labels", "classes")}


def objective_grid(quick: bool, out: Path) -> dict:
    """f over the whole beta x gamma grid for three uci-digits classes (first mini-batch of train seeds), under
    every objective, from the same proxy generations the BO would score; a figure and the numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dist = Distiller(_make_config("uci-digits", 10, quick, None, None, None, "kl"))
    gammas, betas = dist.config.bo.gammas, dist.betas
    points = [(b, g) for b in betas for g in gammas]
    grids: dict[str, dict[str, list]] = {}
    for name in GRID_CLASSES:
        idx = dist.seed_plan(name)[0][0]
        seeds_img = dist.dataset.tensor(idx, dist.backend.image_size, dist.backend.channels)
        c, m = dist.dataset.class_index(name), len(idx)
        seeds = [noise_seed(0, c, k) for k in range(m)]
        out_img = dist.generate(seeds_img.repeat(len(points), 1, 1, 1), name, np.repeat([p[0] for p in points], m),
                                np.repeat([p[1] for p in points], m), seeds * len(points), proxy=True).images
        seed_view, gen_view = dist.teacher.embed(seeds_img), dist.teacher.embed(out_img)
        for obj in OBJECTIVES:
            f = [Objective(obj)(seed_view, gen_view[k * m:(k + 1) * m], dist.target_index(name))
                 for k in range(len(points))]
            grids.setdefault(obj, {})[name] = np.array(f).reshape(len(betas), len(gammas)).tolist()
    fig, axes = plt.subplots(len(GRID_CLASSES), len(OBJECTIVES), figsize=(4 * len(OBJECTIVES), 3.3 * len(GRID_CLASSES)))
    for col, obj in enumerate(OBJECTIVES):
        for row, name in enumerate(GRID_CLASSES):
            ax, f = axes[row, col], np.array(grids[obj][name])
            im = ax.imshow(f, origin="lower", aspect="auto", cmap="viridis")
            i, j = np.unravel_index(np.argmax(f), f.shape)
            ax.plot(j, i, "r*", ms=12)
            ax.set_xticks(range(len(gammas)), [f"{g:g}" for g in gammas], fontsize=7)
            ax.set_yticks(range(len(betas)), [f"{b:g}" for b in betas], fontsize=7)
            ax.set_title(f"{obj}, class {name}: argmax beta {betas[i]:g}, gamma {gammas[j]:g}", fontsize=8)
            ax.set_xlabel("gamma", fontsize=7)
            ax.set_ylabel("beta", fontsize=7)
            fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "objective_grid.png", dpi=100)
    plt.close(fig)
    return {"betas": list(betas), "gammas": list(gammas), "classes": list(GRID_CLASSES), "f": grids}


def _cache_key(config: DistillConfig) -> str:
    """Configs that make the same images: on a one-point grid the objective is never evaluated for a choice."""
    d = config.to_dict()
    if len(d["bo"]["betas"] or ()) == 1 and len(d["bo"]["gammas"]) == 1:
        d["bo"]["objective"] = None
    return json.dumps(d, sort_keys=True)


def generate_cached(config: DistillConfig, cache: dict[str, dict]) -> dict:
    """generate(), reusing a set the validation stage already made with the same images (same seeds and noise)."""
    key = _cache_key(config)
    if key not in cache:
        cache[key] = generate(config) | {"config": config.to_dict()}
    return cache[key]


def validate(quick: bool, grid: tuple[float, ...], pool, scfg: StudentConfig, t_start: float,
             cache: dict[str, dict]) -> dict:
    """The validation stage: fixed points and objectives scored by students on the val split (IPC 10, seed 0)."""
    ipc = 1 if quick else 10
    vcfg = StudentConfig(seeds=(0,), steps=scfg.steps)
    points = [(grid[i], g) for i in VAL_BETA_INDICES for g in VAL_GAMMAS]
    candidates = {f"fixed {b:g} {g:g}": ((b,), (g,), "kl") for b, g in (points[::5] if quick else points)}
    candidates.update({f"bo {obj}": (None, None, obj) for obj in OBJECTIVES})
    runs = {}
    for s, data in SETTINGS.items():
        for key, (betas, gammas, obj) in candidates.items():
            run = runs[s, key] = generate_cached(_make_config(data, ipc, quick, betas, gammas, None, obj, "paper"),
                                                 cache)
            print(f"[{time.time() - t_start:6.0f} s] val {s} {key}: (beta*, gamma*) "
                  f"{sorted({(b['beta'], b['gamma']) for b in run['batches']})}", flush=True)
    jobs = {(s, key, arch): pool.submit(_student_job, s, _slim(run), arch, 0, vcfg, "val")
            for (s, key), run in runs.items() for arch in vcfg.archs}
    acc = {s: {key: {arch: jobs[s, key, arch].result() for arch in vcfg.archs} for key in candidates}
           for s in SETTINGS}
    mean = {s: {key: float(np.mean(list(v.values()))) for key, v in acc[s].items()} for s in SETTINGS}
    choice: dict = {"objective": max(OBJECTIVES, key=lambda o: np.mean([mean[s][f"bo {o}"] for s in SETTINGS]))}
    for s, data in SETTINGS.items():
        best = max((k for k in candidates if k.startswith("fixed")), key=lambda k: mean[s][k])
        choice[data] = {"beta": candidates[best][0][0], "gamma": candidates[best][1][0]}
    # The BO mode, with the chosen objective: the default (cheaper) mode against the paper's search it replaces.
    paper_key, fast_key = f"bo {choice['objective']}", f"bo {choice['objective']} {DEFAULT_MODE}"
    for s, data in SETTINGS.items():
        runs[s, fast_key] = generate_cached(_make_config(data, ipc, quick, None, None, None, choice["objective"],
                                                         DEFAULT_MODE), cache)
    more = {(s, arch): pool.submit(_student_job, s, _slim(runs[s, fast_key]), arch, 0, vcfg, "val")
            for s in SETTINGS for arch in vcfg.archs}
    for s in SETTINGS:
        acc[s][fast_key] = {arch: more[s, arch].result() for arch in vcfg.archs}
    cost = {key: float(np.mean([runs[s, key]["seconds"] / runs[s, key]["n_images"] for s in SETTINGS]))
            for key in (paper_key, fast_key)}
    score = {key: float(np.mean([acc[s][key][a] for s in SETTINGS for a in vcfg.archs])) for key in cost}
    choice["bo_mode"] = DEFAULT_MODE if score[fast_key] >= score[paper_key] - MODE_TOLERANCE else "paper"
    print(f"[{time.time() - t_start:6.0f} s] validation choice: {choice}; BO modes (mean val accuracy, s/image): "
          f"paper {score[paper_key]:.4f} {cost[paper_key]:.3f}, {DEFAULT_MODE} {score[fast_key]:.4f} "
          f"{cost[fast_key]:.3f}", flush=True)
    return {"choice": choice, "val_accuracy": acc, "student_config": asdict(vcfg), "ipc": ipc,
            "bo_mode_seconds_per_image": cost,
            "rule": "fixed_best: best mean val accuracy of the 2 students in its setting; objective: best mean over "
                    "both settings and students (BO in the paper's mode); BO mode: the default mode, with the chosen "
                    f"objective, unless its mean val accuracy is more than {100 * MODE_TOLERANCE:g} point below the "
                    "paper's search (then paper); the test split is not read"}


def within_class_distance(run: dict) -> float:
    """Mean over classes of the mean pairwise pixel distance of a class's images (in [0, 1] units): the
    diversity repulsion is meant to raise."""
    x = torch.from_numpy(run["images"]).float().flatten(1) / 255
    labels = np.asarray(run["labels"])
    per_class = [mean_pairwise_distance(x[labels == c]) for c in np.unique(labels) if (labels == c).sum() > 1]
    return float(np.mean(per_class)) if per_class else 0.0


def fmt(s: dict) -> str:
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"


def write_validation_table(val: dict, path: Path) -> None:
    """Val accuracy (seed 0) of every candidate: the numbers the fixed_best point and the objective were chosen by."""
    acc = val["val_accuracy"]
    keys = list(next(iter(acc.values())))
    archs = list(next(iter(next(iter(acc.values())).values())))
    rows = ["| candidate | " + " | ".join(f"{s} {a}" for s in acc for a in archs) + " | mean |",
            "|---" * (2 + len(acc) * len(archs)) + "|"]
    for k in keys:
        cells = [100 * acc[s][k][a] for s in acc for a in archs]
        rows.append(f"| {k} | " + " | ".join(f"{c:.1f}" for c in cells) + f" | {np.mean(cells):.1f} |")
    path.write_text(f"IPC {val['ipc']}, val split, student seed 0. Choice: {json.dumps(val['choice'])}\n\n"
                    + "\n".join(rows) + "\n")


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
    t5 = ["| setting | IPC | method | BO mode | s/image | BO share | peak RSS in run (MB) | above models loaded (MB) |",
          "|---|---|---|---|---|---|---|---|"]
    for s in SETTINGS:
        for i in ipcs:
            for m, (label, *_) in METHODS.items():
                c = results[s][str(i)][m].get("cost")
                if c:
                    bo = results[s][str(i)][m]["config"]["bo"]
                    mode = "— (one point)" if len(bo["betas"] or ()) == 1 and len(bo["gammas"]) == 1 else bo["mode"]
                    t5.append(f"| {s} | {i} | {label} | {mode} | {c['seconds_per_image']:.3f} | "
                              f"{100 * c['bo_share']:.0f}% | "
                              f"{c['peak_rss_mb']:.0f} | {max(0.0, c['peak_rss_mb'] - c['rss_after_load_mb']):.0f} |")
    t5 += ["", "| setting | IPC | repulsion overhead: final-pass seconds, ours / ours without repulsion "
           "(same (beta*, gamma*) per batch) |", "|---|---|---|"]
    for s in SETTINGS:
        for i in ipcs:
            r = results[s][str(i)].get("repulsion_overhead")
            why = "batch of 1: no pairs" if i == 1 else "a method not run, or other (beta*, gamma*)"
            t5.append(f"| {s} | {i} | {f'n/a ({why})' if r is None else f'{r:.3f}'} |")
    gpu = out / "gpu_cost.md"  # written by benchmarks/gpu_cost.py on a GPU, kept across CPU runs
    if gpu.exists():
        t5 += ["", gpu.read_text().rstrip("\n")]
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
    p.add_argument("--validation", type=Path, help="reuse this validation.json instead of running the stage")
    p.add_argument("--ipcs", default=None, help="comma-separated IPCs of the test stage (default: 1,10; --quick: 1)")
    p.add_argument("--no-grid", action="store_true", help="skip the objective-grid figure (keep the one on disk)")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated settings of the test stage")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods of the test stage")
    p.add_argument("--student-seeds", help="comma-separated student seeds of the test stage (default: 0,1,2; "
                   "--quick: 0); more seeds narrow a comparison whose std is a few points")
    a = p.parse_args()
    for name in set(SETTINGS) - set(a.settings.split(",")):
        del SETTINGS[name]
    unknown = set(a.methods.split(",")) - set(METHODS)
    if unknown:
        p.error(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    for name in set(METHODS) - set(a.methods.split(",")):
        del METHODS[name]
    a.out = a.out or (RESULTS / "quick" if a.quick else RESULTS)
    t_start = time.time()
    ipcs = [int(i) for i in a.ipcs.split(",")] if a.ipcs else [1] if a.quick else [1, 10]
    scfg = StudentConfig(seeds=(0,), steps=100) if a.quick else StudentConfig()
    if a.student_seeds:
        scfg = replace(scfg, seeds=tuple(int(x) for x in a.student_seeds.split(",")))
    a.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    spawn = multiprocessing.get_context("spawn")
    grid = Distiller(DistillConfig(data="uci-digits"), dataset=load_dataset("uci-digits", "train")).betas
    pool = ProcessPoolExecutor(a.workers, mp_context=spawn, initializer=_init_student_worker)
    cache: dict[str, dict] = {}
    grids = None if a.no_grid else objective_grid(a.quick, a.out)
    print(f"[{time.time() - t_start:6.0f} s] objective grid {'skipped' if a.no_grid else 'written'}", flush=True)
    if a.validation:
        val = json.loads(a.validation.read_text())
    else:
        val = validate(a.quick, grid, pool, scfg, t_start, cache)
        (a.out / "validation.json").write_text(json.dumps(val, indent=1))
    write_validation_table(val, a.out / "validation.md")
    choice = val["choice"]
    t_val = time.time() - t_start
    sets: dict[str, dict[str, dict[str, dict]]] = {}
    jobs, results, scored_as = {}, {}, {}
    with pool:
        for s, data in SETTINGS.items():
            for i in ipcs:
                runs = sets.setdefault(s, {}).setdefault(str(i), {})
                for m in METHODS:
                    cfg = _config(data, i, m, a.quick, grid, choice)
                    if m == "random_real":
                        runs[m] = real_seeds(cfg)
                    else:
                        runs[m] = generate_cached(cfg, cache)
                        print(f"[{time.time() - t_start:6.0f} s] {s} IPC {i} {m}: {runs[m]['n_images']} images in "
                              f"{runs[m]['seconds']:.1f} s; (beta*, gamma*) "
                              f"{sorted({(b['beta'], b['gamma']) for b in runs[m]['batches']})}", flush=True)
        t_gen = time.time() - t_start - t_val
        for s in SETTINGS:
            for i in ipcs:
                runs = sets[s][str(i)]
                for m, run in runs.items():
                    twin = SAME_WITHOUT_PAIRS.get(m) if i == 1 else None
                    if twin in runs and np.array_equal(run["images"], runs[twin]["images"]):
                        scored_as[s, i, m] = twin
                        continue
                    scored_as[s, i, m] = m
                    for arch in scfg.archs:
                        for seed in scfg.seeds:
                            jobs[s, i, m, arch, seed] = pool.submit(_student_job, s, _slim(run), arch, seed, scfg)
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
                             "quality": quality(dset, teachers[s], test_images),
                             "within_class_pixel_distance": within_class_distance(run)}
                    if m != "random_real":
                        entry["cost"] = {"seconds_per_image": run["seconds"] / run["n_images"],
                                         "bo_share": run["seconds_bo"] / (run["seconds_bo"] + run["seconds_final"]),
                                         **{k: run[k] for k in ("seconds", "seconds_bo", "seconds_final",
                                                                "peak_rss_mb", "rss_after_load_mb", "n_images")}}
                        entry["batches"] = run["batches"]
                        entry["config"] = run["config"]
                        entry["objective"] = run["objective"]
                    res[m] = entry
                    print(f"[{time.time() - t_start:6.0f} s] {s} IPC {i} {m}: " + ", ".join(
                        f"{arch} {fmt(entry['students'][arch])}" for arch in scfg.archs), flush=True)
                ours, plain = sets[s][str(i)].get("ours"), sets[s][str(i)].get("ours_no_repulsion")
                if ours is None or plain is None:
                    continue
                same_points = [(b["beta"], b["gamma"]) for b in ours["batches"]] == \
                    [(b["beta"], b["gamma"]) for b in plain["batches"]]
                res["repulsion_overhead"] = ours["seconds_final"] / plain["seconds_final"] \
                    if i > 1 and same_points else None
    tables = write_tables(results, ipcs, scfg.archs, a.out)
    plot_accuracy(results, ipcs, scfg.archs, a.out / "accuracy.png")
    for s in SETTINGS:
        sample_grid(sets[s][str(max(ipcs))], a.out / f"samples_{s}.png")
    meta = {"command": " ".join(["python benchmarks/run.py", *sys.argv[1:]]),
            "seconds_total": time.time() - t_start, "seconds_validation_stage": t_val, "seconds_generation": t_gen,
            "choice": choice, "objective_grid": grids,
            "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} CPUs", "torch": torch.__version__,
            "student_config": asdict(scfg), "settings": SETTINGS, "methods": {m: v[0] for m, v in METHODS.items()},
            "feature_space": "teacher penultimate layer (quality metrics)",
            "timing_note": "every stage generates its sets before its students train; sets the validation stage "
                           "made (ours and fixed_best at IPC 10) are reused with the seconds measured there"}
    (a.out / "benchmark.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1))
    for name, text in tables.items():
        print(f"\n## {name}\n{text}")
    print(f"\ntotal {meta['seconds_total']:.0f} s (generation {t_gen:.0f} s)")


if __name__ == "__main__":
    main()
