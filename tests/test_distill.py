import itertools
import json

import numpy as np
import pytest
import torch

from adaptive_dd.bo import Observation, choose
from adaptive_dd.config import BOConfig, ConfigError, DistillConfig, RepulsionConfig, SamplerConfig
from adaptive_dd.distill import BatchDone, BOStep, ClassDone, Distiller, Searched
from adaptive_dd.export import ExportError, export


def _config(**kw):
    base = dict(data="uci-digits", classes=["0", "1", "2"], ipc=5, m_seed=3, seed=7,
                sampler=SamplerConfig(steps=6), repulsion=RepulsionConfig(weight=1.0),
                bo=BOConfig(betas=(0.0, 1.0, 2.0), gammas=(0.5, 0.7, 1.0), budget=3, q=1,
                            mode="paper"))
    base.update(kw)
    return DistillConfig(**base)


@pytest.fixture(scope="module")
def distiller(tiny_backend, tiny_teacher):
    return Distiller(_config(), backend=tiny_backend, teacher=tiny_teacher)


def test_event_stream_follows_algorithm_1(distiller):
    events = list(distiller.run())
    kinds = [type(e).__name__ for e in events]
    # per class: 2 batches (3 + 2 seeds), each 3 BO steps then BatchDone; then ClassDone; RunDone last
    per_class = (["BOStep"] * 3 + ["BatchDone"]) * 2 + ["ClassDone"]
    assert kinds == per_class * 3 + ["RunDone"]
    steps = [e for e in events if isinstance(e, BOStep)]
    assert all(e.posterior.mean.shape == (3, 3) for e in steps)
    assert [e.evaluations for e in steps[:3]] == [1, 2, 3]
    for e in events:
        if isinstance(e, BatchDone):
            assert (e.beta, e.gamma, e.f_proxy) == max(((o.beta, o.gamma, o.f) for o in e.observations),
                                                       key=lambda t: t[2])
            assert e.images.shape == (len(e.seed_ids), 1, 8, 8)
    done = [e for e in events if isinstance(e, ClassDone)]
    assert [d.n_images for d in done] == [5, 5, 5] and not any(d.wrapped for d in done)
    assert events[-1].n_images == 15


def test_seeds_are_drawn_without_replacement_from_the_train_split(distiller):
    from adaptive_dd.data import load_split

    train = {f"uci-digits/{i}" for i in load_split("uci-digits")["train"]}
    for name in distiller.classes:
        plan, wrapped = distiller.seed_plan(name)
        ids = [distiller.dataset.ids[i] for batch in plan for i in batch]
        assert len(ids) == len(set(ids)) == 5 and set(ids) <= train and not wrapped
        assert all(distiller.dataset.labels[i] == int(name) for batch in plan for i in batch)


def _export(distiller, out, **kw):
    cfg = distiller.config
    return list(export(distiller.run(), out, cfg, distiller.dataset.classes, **kw))


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_holds_exactly_ipc_per_class_and_reruns_byte_identical(distiller, tmp_path):
    _export(distiller, tmp_path / "a", make_zip=True)
    _export(distiller, tmp_path / "b")
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a == b
    manifest = json.loads(a["manifest.json"])
    for name in ("0", "1", "2"):
        assert sorted(k for k in a if k.startswith(f"{name}/")) == [f"{name}/{i:04d}.png" for i in range(5)]
    assert len(manifest["images"]) == 15 and manifest["class_order"][:3] == ["0", "1", "2"]
    assert {i["file"] for i in manifest["images"]} == {k for k in a if k.endswith(".png")}
    assert all(len(b["history"]) == 3 for b in manifest["batches"])
    for b in manifest["batches"]:  # the manifest alone gives each batch's point again, under its choice rule
        obs = [Observation(h["beta"], h["gamma"], h["f"], h["step"], (0, 0), tuple(h["scores"])) for h in b["history"]]
        assert all(len(h["scores"]) == len(b["seed_ids"]) for h in b["history"])  # paper mode: every seed
        chosen = choose(obs, manifest["config"]["bo"]["choice"])
        assert (chosen.beta, chosen.gamma, chosen.f) == (b["beta"], b["gamma"], b["f_proxy"])
    f_proxy = {(b["class"], b["batch"]): b["f_proxy"] for b in manifest["batches"]}
    assert all(i["batch_f_proxy"] == f_proxy[i["class"], i["batch"]] and "f" not in i for i in manifest["images"])
    import zipfile

    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        assert sum(n.endswith(".png") for n in zf.namelist()) == 15
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_same_seed_same_images_whatever_the_batch_size(tiny_backend, tiny_teacher):
    """Slot k of a class has its own noise seed: with fixed (beta, gamma) and no repulsion, m_seed is irrelevant."""
    one = _config(m_seed=5, bo=BOConfig(betas=(1.0,), gammas=(0.7,), budget=1), repulsion=RepulsionConfig(weight=0))
    two = _config(m_seed=2, bo=BOConfig(betas=(1.0,), gammas=(0.7,), budget=1), repulsion=RepulsionConfig(weight=0))
    imgs = []
    for cfg in (one, two):
        d = Distiller(cfg, backend=tiny_backend, teacher=tiny_teacher)
        imgs.append(torch.cat([e.images for e in d.distill_class("1") if isinstance(e, BatchDone)]))
    torch.testing.assert_close(imgs[0], imgs[1], rtol=0, atol=1e-5)


def test_a_failed_run_leaves_nothing_behind(distiller, tmp_path):
    def crashing():
        for i, ev in enumerate(distiller.run()):
            if i == 6:
                raise RuntimeError("boom")
            yield ev

    with pytest.raises(RuntimeError, match="boom"):
        list(export(crashing(), tmp_path / "out", distiller.config, distiller.dataset.classes))
    assert list(tmp_path.iterdir()) == []

    gen = export(distiller.run(), tmp_path / "out", distiller.config, distiller.dataset.classes)
    next(gen), next(gen)
    gen.close()  # a consumer that stops early (the app's Stop button)
    assert list(tmp_path.iterdir()) == []


def test_existing_foreign_output_is_refused_and_own_output_replaced(distiller, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(ExportError, match="not an adaptive_dd export"):
        _export(distiller, out)
    assert (out / "thesis.tex").read_text() == "precious"
    _export(distiller, out, overwrite=True)
    assert not (out / "thesis.tex").exists()
    _export(distiller, out)  # an earlier export of ours is replaced without --overwrite
    assert len(json.loads((out / "manifest.json").read_text())["images"]) == 15


def test_small_class_wraps_around_and_says_so(tiny_backend, tiny_teacher, tmp_path):
    from PIL import Image

    for c, n in (("0", 2), ("1", 4)):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), 40 * i + 20, np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    cfg = _config(data=str(tmp_path / "data"), classes=None, ipc=3, m_seed=3, teacher="x")
    d = Distiller(cfg, backend=tiny_backend, teacher=tiny_teacher)
    plan, wrapped = d.seed_plan("0")
    ids = [d.dataset.ids[i] for i in plan[0]]
    assert wrapped and len(ids) == 3 and set(ids) == {"0/0.png", "0/1.png"}
    assert d.seed_plan("1")[1] is False


def test_the_fast_mode_groups_classes_on_a_cpu_only():
    """class_group 0 (the fast mode's) resolves by device: 4 on a CPU, whose small UNet calls cost per call, 1 on an
    accelerator, where a call costs by rows and would hold the group's activations; the paper mode runs classes
    alone and an explicit value stands."""
    assert DistillConfig(device="cpu").validate().bo.class_group == 4
    assert DistillConfig(device="cuda:1").validate().bo.class_group == 1
    assert DistillConfig(device="cpu", bo=BOConfig(mode="paper")).validate().bo.class_group == 1
    assert DistillConfig(device="cuda", bo=BOConfig(class_group=3)).validate().bo.class_group == 3


@pytest.mark.parametrize("kw,match", [
    (dict(ipc=0), "IPC"), (dict(m_seed=0), "m_seed"),
    (dict(bo=BOConfig(gammas=(0.0, 0.5))), "gamma"), (dict(bo=BOConfig(gammas=(1.2,))), "gamma"),
    (dict(bo=BOConfig(betas=(-1.0, 2.0))), "beta"), (dict(repulsion=RepulsionConfig(weight=-0.1)), "lambda"),
    (dict(repulsion=RepulsionConfig(bandwidth=0.0)), "bandwidth"),
    (dict(sampler=SamplerConfig(steps=2), bo=BOConfig(gammas=(0.3,))), "no denoising step"),
    (dict(bo=BOConfig(mode="quick")), "BO mode must be one of paper, fast, got 'quick'"),
    (dict(bo=BOConfig(scope="epoch")), "BO scope must be one of batch, class, run, got 'epoch'"),
    (dict(bo=BOConfig(kernel_scope="run")), "kernel scope must be one of batch, class, got 'run'"),
    (dict(bo=BOConfig(warm_design="explore")),
     "warm design must be one of top, ucb, low, top_then_ucb, top_then_low, got 'explore'"),
    (dict(bo=BOConfig(choice="mean")), r"choice \(the point the final pass runs at\) must be one of best, one_se, "
                                       "got 'mean'"),
    (dict(bo=BOConfig(design_q=-2)), "design q .* must be >= 0"),
    (dict(bo=BOConfig(proxy_seeds=-1)), "proxy seeds must be >= 0"),
    (dict(bo=BOConfig(warm_budget=-1)), "warm budget"),
    (dict(bo=BOConfig(first_warm_budget=-1)), "first warm budget .* must be >= 0"),
    (dict(bo=BOConfig(freeze_after=-1)), "freeze_after"),
    (dict(bo=BOConfig(q=0)), "q must be >= 1"),
    (dict(bo=BOConfig(class_group=-1)), "class group .* must be >= 0"),
])
def test_bad_settings_are_named(kw, match):
    with pytest.raises(ConfigError, match=match):
        _config(**kw).validate()


def test_q_candidates_share_one_sampler_batch_and_match_single_runs(tiny_backend, tiny_teacher):
    cfg = _config(bo=BOConfig(betas=(0.0, 1.0, 2.0), gammas=(0.5, 0.7, 1.0), budget=4, q=2,
                                  mode="paper"))
    d = Distiller(cfg, backend=tiny_backend, teacher=tiny_teacher)
    plan, _ = d.seed_plan("4")
    images = d.dataset.tensor(plan[0], 8, 1)
    events = list(d.run_batch(images, ["a", "b", "c"], "4"))
    steps = [e for e in events if isinstance(e, BOStep)]
    assert [len(e.candidates) for e in steps] == [2, 2] and steps[-1].evaluations == 4
    from adaptive_dd.sampler import noise_seed

    seeds = [noise_seed(cfg.seed, 4, s) for s in range(3)]
    for k, o in enumerate(steps[1].candidates):
        alone = d.generate(images, "4", o.beta, o.gamma, seeds, proxy=True).images
        torch.testing.assert_close(steps[1].proxy_images[k], alone, rtol=0, atol=1e-5)


def test_a_one_point_grid_skips_bo_and_regenerates_at_that_point(tiny_backend, tiny_teacher):
    """The fixed-parameter baselines: nothing to choose, so no proxy runs and f_proxy is None."""
    from adaptive_dd.sampler import noise_seed

    dist = Distiller(_config(classes=["1"], ipc=3, bo=BOConfig(betas=(2.0,), gammas=(0.7,), budget=8)),
                     backend=tiny_backend, teacher=tiny_teacher)
    events = list(dist.run())
    assert [type(e).__name__ for e in events] == ["BatchDone", "ClassDone", "RunDone"]
    done = events[0]
    assert (done.beta, done.gamma, done.f_proxy, done.observations) == (2.0, 0.7, None, [])
    plan, _ = dist.seed_plan("1")
    seeds = dist.dataset.tensor(plan[0], tiny_backend.image_size, tiny_backend.channels)
    same = dist.generate(seeds, "1", 2.0, 0.7, [noise_seed(7, 1, k) for k in done.slots], proxy=False)
    torch.testing.assert_close(done.images, same.images, rtol=0, atol=0)


def test_regenerate_is_the_final_pass_and_the_summary_is_typed(distiller):
    """Distiller.regenerate at (beta*, gamma*) and the batch's slots gives the BatchDone's images and numbers."""
    from adaptive_dd.distill import BatchSummary, seed_plan

    idx = distiller.seed_plan("1")[0][0]
    images = distiller.dataset.tensor(idx, distiller.backend.image_size, distiller.backend.channels)
    done = list(distiller.run_batch(images, [str(i) for i in idx], "1", 0))[-1]
    again = distiller.regenerate(images, "1", done.beta, done.gamma, done.slots)
    assert torch.equal(again.images, done.images)
    assert again.f == pytest.approx(done.f_final, abs=1e-6) and again.diversity == pytest.approx(done.diversity)
    plain = distiller.regenerate(images, "1", done.beta, done.gamma, done.slots, weight=0.0)
    assert not torch.equal(plain.images, done.images)  # the run's lambda is 1.0; the override is used
    with pytest.raises(ConfigError, match="bandwidth must be a positive number"):
        distiller.regenerate(images, "1", done.beta, done.gamma, done.slots, bandwidth=-1.0)
    assert done.summary() == BatchSummary(0, done.beta, done.gamma, done.f_proxy, done.f_final)
    assert distiller.n_batches() == 6 and distiller.n_batches(["0"]) == 2  # 5 images in batches of 3
    plan, wrapped = seed_plan(distiller.dataset, "1", 5, 3, 7)
    assert [list(b) for b in plan] == [list(b) for b in distiller.seed_plan("1")[0]] and not wrapped


@pytest.mark.parametrize("objective", ["kl", "confidence", "kl_novelty"])
def test_final_images_are_made_at_the_best_observed_point_of_the_objective(tiny_backend, tiny_teacher, objective):
    """BO over a real grid: the batch is regenerated at the OBSERVED argmax of the configured objective (not the
    GP's), f_final is that objective on the final images, and the final images equal a direct full-sampler call."""
    from adaptive_dd.sampler import noise_seed

    cfg = _config(classes=["6"], ipc=3, bo=BOConfig(betas=(0.0, 1.0, 2.0), gammas=(0.5, 0.7, 1.0), budget=5,
                                                     objective=objective, mode="paper"))
    dist = Distiller(cfg, backend=tiny_backend, teacher=tiny_teacher)
    events = list(dist.run())
    done = next(e for e in events if isinstance(e, BatchDone))
    best = max(done.observations, key=lambda o: o.f)
    assert (done.beta, done.gamma, done.f_proxy) == (best.beta, best.gamma, best.f)
    assert len({(o.beta, o.gamma) for o in done.observations}) == 5
    seeds = [noise_seed(cfg.seed, 6, k) for k in done.slots]
    same = dist.generate(done.seed_images, "6", best.beta, best.gamma, seeds, proxy=False)
    torch.testing.assert_close(done.images, same.images, rtol=0, atol=0)
    view = tiny_teacher.embed(done.seed_images)
    assert done.f_final == pytest.approx(dist.objective(view, tiny_teacher.embed(done.images), 6), abs=1e-6)
    assert dist.describe()["objective"] == objective


def test_proxies_run_on_the_first_proxy_seeds_only_at_the_proxy_stride(tiny_backend, tiny_teacher, monkeypatch):
    """Every UNet call of the search has 2 x proxy_seeds rows (CFG), and the proxies equal a direct img2img call on
    the batch's first proxy_seeds seeds at steps // proxy_steps stride without repulsion."""
    from adaptive_dd.sampler import img2img, noise_seed

    cfg = _config(classes=["6"], ipc=3, sampler=SamplerConfig(steps=6, proxy_steps=3),
                  bo=BOConfig(betas=(0.0, 1.0, 2.0), gammas=(0.5, 0.7, 1.0), budget=3, q=1, proxy_seeds=2,
                              mode="paper"))
    dist = Distiller(cfg, backend=tiny_backend, teacher=tiny_teacher)
    images = dist.dataset.tensor(dist.seed_plan("6")[0][0], 8, 1)
    rows: list[int] = []
    predict = tiny_backend.predict_noise
    monkeypatch.setattr(tiny_backend, "predict_noise", lambda x, *a, **k: rows.append(len(x)) or predict(x, *a, **k))
    events = list(dist.run_batch(images, ["a", "b", "c"], "6"))
    monkeypatch.undo()
    steps = [e for e in events if isinstance(e, BOStep)]
    final_steps = int(6 * events[-1].gamma)
    assert len(steps) == 3 and all(e.proxy_images.shape[1] == 2 for e in steps)
    assert set(rows[:-final_steps]) == {4} and rows[-final_steps:] == [6] * final_steps, rows  # 2 or 3 seeds x CFG
    seeds = [noise_seed(cfg.seed, 6, s) for s in range(3)]
    for e in steps:
        (o,) = e.candidates
        direct = img2img(tiny_backend, images[:2], ["6", "6"], o.beta, o.gamma, seeds[:2], steps=6, stride=2,
                         repulsion_weight=0.0)
        torch.testing.assert_close(e.proxy_images[0], direct.images, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["paper", "fast"])
def test_a_batch_first_round_rides_in_the_previous_final_pass_and_changes_nothing(tiny_backend, tiny_teacher,
                                                                                   monkeypatch, mode):
    """Within a class, run() puts every mini-batch's first proxy round in the previous batch's final sampler call:
    one call fewer per batch after a class's first, and the same observations and images as each batch run alone
    (run_batch) from the same prior. The split of the time counts no second twice."""
    import adaptive_dd.distill as distill_module

    cfg = _config(classes=["0", "1"], ipc=5, bo=BOConfig(betas=(0.0, 1.0, 2.0), gammas=(0.5, 0.7, 1.0), budget=3,
                                                         q=2, mode=mode, proxy_seeds=2))
    dist = Distiller(cfg, backend=tiny_backend, teacher=tiny_teacher)
    calls: list[int] = []
    real = distill_module.img2img_jobs
    monkeypatch.setattr(distill_module, "img2img_jobs", lambda b, jobs, **k: calls.append(len(jobs)) or real(b, jobs, **k))
    events = list(dist.run())
    monkeypatch.undo()
    done = [e for e in events if isinstance(e, BatchDone)]
    rounds = sum(isinstance(e, BOStep) for e in events)
    assert [(e.class_name, e.batch_index) for e in done] == [("0", 0), ("0", 1), ("1", 0), ("1", 1)]
    assert calls.count(2) == 2 and len(calls) == rounds + len(done) - 2, calls

    history: dict = {}
    for e in done:
        prior = dist.prior(e.class_name, e.batch_index, history)
        kernel_prior = dist.kernel_prior(e.class_name, e.batch_index, history)
        assert bool(kernel_prior) == (mode == "fast" and e.batch_index > int(e.class_name == "0"))
        *alone_steps, alone = list(dist.run_batch(e.seed_images, e.seed_ids, e.class_name, e.batch_index, e.slots,
                                                  prior, kernel_prior))
        run_steps = [s for s in events if isinstance(s, BOStep) and (s.class_name, s.batch_index) ==
                     (e.class_name, e.batch_index)]
        for a, b in zip(alone_steps, run_steps, strict=True):  # the run's GP keeps the kernel run_batch is given
            assert (a.search.kernel is None) == (b.search.kernel is None)
            assert a.search.kernel is None or np.array_equal(a.search.kernel.theta, b.search.kernel.theta)
        history.setdefault(e.class_name, {})[e.batch_index] = Searched(
            [(o.beta, o.gamma, o.f) for o in alone.observations], alone.beta, alone.gamma)
        assert [(o.index, o.f) for o in alone.observations] == [(o.index, o.f) for o in e.observations]
        torch.testing.assert_close(alone.images, e.images, rtol=0, atol=0)
    run_done = events[-1]
    assert run_done.seconds_bo + run_done.seconds_final <= run_done.seconds


def test_rides_keep_sharded_and_resumed_runs_byte_identical_when_bits_depend_on_batch_mates(tiny_backend,
                                                                                           tiny_teacher, monkeypatch):
    """A backbone whose output for a sample depends on the rest of its batch (as GPU kernels chosen by batch size
    may make it): two processes (the second searches the pilot class itself), a run resumed after class 0's first
    batch and one resumed after class 1 too (whose first round shares a sampler call with class 2's: class group 2)
    still give the same observations and images as one uninterrupted process."""
    from adaptive_dd.distill import Progress, Shard

    predict = tiny_backend.predict_noise
    monkeypatch.setattr(tiny_backend, "predict_noise", lambda x, t, c: predict(x, t, c) + 1e-3 * x.mean())
    cfg = _config(classes=["0", "1", "2", "3"], ipc=5, bo=BOConfig(betas=(0.0, 1.0, 2.0), gammas=(0.5, 0.7, 1.0),
                                                                   budget=3, q=2, mode="fast", proxy_seeds=2,
                                                                   class_group=2))

    def batches(events):
        return {(e.class_name, e.batch_index): e for e in events if isinstance(e, BatchDone)}

    def observed(e):
        return Searched([(o.beta, o.gamma, o.f) for o in e.observations], e.beta, e.gamma)

    one = batches(Distiller(cfg, backend=tiny_backend, teacher=tiny_teacher).run())
    two = {}
    for index in (0, 1):
        two.update(batches(Distiller(cfg, backend=tiny_backend, teacher=tiny_teacher).run(Shard(index, 2))))
    first = one[("0", 0)]
    progress = Progress(batches={"0": {0: first.summary()}}, history={"0": {0: observed(first)}})
    resumed = batches(Distiller(cfg, backend=tiny_backend, teacher=tiny_teacher).run(progress=progress))
    class_1 = [one[("1", b)] for b in (0, 1)]
    progress = Progress(classes={"1"}, batches={"0": {0: first.summary()}, "1": {e.batch_index: e.summary()
                                                                                  for e in class_1}},
                        history={"0": {0: observed(first)}, "1": {e.batch_index: observed(e) for e in class_1}})
    without_1 = batches(Distiller(cfg, backend=tiny_backend, teacher=tiny_teacher).run(progress=progress))
    assert set(two) == set(one) and set(resumed) == set(one) - {("0", 0)}
    assert set(without_1) == set(one) - {("0", 0), ("1", 0), ("1", 1)}
    for other in (two, resumed, without_1):
        for key, e in other.items():
            assert [(o.index, o.f) for o in e.observations] == [(o.index, o.f) for o in one[key].observations], key
            assert torch.equal(e.images, one[key].images), key


def test_a_unit_of_classes_runs_its_first_rounds_in_one_sampler_call(tiny_backend, tiny_teacher, monkeypatch):
    """With class_group 2, the first proxy rounds of classes 1 and 2, and of 3 and 4, each share one sampler call (the
    pilot runs alone): two calls fewer than with class_group 1, the same observations and the same images, and the
    time of a shared call split over its rounds."""
    import adaptive_dd.distill as distill_module

    real = distill_module.img2img_jobs
    runs = {}
    for group in (1, 2):
        cfg = _config(classes=["0", "1", "2", "3", "4"], ipc=3, bo=BOConfig(
            betas=(0.0, 1.0, 2.0), gammas=(0.5, 0.7, 1.0), budget=3, q=2, mode="fast", proxy_seeds=2,
            class_group=group))
        dist = Distiller(cfg, backend=tiny_backend, teacher=tiny_teacher)
        calls: list[int] = []
        monkeypatch.setattr(distill_module, "img2img_jobs",
                            lambda b, jobs, **k: calls.append(len(jobs)) or real(b, jobs, **k))
        assert dist.units() == ([["0"], ["1"], ["2"], ["3"], ["4"]] if group == 1 else [["0"], ["1", "2"], ["3", "4"]])
        runs[group] = (calls, [e for e in dist.run() if isinstance(e, BatchDone)])
    (calls_1, alone), (calls_2, grouped) = runs[1], runs[2]
    assert calls_2.count(2) == 2 and calls_1.count(2) == 0 and len(calls_2) == len(calls_1) - 2, (calls_1, calls_2)
    for a, g in zip(alone, grouped, strict=True):
        assert (a.class_name, a.beta, a.gamma) == (g.class_name, g.beta, g.gamma)
        np.testing.assert_allclose([o.f for o in g.observations], [o.f for o in a.observations], rtol=0, atol=1e-6)
        torch.testing.assert_close(g.images, a.images, rtol=0, atol=0)
        assert g.seconds_bo > 0


def test_processes_are_dealt_whole_units_of_classes(tiny_backend, tiny_teacher):
    """Sharding deals units (the pilot, then class_group classes), never splitting one, so a unit's shared first-round
    call runs in one process; a resumed run deals the units with classes left, and class_group 1 deals classes."""
    from adaptive_dd.distill import Progress, Shard

    names = [str(i) for i in range(10)]

    def dist(group):
        return Distiller(_config(classes=names, bo=BOConfig(betas=(0.0, 1.0), gammas=(0.5, 1.0), mode="fast",
                                                            class_group=group)),
                         backend=tiny_backend, teacher=tiny_teacher)

    four = dist(4)
    assert four.units() == [["0"], ["1", "2", "3", "4"], ["5", "6", "7", "8"], ["9"]]
    assert four.assigned(Shard(0, 2)) == ["0", "5", "6", "7", "8"]
    assert four.assigned(Shard(1, 2)) == ["1", "2", "3", "4", "9"]
    left = Progress(classes={"0", "2", "9"})
    assert four.assigned(Shard(0, 2), left) == ["1", "3", "4"]
    assert four.assigned(Shard(1, 2), left) == ["5", "6", "7", "8"]
    assert dist(1).assigned(Shard(1, 3)) == ["1", "4", "7"]


def test_a_cold_search_runs_its_whole_design_in_one_sampler_call(tiny_backend, tiny_teacher, monkeypatch):
    """The initial design needs no observation, so design_q puts it in one round (one sampler call), then rounds of
    q follow; design_q 0 keeps rounds of q. Either way the search evaluates the GP's design first, with the same f,
    and no point twice."""
    import adaptive_dd.distill as distill_module
    from adaptive_dd.bo import GridBO
    from adaptive_dd.sampler import noise_seed

    betas, gammas = (0.0, 1.0, 2.0), (0.5, 0.7, 1.0)
    real = distill_module.img2img_jobs
    observed = {}
    for design_q, rounds in ((4, [4, 2, 1]), (0, [2, 2, 2, 1])):
        cfg = _config(classes=["0"], ipc=3, bo=BOConfig(betas=betas, gammas=gammas, budget=7, q=2, n_initial=4,
                                                        design_q=design_q, mode="paper", proxy_seeds=2))
        calls: list[int] = []
        monkeypatch.setattr(distill_module, "img2img_jobs",
                            lambda b, jobs, calls=calls, **k: calls.append(sum(len(j.seeds) for j in jobs))
                            or real(b, jobs, **k))
        steps = [e for e in Distiller(cfg, backend=tiny_backend, teacher=tiny_teacher).run() if isinstance(e, BOStep)]
        assert [len(s.candidates) for s in steps] == rounds
        assert calls == [2 * r for r in rounds] + [3]  # a call per round (2 proxy seeds a point), then the final pass
        observed[design_q] = steps[-1].observations
        assert len({o.index for o in observed[design_q]}) == 7
    design = GridBO(betas, gammas, n_initial=4, seed=noise_seed(7, 0, 0, 1))._design
    for obs in observed.values():
        assert [o.index[0] * len(gammas) + o.index[1] for o in obs[:4]] == design
    np.testing.assert_allclose([o.f for o in observed[4][:4]], [o.f for o in observed[0][:4]], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("design", ["top_then_ucb", "top_then_low"])
def test_a_top_then_design_leaves_the_prior_best_points_once_a_class_has_batches_of_its_own(tiny_backend, tiny_teacher,
                                                                                             design):
    """The fast mode's warm designs ("top_then_low", its default): a class's first warm mini-batch evaluates the
    prior's two best points (with first_warm_budget 0, its warm budget of 2); a later one the prior's best and, in
    the same round of q = 2 (one sampler call), GP-UCB's pick ("ucb") or the lowest beta at the best's gamma
    ("low")."""
    default = BOConfig()
    default.resolve()
    assert default.warm_design == "top_then_low"
    cfg = _config(classes=["0", "1"], ipc=6, m_seed=3, bo=BOConfig(
        betas=(0.0, 1.0, 2.0), gammas=(0.5, 0.7, 1.0), budget=4, mode="fast", proxy_seeds=2, early_stop=False,
        first_warm_budget=0, warm_design=design))
    steps, rounds = _warm_rounds(cfg, tiny_backend, tiny_teacher)
    assert [len(r) for r in rounds[("0", 0)]] == [4] and rounds[("1", 1)] == [rounds[("1", 1)][0]]
    pilot_later, = rounds[("0", 1)]  # its prior: the pilot's first batch
    order = _prior_ranking(cfg, steps, ("0", 0))
    assert order[0][0] != 0 and pilot_later[0] == order[0]
    if design == "top_then_low":
        assert pilot_later == [order[0], (0, order[0][1])]
        (best, low), = rounds[("1", 1)]
        assert best[0] == 0 or low == (0, best[1])
    else:
        assert pilot_later[1] != order[1]
    first, = rounds[("1", 0)]  # its prior: the pilot's batches
    assert first == _prior_ranking(cfg, steps, ("0", 0), ("0", 1))[:2]


def test_a_class_first_warm_batch_tries_first_warm_budget_of_the_prior_best_points_in_one_round(tiny_backend,
                                                                                                  tiny_teacher):
    """first_warm_budget: a class's first mini-batch, warm from the pilot's observations alone, evaluates that many
    of the prior's best points, all in one round (they are its design); its later mini-batches, and the pilot's, keep
    warm_budget, and the pilot's first, searched cold, the budget."""
    cfg = _config(classes=["0", "1"], ipc=6, m_seed=3, bo=BOConfig(
        betas=(0.0, 1.0, 2.0), gammas=(0.5, 0.7, 1.0), budget=4, mode="fast", proxy_seeds=2, early_stop=False,
        warm_budget=2, first_warm_budget=3))
    steps, rounds = _warm_rounds(cfg, tiny_backend, tiny_teacher)
    assert {k: [len(r) for r in v] for k, v in rounds.items()} == {("0", 0): [4], ("0", 1): [2], ("1", 0): [3],
                                                                   ("1", 1): [2]}
    first, = rounds[("1", 0)]
    assert first == _prior_ranking(cfg, steps, ("0", 0), ("0", 1))[:3]


def test_no_mini_batch_evaluates_more_points_than_the_budget(tiny_backend, tiny_teacher):
    """The budget bounds every mini-batch: with a budget of 2 the fast mode's first warm budget of 3 and a warm
    budget of 4 give two evaluations, one round of the prior's two best points."""
    cfg = _config(classes=["0", "1"], ipc=6, m_seed=3, bo=BOConfig(
        betas=(0.0, 1.0, 2.0), gammas=(0.5, 0.7, 1.0), budget=2, mode="fast", proxy_seeds=2, early_stop=False,
        warm_budget=4, first_warm_budget=3))
    steps, rounds = _warm_rounds(cfg, tiny_backend, tiny_teacher)
    assert {k: sum(len(r) for r in v) for k, v in rounds.items()} == {("0", 0): 2, ("0", 1): 2, ("1", 0): 2,
                                                                      ("1", 1): 2}
    assert rounds[("1", 0)] == [_prior_ranking(cfg, steps, ("0", 0), ("0", 1))[:2]]


def _warm_rounds(cfg: DistillConfig, backend, teacher) -> tuple[list[BOStep], dict[tuple[str, int], list]]:
    """A run's BO steps, and per (class, mini-batch) the grid indices of each round's candidates."""
    steps = [e for e in Distiller(cfg, backend=backend, teacher=teacher).run() if isinstance(e, BOStep)]
    rounds: dict[tuple[str, int], list] = {}
    for s in steps:
        rounds.setdefault((s.class_name, s.batch_index), []).append([o.index for o in s.candidates])
    return steps, rounds


def _prior_ranking(cfg: DistillConfig, steps: list[BOStep], *keys: tuple[str, int]) -> list[tuple[int, int]]:
    """Grid indices, best first, by the posterior mean of a GP on the observations of those mini-batches."""
    from adaptive_dd.bo import GridBO

    prior = [(o.beta, o.gamma, o.f) for s in steps if (s.class_name, s.batch_index) in keys for o in s.candidates]
    mean = GridBO(cfg.bo.betas, cfg.bo.gammas, prior=prior, freeze_after=4).posterior().mean
    return [np.unravel_index(k, mean.shape) for k in np.argsort(-mean, axis=None, kind="stable")]


@pytest.mark.parametrize("choice", ["best", "one_se"])
def test_the_final_pass_runs_at_the_chosen_point(tiny_backend, tiny_teacher, monkeypatch, choice):
    """Each mini-batch's final pass runs at bo.choose's point of its own observations, each carrying one score per
    proxy seed. With scores that swing from seed to seed by more at each proxy than at the one before, far more than
    any gap (so each pair of points differs in opposite directions on the two seeds, and every point is within one
    standard error of the best), "one_se" is the lowest beta evaluated, and differs from the best observed; a resumed
    run rides its first rounds after the chosen points too (same images)."""
    from adaptive_dd.bo import choose
    from adaptive_dd.distill import Progress
    from adaptive_dd.fidelity import Objective

    swing = itertools.count(1)
    real = Objective.scores
    monkeypatch.setattr(Objective, "scores", lambda self, s, g, t: real(self, s, g, t) + float(next(swing)) *
                        torch.tensor([(-1.0) ** i for i in range(len(s.logits))]))
    cfg = _config(classes=["0", "1"], ipc=6, bo=BOConfig(betas=(0.0, 1.0, 2.0), gammas=(0.5, 0.7, 1.0), budget=4,
                                                         q=2, mode="fast", proxy_seeds=2, choice=choice))
    events = list(Distiller(cfg, backend=tiny_backend, teacher=tiny_teacher).run())
    done = [e for e in events if isinstance(e, BatchDone)]
    assert len(done) == 4 and all(len(o.scores) == 2 for e in done for o in e.observations)
    for e in done:
        c = choose(e.observations, choice)
        assert (e.beta, e.gamma, e.f_proxy) == (c.beta, c.gamma, c.f)
        if choice == "one_se":
            assert e.beta == min(o.beta for o in e.observations)
    moved = [e for e in done if (e.beta, e.gamma) != (max(e.observations, key=lambda o: o.f).beta,
                                                      max(e.observations, key=lambda o: o.f).gamma)]
    assert bool(moved) == (choice == "one_se")
    steps = [s for s in events if isinstance(s, BOStep)]
    assert all(s.chosen is choose(s.observations, choice) for s in steps)

    swing = itertools.count(1)
    first = done[0]
    progress = Progress(batches={"0": {0: first.summary()}}, history={"0": {0: Searched(
        [(o.beta, o.gamma, o.f) for o in first.observations], first.beta, first.gamma)}})
    resumed = [e for e in Distiller(cfg, backend=tiny_backend, teacher=tiny_teacher).run(progress=progress)
               if isinstance(e, BatchDone)]
    assert [(e.beta, e.gamma) for e in resumed] == [(e.beta, e.gamma) for e in done[1:]]
    for a, b in zip(resumed, done[1:], strict=True):
        torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
