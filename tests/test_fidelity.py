import math

import pytest
import torch

from adaptive_dd.fidelity import ModelLoadError, fidelity, kl_per_sample, load_teacher


def test_fidelity_is_zero_for_identical_images_and_negative_otherwise(tiny_teacher):
    seeds = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    logits = tiny_teacher.logits(seeds)
    assert fidelity(logits, tiny_teacher.logits(seeds.clone())) == 0.0
    other = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    assert fidelity(logits, tiny_teacher.logits(other)) < -1e-4


def test_kl_direction_and_value_match_a_hand_computation():
    p = torch.tensor([[math.log(0.7), math.log(0.3)]])
    q = torch.tensor([[math.log(0.5), math.log(0.5)]])
    expected = 0.7 * math.log(0.7 / 0.5) + 0.3 * math.log(0.3 / 0.5)  # KL(P_orig || P_gen)
    assert float(kl_per_sample(p, q)) == pytest.approx(expected)
    assert fidelity(torch.cat([p, p]), torch.cat([q, p])) == pytest.approx(-expected / 2)


def test_teacher_preprocessing_accepts_any_size_and_channels(tiny_teacher):
    gray = torch.rand(2, 1, 8, 8)
    rgb = gray.expand(-1, 3, -1, -1)
    torch.testing.assert_close(tiny_teacher.logits(gray), tiny_teacher.logits(rgb))
    assert tiny_teacher.features(gray).shape[0] == 2


def test_missing_or_mismatched_teacher_files_fail_naming_the_file(tmp_path, tiny_teacher_dir):
    (tmp_path / "t").mkdir()
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        (tmp_path / "t" / "config.json").write_text((tiny_teacher_dir / "config.json").read_text())
        load_teacher(str(tmp_path / "t"))
    bad = tmp_path / "t" / "model.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="does not load"):
        load_teacher(str(tmp_path / "t"))


def test_bundled_uci_teacher_loads_and_classifies_its_test_split():
    from adaptive_dd.data import load_dataset

    teacher = load_teacher("uci-digits")
    test = load_dataset("uci-digits", "test")
    pred = teacher.logits(test.tensor(range(len(test)), 32, 1)).argmax(1).numpy()
    assert (pred == test.labels).mean() >= 0.97


def test_timm_name_with_local_checkpoint_loads_through_timm(tmp_path):
    """`NAME:CHECKPOINT` is timm.create_model(NAME, checkpoint_path=...), with timm's own preprocessing config."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    save_file(model.state_dict(), str(tmp_path / "ckpt.safetensors"))
    teacher = load_teacher(f"resnet10t:{tmp_path / 'ckpt.safetensors'}", num_classes=10)
    # timm's own eval config for resnet10t: test_input_size 224 (its train size is 176), ImageNet mean/std
    assert teacher.config.input_size == 224 and teacher.config.in_chans == 3
    assert teacher.config.mean == list(model.pretrained_cfg["mean"])
    x = torch.rand(2, 1, 16, 16)
    model.eval()
    with torch.no_grad():
        expected = model(teacher.preprocess(x))
    torch.testing.assert_close(teacher.logits(x), expected)
    with pytest.raises(ModelLoadError, match="missing.safetensors is missing"):
        load_teacher(f"resnet10t:{tmp_path / 'missing.safetensors'}", num_classes=10)


def _view(logits, feats):
    from adaptive_dd.fidelity import Embedding

    return Embedding(torch.tensor(logits, dtype=torch.float32), torch.tensor(feats, dtype=torch.float32))


def test_objectives_match_hand_computations():
    import math

    from adaptive_dd.fidelity import Objective

    seeds = _view([[2.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [3.0, 4.0]])
    gen = _view([[1.0, 0.0], [0.0, 3.0]], [[0.6, 0.8], [3.0, 4.0]])

    def kl(p, q, t):
        ps = [math.exp(v / t) / sum(math.exp(u / t) for u in p) for v in p]
        qs = [math.exp(v / t) / sum(math.exp(u / t) for u in q) for v in q]
        return sum(a * math.log(a / b) for a, b in zip(ps, qs))

    want_kl = -(kl([2, 0], [1, 0], 2.0) + kl([0, 1], [0, 3], 2.0)) / 2
    assert Objective("kl", temperature=2.0)(seeds, gen, 1) == pytest.approx(want_kl, rel=1e-6)

    def p1(row, t):
        return math.exp(row[1] / t) / sum(math.exp(v / t) for v in row)

    want_conf = (p1([1, 0], 20) + p1([0, 3], 20)) / 2 - (p1([2, 0], 20) + p1([0, 1], 20)) / 2
    assert Objective("confidence")(seeds, gen, 1) == pytest.approx(want_conf, abs=1e-6)
    # novelty: the seeds are 5 apart; image 0 moved 1 (0.2 spacings), image 1 did not move
    want_nov = -(kl([2, 0], [1, 0], 1.0) + kl([0, 1], [0, 3], 1.0)) / 2 + 0.5 * (0.2 + 0.0) / 2
    assert Objective("kl_novelty", novelty_weight=0.5)(seeds, gen, 1) == pytest.approx(want_nov, rel=1e-6)

    # each seed's term, whose mean is f: what the "one_se" choice compares seed by seed
    want = {"kl": [-kl([2, 0], [1, 0], 1.0), -kl([0, 1], [0, 3], 1.0)],
            "confidence": [p1([1, 0], 20) - (p1([2, 0], 20) + p1([0, 1], 20)) / 2,
                           p1([0, 3], 20) - (p1([2, 0], 20) + p1([0, 1], 20)) / 2],
            "kl_novelty": [-kl([2, 0], [1, 0], 1.0) + 0.5 * 0.2, -kl([0, 1], [0, 3], 1.0)]}
    for name, terms in want.items():
        objective = Objective(name, novelty_weight=0.5)
        scores = objective.scores(seeds, gen, 1)
        assert scores.tolist() == pytest.approx(terms, abs=1e-6)
        assert float(scores.mean()) == pytest.approx(objective(seeds, gen, 1), abs=1e-7)


def test_kl_rewards_a_copy_and_kl_novelty_does_not():
    from adaptive_dd.fidelity import Objective

    seeds = _view([[3.0, 0.0, 0.0], [2.5, 0.5, 0.0]], [[0.0, 0.0], [4.0, 0.0]])
    copy = seeds
    edit = _view([[2.9, 0.1, 0.0], [2.4, 0.5, 0.1]], [[3.0, 0.0], [4.0, 4.0]])
    assert Objective("kl")(seeds, copy, 0) == 0.0 > Objective("kl")(seeds, edit, 0)
    assert Objective("kl_novelty")(seeds, edit, 0) > Objective("kl_novelty")(seeds, copy, 0) == 0.0
    far = _view([[2.9, 0.1, 0.0], [2.4, 0.5, 0.1]], [[300.0, 0.0], [4.0, 400.0]])
    assert Objective("kl_novelty")(seeds, far, 0) == pytest.approx(
        Objective("kl")(seeds, far, 0) + 1.0)  # novelty is capped at one seed spacing


def test_a_lone_seed_has_no_spacing_so_kl_novelty_is_plain_kl():
    """IPC 1: with one seed there is no spacing to measure an edit against; a stand-in spacing (its feature norm)
    never reaches the cap and always paid for the largest edit."""
    from adaptive_dd.fidelity import Objective

    seed = _view([[3.0, 0.0, 0.0]], [[1.0, 0.0]])
    for gen in (_view([[2.9, 0.1, 0.0]], [[1.5, 0.2]]), _view([[0.5, 2.0, 0.0]], [[40.0, 9.0]])):
        assert Objective("kl_novelty")(seed, gen, 0) == pytest.approx(Objective("kl")(seed, gen, 0), abs=0)


@pytest.mark.parametrize("kw,match", [({"name": "mmd"}, "unknown objective 'mmd'"),
                                      ({"temperature": -1.0}, "temperature must be a positive number"),
                                      ({"novelty_weight": float("nan")}, "novelty weight must be >= 0")])
def test_bad_objective_settings_are_named(kw, match):
    from adaptive_dd.fidelity import Objective

    with pytest.raises(ValueError, match=match):
        Objective(**kw)


def test_embed_gives_the_logits_and_features_of_one_pass(tiny_teacher):
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    view = tiny_teacher.embed(x)
    torch.testing.assert_close(view.logits, tiny_teacher.logits(x))
    torch.testing.assert_close(view.features, tiny_teacher.features(x))
