"""What the adaptive search costs, per BO mode, measured side by side in one run (issue 12).

    python benchmarks/bo_cost.py --threads 1              # classes 3, 1, 9 of uci-digits at IPC 10 and 50
    python benchmarks/bo_cost.py --threads 1 --all-classes

Every mode distils the same classes with the bundled models (mnist-5k backbone, uci-digits seeds, m_seed 10): the
paper's search (a fresh 8-evaluation GP per mini-batch, every seed in every proxy, proxies on every other step), each
cheaper option alone on top of it, and the default ("fast"). Each mode's run is Distiller.run, as the CLI's (a
run-scope prior built from the classes before it, each mini-batch's first proxy round riding in the final pass of
its class's previous one), one after the other, so compare modes within one invocation. Reports per mode and IPC
the BO share of sampling time (what the CLI's summary line prints), seconds per image, BO evaluations per batch,
the chosen (beta*, gamma*) and the objective on the final images. The app path: one Explore run (Distiller.run_batch
on one class's m_seed seeds, BO and final pass, as app_handlers.run_bo calls it) in paper and default mode,
alternated, the ratio of their medians. Writes benchmarks/results/bo_cost.json and bo_cost.md.

--validate MODES: also distil all 10 classes at each --val-ipcs (default 10) in each of those modes and score students
(both architectures, --val-seeds) on uci-digits' val split (never the test split): what the fast mode's settings were
chosen by. The "fixed_" modes are no search at all, one grid point for every class (fixed_1.5_0.3 is fixed_best's
uci-digits point), for scale: how much the choice of beta alone moves the students.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adaptive_dd.backends import create_backend  # noqa: E402
from adaptive_dd.config import BOConfig, DistillConfig, SamplerConfig  # noqa: E402
from adaptive_dd.data import load_dataset  # noqa: E402
from adaptive_dd.distill import BatchDone, BOStep, Distiller  # noqa: E402
from adaptive_dd.fidelity import load_teacher  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PAPER = {"mode": "paper"}
# name -> (label, BOConfig fields, proxy_steps): each option alone on the paper's search, then the default.
MODES: dict[str, tuple[str, dict, int | None]] = {
    "paper": ("paper: per-batch GP, 8 evaluations, all seeds, 25 proxy steps", PAPER, None),
    "proxy_steps_10": ("paper + 10 proxy steps", PAPER, 10),
    "proxy_seeds_4": ("paper + proxies on 4 of the 10 seeds", {**PAPER, "proxy_seeds": 4}, None),
    "q_4": ("paper + q = 4 candidates per round", {**PAPER, "q": 4}, None),
    "design_q_4": ("paper + the 4-point initial design in one call", {**PAPER, "design_q": 4}, None),
    "freeze_4": ("paper + kernel fixed at 4 points", {**PAPER, "freeze_after": 4}, None),
    "early_stop": ("paper + early stopping", {**PAPER, "early_stop": True}, None),
    "scope_class": ("paper + class-scope warm start, 1 evaluation when warm",
                    {**PAPER, "scope": "class", "warm_budget": 1}, None),
    "scope_run": ("paper + run-scope warm start, 1 evaluation when warm", {**PAPER, "scope": "run", "warm_budget": 1},
                  None),
    "fast": ("default (fast mode)", {}, None),
    "fast_proxy_seeds_2": ("default with proxies on 2 seeds", {"proxy_seeds": 2}, None),
    "fast_proxy_seeds_all": ("default with proxies on all seeds", {"proxy_seeds": 0}, None),
    "fast_warm_2": ("default with 2 evaluations when warm", {"warm_budget": 2}, None),
    "fast_design_q_0": ("default with the initial design in rounds of q", {"design_q": 0}, None),
    "fast_q_4": ("default with cold searches in rounds of 4 after the design", {"q": 4}, None),
    "fast_kernel_batch": ("default with the GP kernel learned by every mini-batch", {"kernel_scope": "batch"}, None),
    "fast_warm_top": ("default with every warm batch on the prior's two best points", {"warm_design": "top"}, None),
    "fast_warm_ucb": ("default with every warm batch on the prior's best and GP-UCB's pick", {"warm_design": "ucb"},
                      None),
    "fast_warm_4_q_4": ("default with the prior's 4 best points in one call when warm (q 4)",
                        {"warm_budget": 4, "q": 4}, None),
    "fast_first_warm_2": ("default with the prior's 2 best points on a class's first mini-batch (the default "
                          "before)", {"first_warm_budget": 2}, None),
    "fast_first_warm_4": ("default with the prior's 4 best points in one call on a class's first mini-batch",
                          {"first_warm_budget": 4}, None),
    "fast_budget_6": ("default with 6 evaluations in a cold search (the pilot class's)", {"budget": 6}, None),
    "fast_first_warm_4_budget_6": ("default with the prior's 4 best points on a class's first mini-batch and 6 "
                                   "evaluations in a cold search", {"first_warm_budget": 4, "budget": 6}, None),
    "fast_kappa_4": ("default with kappa 4 (more exploration in GP-UCB's picks)", {"kappa": 4.0}, None),
    "fast_warm_3": ("default with 3 evaluations on a class's later mini-batches (2 in the ridden round, then 1)",
                    {"warm_budget": 3}, None),
    "fast_first_warm_4_budget_6_warm_3": ("default with 4 points on a class's first mini-batch, 6 in a cold search "
                                          "and 3 on later mini-batches",
                                          {"first_warm_budget": 4, "budget": 6, "warm_budget": 3}, None),
    "fast_choice_best": ("default with the final pass at the best observed point", {"choice": "best"}, None),
    "fast_top_then_ucb": ("default with a class's later mini-batches on the prior's best and GP-UCB's pick (the "
                          "default before the low warm design)", {"warm_design": "top_then_ucb"}, None),
    "paper_one_se": ("paper + the final pass at the lowest beta within one standard error of the best",
                     {**PAPER, "choice": "one_se"}, None),
    "fixed_1.5_0.3": ("no search: fixed (1.5, 0.3), fixed_best's uci-digits point", {"betas": (1.5,),
                                                                                     "gammas": (0.3,)}, None),
    "fixed_1_0.3": ("no search: fixed (1, 0.3), the least guidance", {"betas": (1.0,), "gammas": (0.3,)}, None),
    "fixed_2_0.3": ("no search: fixed (2, 0.3)", {"betas": (2.0,), "gammas": (0.3,)}, None),
    "fixed_4_0.3": ("no search: fixed (4, 0.3), the usual pick of the fast mode with two points on a class's first "
                    "mini-batch", {"betas": (4.0,), "gammas": (0.3,)}, None),
}
# variants of the default or of the paper's search, fixed points: --validate
SIDE_BY_SIDE = [m for m in MODES if not m.startswith(("fast_", "paper_", "fixed_"))]


def config(mode: str, classes: list[str], ipc: int) -> DistillConfig:
    _, bo, proxy_steps = MODES[mode]
    return DistillConfig(data="uci-digits", classes=classes, ipc=ipc, m_seed=10, seed=0, device="cpu",
                         sampler=SamplerConfig(proxy_steps=proxy_steps), bo=BOConfig(**bo)).validate()


def distill_side_by_side(models: tuple, classes: list[str], ipc: int, modes: list[str]) -> dict[str, dict]:
    """Every mode's run over the classes, one after the other; per mode the run's totals and batch rows."""
    dists = {m: Distiller(config(m, classes, ipc), *models) for m in modes}
    rows: dict[str, list[dict]] = {m: [] for m in modes}
    for m in modes:
        for ev in dists[m].run():
            if isinstance(ev, BatchDone):
                rows[m].append({"class": ev.class_name, "batch": ev.batch_index, "beta": ev.beta, "gamma": ev.gamma,
                                "evaluations": len(ev.observations), "f_final": ev.f_final,
                                "seconds_bo": ev.seconds_bo, "seconds_final": ev.seconds_final,
                                "n": len(ev.images)})
    out = {}
    for m in modes:
        r = rows[m]
        bo, final, n = (sum(x[k] for x in r) for k in ("seconds_bo", "seconds_final", "n"))
        out[m] = {"label": MODES[m][0], "config": dists[m].config.to_dict(), "bo_share": bo / (bo + final),
                  "seconds_per_image": (bo + final) / n, "seconds_bo": bo, "seconds_final": final, "n_images": n,
                  "evaluations_per_batch": float(np.mean([x["evaluations"] for x in r])),
                  "f_final_mean": float(np.mean([x["f_final"] for x in r])), "batches": r}
    return out


def app_speed(models: tuple, classes: list[str], repeats: int) -> dict:
    """One Explore run per class (BO + final pass on m_seed = 10 seeds, no prior: the app runs one batch), paper and
    default alternated; wall seconds of the whole stream."""
    seconds: dict[str, list[float]] = {"paper": [], "fast": []}
    evaluations: dict[str, list[int]] = {"paper": [], "fast": []}
    for _ in range(repeats):
        for name in classes:
            for m in seconds:
                dist = Distiller(config(m, [name], 10), *models)
                images = dist.dataset.tensor(dist.seed_plan(name)[0][0], dist.backend.image_size,
                                             dist.backend.channels)
                t0 = time.perf_counter()
                events = list(dist.run_batch(images, [str(i) for i in range(len(images))], name))
                seconds[m].append(time.perf_counter() - t0)
                evaluations[m].append(sum(len(e.candidates) for e in events if isinstance(e, BOStep)))
    paper, fast = statistics.median(seconds["paper"]), statistics.median(seconds["fast"])
    return {"seconds": seconds, "evaluations": evaluations, "median_paper": paper, "median_fast": fast,
            "speedup": paper / fast}


def validate(modes: list[str], seeds: list[int], ipcs: list[int]) -> dict[str, dict[str, dict]]:
    """Val accuracy of students trained on each mode's set of all 10 classes at each IPC (benchmarks/run.py's
    students); IPC -> mode -> figures."""
    from run import StudentConfig, _init_student_worker, _slim, _student_job, generate

    scfg = StudentConfig(seeds=tuple(seeds))
    _init_student_worker()
    out: dict[str, dict[str, dict]] = {}
    for ipc in ipcs:
        for m in modes:
            run = generate(config(m, [str(c) for c in range(10)], ipc))
            acc = {arch: [_student_job("unaligned", _slim(run), arch, seed, scfg, "val") for seed in seeds]
                   for arch in scfg.archs}
            r = out.setdefault(str(ipc), {})[m] = {
                "val_accuracy": acc, "mean": float(np.mean([v for a in acc.values() for v in a])),
                "seconds_per_image": run["seconds"] / run["n_images"],
                "bo_share": run["seconds_bo"] / (run["seconds_bo"] + run["seconds_final"]),
                "points": [(b["beta"], b["gamma"]) for b in run["batches"]]}
            print(f"val IPC {ipc} {m:<15} mean val accuracy {100 * r['mean']:.2f} "
                  f"({', '.join(f'{a} {100 * np.mean(v):.2f}' for a, v in acc.items())}), "
                  f"{r['seconds_per_image']:.3f} s/image, BO {100 * r['bo_share']:.0f}%", flush=True)
    return out


def write_md(result: dict, path: Path) -> str:
    lines = [f"`{result['command']}`: uci-digits with the bundled models, m_seed 10, 50 steps, {result['machine']}."]
    if result["ipc"]:
        lines += ["", f"BO cost per mode, classes {', '.join(result['classes'])} (one run, each mode over all "
                      "the classes as the CLI runs them, one mode after the other):", "",
                  "| IPC | mode | BO share of sampling time | s/image | BO evaluations per batch | "
                  "(beta*, gamma*) chosen | mean f on final images |", "|---|---|---|---|---|---|---|"]
    for ipc, modes in result["ipc"].items():
        for m, r in modes.items():
            points = sorted({(b["beta"], b["gamma"]) for b in r["batches"]})
            lines.append(f"| {ipc} | {r['label']} | {100 * r['bo_share']:.0f}% | {r['seconds_per_image']:.3f} | "
                         f"{r['evaluations_per_batch']:.1f} | {', '.join(f'({b:g}, {g:g})' for b, g in points)} | "
                         f"{r['f_final_mean']:.3f} |")
    a = result.get("app")
    if a:
        lines += ["", f"App (one Explore run on one class, BO + final pass, m_seed 10, median of "
                      f"{len(a['seconds']['paper'])}): paper {a['median_paper']:.2f} s, default "
                      f"{a['median_fast']:.2f} s, **{a['speedup']:.2f}x** faster."]
    for ipc, modes in result.get("validation", {}).items():
        lines += ["", f"Validation (all 10 classes, IPC {ipc}, students on uci-digits' val split, seeds "
                      f"{result['val_seeds']}, mean +- std over seeds):", "",
                  "| mode | mean val accuracy | per student | s/image | BO share | (beta*, gamma*): batches |",
                  "|---|---|---|---|---|---|"]
        for m, r in modes.items():
            per = ", ".join(f"{a} {100 * np.mean(x):.1f} +- {100 * np.std(x):.1f}"
                            for a, x in r["val_accuracy"].items())
            counts = Counter(tuple(p) for p in r["points"]).most_common()
            points = ", ".join(f"({b:g}, {g:g}): {n}" for (b, g), n in counts)
            lines.append(f"| {m} | {100 * r['mean']:.2f} | {per} | {r['seconds_per_image']:.3f} | "
                         f"{100 * r['bo_share']:.0f}% | {points} |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", default="3,1,9")
    p.add_argument("--all-classes", action="store_true", help="all 10 classes (about 3x the time)")
    p.add_argument("--ipcs", default="10,50")
    p.add_argument("--modes", default=",".join(SIDE_BY_SIDE), help="comma-separated, from: " + ", ".join(MODES))
    p.add_argument("--app-repeats", type=int, default=2, help="Explore runs per class and mode (0: skip)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--validate", default="", help="comma-separated modes to score on the val split (default: none)")
    p.add_argument("--val-seeds", default="0,1", help="student seeds of --validate")
    p.add_argument("--val-ipcs", default="10", help="comma-separated IPCs of --validate")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    classes = [str(c) for c in range(10)] if a.all_classes else a.classes.split(",")
    modes = a.modes.split(",")
    unknown = [m for m in modes + a.validate.split(",") if m and m not in MODES]
    if unknown:
        p.error(f"unknown mode {unknown[0]!r}")
    cfg = DistillConfig(data="uci-digits")
    models = (create_backend(cfg.model, "cpu"), load_teacher("uci-digits", "cpu"),
              load_dataset("uci-digits", "train"))
    result: dict = {"classes": classes, "machine": f"{platform.machine()}, {a.threads} torch thread(s)",
                    "command": "python benchmarks/bo_cost.py " + " ".join(sys.argv[1:]), "ipc": {}}
    t0 = time.time()
    for ipc in (int(i) for i in a.ipcs.split(",") if i):
        result["ipc"][str(ipc)] = distill_side_by_side(models, classes, ipc, modes)
        for m, r in result["ipc"][str(ipc)].items():
            print(f"[{time.time() - t0:5.0f} s] IPC {ipc} {m:<15} BO {100 * r['bo_share']:3.0f}% of sampling time, "
                  f"{r['seconds_per_image']:.3f} s/image, {r['evaluations_per_batch']:.1f} evaluations/batch, "
                  f"f_final {r['f_final_mean']:.3f}", flush=True)
    if a.app_repeats and a.ipcs:
        result["app"] = app_speed(models, classes, a.app_repeats)
        print(f"[{time.time() - t0:5.0f} s] app: paper {result['app']['median_paper']:.2f} s, default "
              f"{result['app']['median_fast']:.2f} s per Explore run: {result['app']['speedup']:.2f}x", flush=True)
    if a.validate:
        result["val_seeds"] = [int(x) for x in a.val_seeds.split(",")]
        result["validation"] = validate(a.validate.split(","), result["val_seeds"],
                                        [int(i) for i in a.val_ipcs.split(",")])
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bo_cost.json").write_text(json.dumps(result, indent=1))
    print(write_md(result, a.out / "bo_cost.md"))


if __name__ == "__main__":
    main()
