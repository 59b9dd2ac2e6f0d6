"""What the bundled backbone's VAE alone costs the unaligned students: the uci-digits IPC 10 seeds (the benchmark's
own, seed 0) at their native 8 px, upsampled to 32 px, and encoded + decoded by the backbone's VAE (gamma 0, no
denoising), each scored by both students (3 seeds) on the VAL split, as benchmarks/run.py scores them.

    python benchmarks/vae_floor.py      # a few minutes; writes benchmarks/results/vae_floor.json

The gap between the 32 px seeds and their reconstructions bounds what a better autoencoder could win back; the rest of
the gap to the generated sets comes from the denoising itself.
"""
from __future__ import annotations

import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import run as bench  # noqa: E402

from adaptive_dd.backends import create_backend  # noqa: E402
from adaptive_dd.data import load_dataset  # noqa: E402
from adaptive_dd.evaluation.students import StudentConfig  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    config = bench._make_config("uci-digits", 10, False, None, None, None, "confidence", "fast")
    real = bench.real_seeds(config)
    data = load_dataset("uci-digits", "train")
    idx, _ = bench.seed_indices(config, data)
    backend = create_backend("bundled")
    x = data.tensor(idx, backend.image_size, backend.channels)
    rec = backend.decode(backend.encode(x)).cpu()
    sets = {"seeds_native_8px": real, f"seeds_{backend.image_size}px": dict(real, images=bench.as_uint8(x)),
            "vae_reconstruction": dict(real, images=bench.as_uint8(rec))}
    scfg = StudentConfig()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                             initializer=bench._init_student_worker) as pool:
        jobs = {(n, a, s): pool.submit(bench._student_job, "unaligned", bench._slim(run), a, s, scfg, "val")
                for n, run in sets.items() for a in scfg.archs for s in scfg.seeds}
        rows = {n: {a: bench.summarize([jobs[n, a, s].result() for s in scfg.seeds]) for a in scfg.archs}
                for n in sets}
    mse = ((rec - x) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    for n, r in rows.items():
        print(f"{n}: " + ", ".join(f"{a} {bench.fmt(s)}" for a, s in r.items()), flush=True)
    psnr = float((10 * torch.log10(1 / mse)).mean())
    print(f"VAE reconstruction of these seeds: {psnr:.1f} dB PSNR")
    out = Path(__file__).parent / "results" / "vae_floor.json"
    out.write_text(json.dumps({"command": "python benchmarks/vae_floor.py", "split": "val", "ipc": 10,
                               "psnr_db": psnr, "students": rows}, indent=1))


if __name__ == "__main__":
    main()
