"""Evaluation: students with online soft labels, the distilled-set loader and its class-order check."""
import json

import numpy as np
import pytest
import torch

from adaptive_dd.config import BOConfig, DistillConfig, SamplerConfig
from adaptive_dd.data import load_dataset
from adaptive_dd.distill import Distiller
from adaptive_dd.evaluation import (DistilledSet, EvaluationError, StudentConfig, check_class_order, evaluate,
                                    load_distilled, target_test_set)
from adaptive_dd.evaluation.students import augment, build_student, train_student
from adaptive_dd.export import export

FAST = StudentConfig(archs=("resnet10t", "convnext"), seeds=(0, 1), steps=8, batch_size=8)


@pytest.fixture(scope="module")
def exported(tiny_backend, tiny_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("ev") / "set"
    cfg = DistillConfig(data="uci-digits", classes=["3", "1", "7"], ipc=4, m_seed=4, seed=1,
                        sampler=SamplerConfig(steps=6), bo=BOConfig(betas=(1.0, 2.0), gammas=(0.5, 0.9), budget=2))
    dist = Distiller(cfg, backend=tiny_backend, teacher=tiny_teacher)
    for _ in export(dist.run(), out, cfg, dist.dataset.classes, dist.describe()):
        pass
    return out


def test_load_distilled_takes_the_class_order_from_the_manifest(exported):
    dset = load_distilled(exported)
    assert dset.classes == ["3", "1", "7"]  # the configured order, not the sorted folder names
    assert dset.images.shape == (12, 1, 8, 8) and dset.per_class() == [4, 4, 4]
    manifest = json.loads((exported / "manifest.json").read_text())
    first = manifest["images"][0]
    assert dset.labels[0] == ["3", "1", "7"].index(first["class"])


def test_load_distilled_refuses_bad_folders(exported, tmp_path):
    with pytest.raises(EvaluationError, match="no manifest.json"):
        load_distilled(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    manifest = json.loads((exported / "manifest.json").read_text())
    manifest["images"][0]["file"] = "../../etc/passwd"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EvaluationError, match="outside"):
        load_distilled(bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(EvaluationError, match="not a valid manifest"):
        load_distilled(bad)


def test_class_order_must_match_the_teacher(tiny_teacher):
    check_class_order([str(i) for i in range(10)], tiny_teacher)
    with pytest.raises(EvaluationError, match="position 3"):
        check_class_order(["0", "1", "2", "4", "3", "5", "6", "7", "8", "9"], tiny_teacher)
    with pytest.raises(EvaluationError, match="position 3"):
        check_class_order(["0", "1", "2"], tiny_teacher)


def test_augment_is_the_identity_at_full_scale_without_rotation():
    x = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    cfg = StudentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), max_rotation=0.0, input_size=16)
    torch.testing.assert_close(augment(x, cfg, torch.Generator().manual_seed(1)), x, atol=1e-5, rtol=0)
    moved = augment(x, StudentConfig(input_size=16), torch.Generator().manual_seed(1))
    assert moved.shape == x.shape and not torch.allclose(moved, x, atol=1e-2)


def test_students_resolve_to_two_families():
    r, c = build_student("resnet10t", 10, 1), build_student("convnext", 10, 1)
    assert type(r).__name__ == "ResNet" and type(c).__name__ == "ConvNeXt"
    for m in (r, c):
        assert 0.8e6 < sum(p.numel() for p in m.parameters()) < 1.5e6
    with pytest.raises(ValueError, match="unknown student"):
        StudentConfig(archs=("no_such_net",)).validate()
    with pytest.raises(ValueError, match="must be >= 32"):
        StudentConfig(input_size=16).validate()


def test_student_training_is_deterministic_and_learns_the_teacher(tiny_teacher):
    """Distillation of the teacher's soft labels: after training, the student agrees with the teacher on its
    training images far above chance (0.1); the same seed gives the same weights."""
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    cfg = StudentConfig(steps=60, batch_size=20, input_size=16, lr=3e-3)
    a = train_student(x, tiny_teacher, "resnet10t", 0, cfg)
    b = train_student(x, tiny_teacher, "resnet10t", 0, cfg)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    with torch.no_grad():
        xs = torch.nn.functional.interpolate(x, size=16, mode="bilinear", antialias=True)
        agree = (a((xs - 0.5) / 0.5).argmax(1) == tiny_teacher.logits(x).argmax(1)).float().mean()
    assert agree >= 0.5


def test_evaluate_reports_students_and_quality(exported, tiny_teacher):
    dset = load_distilled(exported)
    test = load_dataset("uci-digits", "test")
    with pytest.raises(EvaluationError, match="class order"):
        evaluate(dset, tiny_teacher, test, FAST)  # 3 classes in another order than the teacher's 10
    full = DistilledSet(dset.images.repeat(4, 1, 1, 1)[:40], torch.arange(40) % 10, [str(i) for i in range(10)])
    report = evaluate(full, tiny_teacher, test, FAST)
    for arch in FAST.archs:
        s = report["students"][arch]
        assert len(s["acc"]) == 2 and all(0 <= v <= 1 for v in s["acc"])
        assert s["mean"] == pytest.approx(np.mean(s["acc"])) and s["std"] == pytest.approx(np.std(s["acc"]))
    q = report["quality"]
    assert q["n_real"] == len(test) and q["n_fake"] == 40 and "teacher penultimate" in q["feature_space"]
    assert 1 <= q["vendi_2"] <= q["vendi_1"] <= 40 and 0 <= q["precision"] <= 1


def test_target_test_set_maps_labels_to_the_teacher_order(tiny_teacher):
    test = load_dataset("uci-digits", "test")
    images, labels = target_test_set(test, tiny_teacher)
    assert images.shape == (len(test), 1, 16, 16)
    assert labels.tolist() == [int(test.classes[y]) for y in test.labels]


def test_cli_evaluate(tiny_backend, tiny_teacher, tiny_teacher_dir, exported, tmp_path, capsys):
    from adaptive_dd.cli import main

    out = tmp_path / "all"
    cfg = DistillConfig(data="uci-digits", ipc=2, m_seed=2, seed=0, sampler=SamplerConfig(steps=4),
                        bo=BOConfig(betas=(1.0,), gammas=(0.5,)))
    dist = Distiller(cfg, backend=tiny_backend, teacher=tiny_teacher)
    for _ in export(dist.run(), out, cfg, dist.dataset.classes, dist.describe()):
        pass
    rc = main(["evaluate", "--distilled", str(out), "--data", "uci-digits", "--teacher", str(tiny_teacher_dir),
               "--archs", "resnet10t", "--seeds", "0,1", "--steps", "3", "--json", str(tmp_path / "r.json")])
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n_images"] == 20 and report["per_class"] == [2] * 10
    assert len(report["students"]["resnet10t"]["acc"]) == 2 and "fid" in report["quality"]
    assert "resnet10t  accuracy" in capsys.readouterr().out
    rc = main(["evaluate", "--distilled", str(exported), "--data", "uci-digits", "--teacher", str(tiny_teacher_dir)])
    assert rc == 2 and "class order differs" in capsys.readouterr().err
    rc = main(["evaluate", "--distilled", str(out), "--data", "uci-digits", "--archs", "nope"])
    assert rc == 2 and "unknown student" in capsys.readouterr().err


def test_rded_protocol_follows_rdeds_imagenet_subset_settings():
    from adaptive_dd.evaluation.students import protocol, rded_protocol

    cfg = rded_protocol(ipc=10, n_classes=10)
    assert (cfg.archs, cfg.input_size, cfg.lr, cfg.weight_decay, cfg.temperature) == (("resnet18",), 224, 1e-3,
                                                                                      0.01, 20.0)
    assert cfg.epochs == 300 and cfg.batch_size == 50 and cfg.total_steps(100) == 300 * 2
    assert cfg.crop_scale == (0.08, 1.0) and cfg.hflip and cfg.max_rotation == 0
    assert rded_protocol(ipc=50, n_classes=10).batch_size == 100 and rded_protocol(50, 1000).batch_size == 200
    assert protocol("digits", 10, 10) == StudentConfig() and StudentConfig().total_steps(1000) == 300
    with pytest.raises(ValueError, match="unknown protocol 'nope'"):
        protocol("nope", 1, 2)


def test_flips_are_horizontal_mirrors_and_leave_unflipped_configs_alone():
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = StudentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), max_rotation=0.0, input_size=8)
    out = augment(x, StudentConfig(**{**plain.__dict__, "hflip": True}), torch.Generator().manual_seed(1))
    same = (out - x).abs().flatten(1).amax(1) < 1e-5
    mirrored = (out - x.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert bool((same ^ mirrored).all()) and 16 < int(mirrored.sum()) < 48
    torch.testing.assert_close(augment(x, plain, torch.Generator().manual_seed(1)), x, rtol=0, atol=1e-5)
