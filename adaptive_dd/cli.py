"""Command line: `adaptive-dd distill ...` (also `python -m adaptive_dd distill ...`).

`accelerate launch [--num_processes N] -m adaptive_dd distill ...` spreads the classes over N processes (one per
GPU); every run can be continued after a crash with `--resume`.
"""
from __future__ import annotations

import argparse
import re
import sys
from datetime import timedelta
from pathlib import Path

from .config import (BO_MODES, BO_SCOPES, CHOICES, KERNEL_SCOPES, WARM_DESIGNS, BOConfig, DistillConfig,
                     RepulsionConfig, SamplerConfig)
from .evaluation.students import PROTOCOLS
from .fidelity import OBJECTIVES
from .options import parse_bandwidth, parse_floats, parse_names

# Processes meet at a barrier after loading their models and again when their last class is done; a slow model
# download or an uneven last class must not trip torch.distributed's default 10-30 min timeout.
BARRIER_TIMEOUT = timedelta(hours=6)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where the help text does not already say what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if "default" in (action.help or "") or action.default is None or action.default is False \
                or action.default == "":
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adaptive-dd", description="Training-free diffusion dataset distillation "
                                "with adaptive (beta, gamma) sampling and repulsion.")
    sub = p.add_subparsers(dest="command", required=True)
    cfg = DistillConfig()
    d = sub.add_parser("distill", help="distill a dataset to IPC images per class", formatter_class=_HelpFormatter)
    # Read a value such as "-1,2" as a number list, not an option, so `--betas -1,2` reaches validation:
    # the pattern newer argparse releases use; older ones take only a single plain negative number.
    d._negative_number_matcher = re.compile(r"-\.?\d")
    d.add_argument("--data", default=cfg.data, help="uci-digits, mnist-5k, an ImageFolder directory (with or "
                   "without train/ and test/), or a Hugging Face dataset saved with save_to_disk")
    d.add_argument("--out", required=True, help="output folder (ImageFolder layout + manifest.json)")
    d.add_argument("--classes", help="comma-separated class names or WordNet ids; the presets imagenette and "
                   "imagewoof stand for their 10 wnids (default: all)")
    d.add_argument("--ipc", type=int, default=cfg.ipc, help="images per class")
    d.add_argument("--m-seed", type=int, default=cfg.m_seed, help="seed images per mini-batch")
    d.add_argument("--budget", type=int, default=cfg.bo.budget, help="BO evaluations per mini-batch")
    d.add_argument("--q", type=int, help="BO proposals evaluated together per round, in one sampler call (default: "
                   "the mode's)")
    d.add_argument("--design-q", type=int, help="proposals per round while the initial design lasts (its points "
                   "need no observation); 0: --q (default: the mode's)")
    d.add_argument("--kappa", type=float, default=cfg.bo.kappa, help="UCB exploration weight")
    d.add_argument("--betas", help="CFG grid, e.g. 1,2,3 (default: the backbone's)")
    d.add_argument("--gammas", default=",".join(f"{g:g}" for g in cfg.bo.gammas),
                   help="strength grid, in (0, 1]")
    d.add_argument("--steps", type=int, default=cfg.sampler.steps, help="full sampler steps")
    d.add_argument("--bo-mode", choices=list(BO_MODES), default=cfg.bo.mode,
                   help="preset for the BO cost options left unset: " + "; ".join(
                       f"{k}: {', '.join(f'{f}={v}' for f, v in m.items())}" for k, m in BO_MODES.items())
                   + " (paper: Algorithm 1 as written, a fresh 8-evaluation search per mini-batch)")
    d.add_argument("--bo-scope", choices=list(BO_SCOPES), help="observations that seed a mini-batch's GP: batch "
                   "(none, the paper's), class (the class's earlier batches), run (also the first class's, "
                   "the pilot's) (default: the mode's)")
    d.add_argument("--kernel-scope", choices=list(KERNEL_SCOPES), help="where the GP kernel's hyper-parameters are "
                   "learned: batch (every mini-batch) or class (once, on the class's first prior; its later "
                   "mini-batches keep them) (default: the mode's)")
    d.add_argument("--warm-design", choices=list(WARM_DESIGNS), help="where a search seeded by earlier observations "
                   "starts: top (the prior's best points), ucb (its best point, then GP-UCB's picks, which also "
                   "explore), low (its best point and the lowest beta at its gamma, the least guidance --choice "
                   "one_se can pick), top_then_ucb or top_then_low (top on a class's first mini-batch, ucb or low "
                   "on its later ones) (default: the mode's)")
    d.add_argument("--proxy-seeds", type=int, help="seeds each BO proxy runs on, the batch's first ones; 0: all "
                   "(default: the mode's)")
    d.add_argument("--warm-budget", type=int, help="BO evaluations of a mini-batch whose GP starts from earlier "
                   "observations (see --bo-scope), at most --budget; 0: --budget (default: the mode's)")
    d.add_argument("--first-warm-budget", type=int, help="the same for a class's first mini-batch, whose GP starts "
                   "from the pilot's observations alone (--bo-scope run); 0: --warm-budget (default: the mode's)")
    d.add_argument("--early-stop", action=argparse.BooleanOptionalAction, default=None,
                   help="end BO once no unevaluated point's UCB beats the best observed (default: the mode's)")
    d.add_argument("--freeze-after", type=int, help="fix the GP kernel's hyper-parameters at its first fit to at "
                   "least this many points, a prior's included; 0: never (default: the mode's)")
    d.add_argument("--class-group", type=int, help="classes (in class order after the first) whose first mini-batches "
                   "run their first BO proxy round in one sampler call and go to one process together; 0: by device, "
                   "4 on a CPU, where small calls cost per call, 1 elsewhere (default: the mode's)")
    d.add_argument("--choice", choices=list(CHOICES), help="the point the final pass runs at: best (the best "
                   "observed, Algorithm 1) or one_se (the lowest beta whose f is within one standard error of the "
                   "best's, measured seed by seed) (default: the mode's)")
    d.add_argument("--proxy-steps", type=int, help="BO proxy steps, a divisor of --steps: proxies start where the "
                   "full sampler starts and take every (steps // proxy-steps)-th step (default: the mode's, every "
                   "other step in paper mode, a fifth of the steps in fast mode)")
    d.add_argument("--objective", choices=list(OBJECTIVES), default=cfg.bo.objective,
                   help="what BO maximises: " + "; ".join(f"{k}: {v}" for k, v in OBJECTIVES.items()))
    d.add_argument("--temperature", type=float, help="teacher temperature of the objective (default: 1 for the "
                   "KL objectives, 20 for confidence)")
    d.add_argument("--novelty-weight", type=float, default=cfg.bo.novelty_weight,
                   help="w of the kl_novelty objective")
    d.add_argument("--n-initial", type=int, default=cfg.bo.n_initial,
                   help="BO's initial design: the grid's corners, then Latin points")
    d.add_argument("--scheduler", default=cfg.sampler.scheduler, help="a diffusers scheduler class")
    d.add_argument("--eta", type=float, default=cfg.sampler.eta, help="DDIM eta")
    d.add_argument("--lam", "--lambda", dest="lam", type=float, help="repulsion weight (default: the backbone's)")
    d.add_argument("--bandwidth", default=cfg.repulsion.bandwidth, help="RBF sigma, or auto (median heuristic)")
    d.add_argument("--seed", type=int, default=cfg.seed, help="run seed (noise, seed images, BO)")
    d.add_argument("--device", help="cpu, cuda, ... (default: cuda when available; cpu under accelerate --cpu)")
    d.add_argument("--model", default=cfg.model, help="bundled, a class-UNet folder, or a Stable Diffusion or DiT "
                   "(e.g. facebook/DiT-XL-2-256) hub id or folder")
    d.add_argument("--teacher", help="bundled name, a folder, or timm NAME[:CHECKPOINT] (default: the data's)")
    d.add_argument("--prompt", default=cfg.prompt, help="Stable Diffusion prompt template")
    d.add_argument("--negative-prompt", default=cfg.negative_prompt, help="Stable Diffusion null condition")
    d.add_argument("--overwrite", action="store_true", help="replace an existing output folder that is not ours; "
                   "without --resume, discard an interrupted run of OUT")
    d.add_argument("--zip", action="store_true", help="also write OUT.zip")
    d.add_argument("--resume", action="store_true", help="continue the interrupted run of the same settings "
                   "recorded beside OUT (refused, naming the fields, if the settings differ)")
    e = sub.add_parser("evaluate", help="train students on a distilled set and measure quality and diversity",
                       formatter_class=_HelpFormatter)
    e.add_argument("--distilled", required=True, help="a folder written by `adaptive-dd distill`, or any ImageFolder "
                   "(classes from folder names, matched to the teacher's by name or WordNet id)")
    e.add_argument("--data", required=True, help="the target dataset whose test split is measured against (as "
                   "distill's --data; a test/ or val/ folder, or a saved dataset's test or validation split)")
    e.add_argument("--teacher", help="bundled name, a folder, or timm NAME[:CHECKPOINT] (default: the data's)")
    e.add_argument("--protocol", choices=list(PROTOCOLS), help="student protocol: " + "; ".join(
        f"{k}: {v}" for k, v in PROTOCOLS.items()) + " (default: digits for the built-in sets, rded otherwise)")
    e.add_argument("--archs", help="student architectures or timm names (default: the protocol's)")
    e.add_argument("--seeds", help="student seeds (default: the protocol's, 0,1,2)")
    e.add_argument("--steps", type=int, help="student optimisation steps, replacing the protocol's (digits: 300 "
                   "steps; rded: 300 epochs)")
    e.add_argument("--no-quality", action="store_true", help="students only, no FID/KID/PRDC/Vendi")
    e.add_argument("--json", help="also write the report to this file")
    return p


def _default_device() -> str:
    import torch
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_CPU"):
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _processes(device: str):
    """accelerate's view of the processes launched together (one process without a launcher).

    With several processes on CUDA it binds each to its own GPU, so device "cuda" means that GPU.
    """
    from accelerate import PartialState

    return PartialState(cpu=device.startswith("cpu"), timeout=BARRIER_TIMEOUT)


def class_list(text: str | None) -> list[str] | None:
    """A --classes value as a list, the ImageNet subset presets expanded to their wnids (in their anchors' order)."""
    from .imagenet import expand_classes

    return expand_classes(parse_names(text)) if text is not None else None


def config_from_args(a: argparse.Namespace) -> DistillConfig:
    """The run's config; list and bandwidth options are parsed here, so their errors read like validation's."""
    return DistillConfig(
        data=a.data, model=a.model, teacher=a.teacher, classes=class_list(a.classes),
        ipc=a.ipc, m_seed=a.m_seed, seed=a.seed, device=a.device or _default_device(), prompt=a.prompt,
        negative_prompt=a.negative_prompt,
        sampler=SamplerConfig(steps=a.steps, proxy_steps=a.proxy_steps, scheduler=a.scheduler, eta=a.eta),
        repulsion=RepulsionConfig(weight=a.lam, bandwidth=parse_bandwidth(a.bandwidth)),
        bo=BOConfig(betas=None if a.betas is None else parse_floats(a.betas, "--betas"),
                    gammas=parse_floats(a.gammas, "--gammas"), budget=a.budget, kappa=a.kappa, q=a.q,
                    n_initial=a.n_initial, objective=a.objective, temperature=a.temperature,
                    novelty_weight=a.novelty_weight, mode=a.bo_mode, scope=a.bo_scope, proxy_seeds=a.proxy_seeds,
                    warm_budget=a.warm_budget, first_warm_budget=a.first_warm_budget, early_stop=a.early_stop,
                    freeze_after=a.freeze_after, design_q=a.design_q, kernel_scope=a.kernel_scope,
                    warm_design=a.warm_design, class_group=a.class_group, choice=a.choice),
    )


def distill(a: argparse.Namespace) -> int:
    from .distill import Distiller, Shard
    from .export import ExportRun, check_output

    config = config_from_args(a).validate()
    out = Path(a.out).absolute()
    check_output(out, a.overwrite)
    state = _processes(config.device)
    try:
        shard = Shard(state.process_index, state.num_processes, state.wait_for_everyone)
        dist = Distiller(config)
        run = ExportRun(out, config, dist.dataset.classes, dist.describe(), overwrite=a.overwrite, resumable=True,
                        resume=a.resume, shard=shard)
        return _distill_run(dist, run, shard, a.zip)
    finally:
        state.destroy_process_group()


def _distill_run(dist, run, shard, make_zip: bool) -> int:
    """Stream this process's share of the run through the export, reporting as batches and classes finish."""
    from tqdm import tqdm

    from .distill import BatchDone, ClassDone, RunDone

    if run.finished:
        list(run.write((), make_zip))
        if shard.is_main:
            print(f"nothing left to distill: {run.out} is complete")
        return 0
    done = run.progress.batches
    if shard.is_main and done:
        print(f"resuming {run.work}: {sum(map(len, done.values()))} of {dist.n_batches()} mini-batches already done")
    n_batches = dist.n_batches(dist.assigned(shard, run.progress), run.progress)
    desc = "distill" if shard.count == 1 else f"distill [process {shard.index + 1}/{shard.count}]"
    bar = tqdm(total=n_batches, unit="batch", desc=desc, file=sys.stderr)
    try:
        for ev in run.write(dist.run(shard, run.progress), make_zip):
            if isinstance(ev, BatchDone):
                bar.update(1)
                bar.set_postfix_str(f"class {ev.class_name} batch {ev.batch_index}")
            elif isinstance(ev, ClassDone):
                rows = "; ".join(f"beta*={b.beta:g} gamma*={b.gamma:g}"
                                 + ("" if b.f_proxy is None else f" f={b.f_proxy:.4f}")
                                 for b in ev.batches)
                bar.write(f"class {ev.class_name}: {ev.n_images} images; {rows}"
                          + (" (seeds wrapped: fewer than IPC in class)" if ev.wrapped else ""))
            elif isinstance(ev, RunDone):
                bar.close()
                share = ev.seconds_bo / max(ev.seconds_bo + ev.seconds_final, 1e-9)
                where = f" -> {run.out}" if shard.is_main else f" (process {shard.index + 1}/{shard.count})"
                print(f"{ev.n_images} images in {ev.seconds:.1f} s ({ev.seconds / max(ev.n_images, 1):.3f} s/image, "
                      f"BO {100 * share:.0f}% of sampling time: {ev.seconds_bo:.1f} s BO, {ev.seconds_final:.1f} s "
                      f"final; BO mode {dist.config.bo.mode}, scope {dist.config.bo.scope}){where}")
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: the finished mini-batches are kept in {run.work}; run the same command with --resume "
              f"to continue", file=sys.stderr)
        return 130
    return 0


def student_config(a: argparse.Namespace, per_class: list[int]):
    """The --protocol preset for the set (its IPC and class count), with --archs, --seeds and --steps applied."""
    from dataclasses import replace

    from .data import BUILTIN_DATASETS
    from .evaluation.students import protocol

    name = a.protocol or ("digits" if a.data in BUILTIN_DATASETS else "rded")
    cfg = protocol(name, max(per_class), len(per_class))
    try:
        if a.archs is not None:
            cfg = replace(cfg, archs=tuple(parse_names(a.archs)))
        if a.seeds is not None:
            cfg = replace(cfg, seeds=tuple(int(x) for x in a.seeds.split(",") if x.strip()))
        if a.steps is not None:
            cfg = replace(cfg, steps=a.steps, epochs=None)
        return name, cfg.validate()
    except ValueError as e:
        raise ValueError(f"--archs/--seeds/--steps: {e}") from None


def evaluate(a: argparse.Namespace) -> int:
    import json

    from .data import load_dataset
    from .distill import default_teacher
    from .evaluation import evaluate as run_evaluation
    from .evaluation import load_distilled
    from .fidelity import load_teacher

    dset = load_distilled(a.distilled)
    name, cfg = student_config(a, dset.per_class())
    teacher = load_teacher(a.teacher or default_teacher(a.data))
    report = run_evaluation(dset, teacher, load_dataset(a.data, "test"), cfg, with_quality=not a.no_quality)
    report["protocol"] = name
    length = f"{cfg.steps} steps" if cfg.epochs is None else f"{cfg.epochs} epochs"
    print(f"{report['set']}: {report['n_images']} images, per class {report['per_class']}; "
          f"students ({name} protocol) on {report['test_split']} ({len(cfg.seeds)} seeds, {length})")
    for arch, s in report["students"].items():
        print(f"  {arch:<10} accuracy {100 * s['mean']:.2f} ± {100 * s['std']:.2f}  "
              f"({', '.join(f'{100 * v:.1f}' for v in s['acc'])})")
    if "quality" in report:
        q = report["quality"]
        print(f"  quality in {q['feature_space']}: FID {q['fid']:.2f}, KID {q['kid_mean']:.4f} ± {q['kid_std']:.4f}, "
              f"precision {q['precision']:.3f}, recall {q['recall']:.3f}, density {q['density']:.3f}, "
              f"coverage {q['coverage']:.3f}, Vendi-1 {q['vendi_1']:.2f}, Vendi-2 {q['vendi_2']:.2f}, "
              f"RMI-2 {q['rmi_2']:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError
    from .data import DataError
    from .export import ExportError
    from .fidelity import ModelLoadError

    a = build_parser().parse_args(argv)
    try:
        return evaluate(a) if a.command == "evaluate" else distill(a)
    except (ConfigError, DataError, ExportError, ModelLoadError, ValueError) as e:
        print(f"adaptive-dd: error: {e}", file=sys.stderr)
        return 2
