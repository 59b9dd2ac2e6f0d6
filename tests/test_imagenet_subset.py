"""An ImageNet subset end to end on tiny random weights: wnid class folders, a 1000-class DiT, a 1000-output timm
teacher restricted to the subset, the CLI's distill, and evaluate on a plain folder without our manifest."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from adaptive_dd.classmap import ClassMatchError, SubsetTeacher, align_teacher, output_indices
from adaptive_dd.fidelity import load_teacher

WNIDS = ["n01440764", "n02102040"]


@pytest.fixture(scope="module")
def teacher1k(resnet18_checkpoint):
    return load_teacher(f"resnet18:{resnet18_checkpoint}")


def test_a_1000_output_teacher_is_restricted_to_the_subset(teacher1k) -> None:
    assert teacher1k.classes is None and teacher1k.config.num_classes == 1000
    sub = align_teacher(teacher1k, WNIDS)
    assert isinstance(sub, SubsetTeacher) and sub.classes == WNIDS and sub.config.num_classes == 2
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    full = teacher1k.logits(x)
    torch.testing.assert_close(sub.logits(x), full[:, [0, 217]])
    view = sub.embed(x)  # what the BO objectives score: the same restriction, the trunk's features unchanged
    torch.testing.assert_close(view.logits, full[:, [0, 217]])
    torch.testing.assert_close(view.features, teacher1k.features(x))
    soft = torch.softmax(sub.logits(x) / 20, -1)  # the students' soft labels: over exactly those two outputs
    torch.testing.assert_close(soft.sum(1), torch.ones(3))
    restricted = torch.softmax(full / 20, -1)[:, [0, 217]]
    torch.testing.assert_close(soft, restricted / restricted.sum(1, keepdim=True))
    # the readable names match too, and the order is the set's, not the teacher's
    assert align_teacher(teacher1k, ["English springer", "tench"]).indices.tolist() == [217, 0]
    assert "restricted to 2 of the teacher's 1000 outputs (indices [0, 217]" in sub.describe()


def test_unmatched_classes_are_refused_naming_the_class(teacher1k, tiny_teacher) -> None:
    with pytest.raises(ClassMatchError, match="class 'zebra-ish' does not match any of ImageNet-1K's classes"):
        output_indices(["n01440764", "zebra-ish"], teacher1k)
    with pytest.raises(ClassMatchError, match=r"class 'cat' does not match any of the teacher's classes \(0, 1, 2"):
        output_indices(["3", "cat"], tiny_teacher)
    assert output_indices(["3", "1"], tiny_teacher) == [3, 1]
    # only an ImageNet teacher on ImageNet classes is restricted; anything else stays whole
    assert align_teacher(teacher1k, ["n01440764", "zebra-ish"]) is teacher1k
    assert align_teacher(tiny_teacher, ["3", "1"]) is tiny_teacher


def test_cli_distills_an_imagenet_subset_with_dit(tiny_dit_dir, resnet18_checkpoint, wnid_folder, tmp_path,
                                                  capsys) -> None:
    from adaptive_dd.cli import main

    out = tmp_path / "out"
    rc = main(["distill", "--data", str(wnid_folder), "--model", str(tiny_dit_dir), "--teacher",
               f"resnet18:{resnet18_checkpoint}", "--ipc", "2", "--budget", "2", "--steps", "4", "--out", str(out),
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.relative_to(out).parent.name for p in out.rglob("*.png")) == sorted(WNIDS * 2)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["name"] for c in manifest["classes"]] == WNIDS
    assert manifest["models"]["imagenet_classes"] == [
        {"class": "n01440764", "wnid": "n01440764", "index": 0, "name": "tench"},
        {"class": "n02102040", "wnid": "n02102040", "index": 217, "name": "English springer"}]
    assert "indices [0, 217]" in manifest["models"]["teacher_outputs"]
    assert manifest["models"]["backbone"].startswith("DiT ")
    # and the set scores with the same teacher, restricted the same way
    rc = main(["evaluate", "--distilled", str(out), "--data", str(wnid_folder), "--teacher",
               f"resnet18:{resnet18_checkpoint}", "--archs", "resnet10t", "--seeds", "0", "--steps", "1",
               "--no-quality", "--json", str(tmp_path / "r.json")])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["class_order_from"] == "manifest" and report["per_class"] == [2, 2]


@pytest.fixture(scope="module")
def plain_set(wnid_folder, tmp_path_factory):
    """Someone else's distilled set: an ImageFolder of wnid folders, no manifest (here: the train images)."""
    root = tmp_path_factory.mktemp("plain") / "released"
    shutil.copytree(wnid_folder / "train", root)
    return root


def test_evaluate_scores_a_plain_image_folder(plain_set, wnid_folder, resnet18_checkpoint, tmp_path, capsys) -> None:
    from adaptive_dd.cli import main

    report_path = tmp_path / "report.json"
    rc = main(["evaluate", "--distilled", str(plain_set), "--data", str(wnid_folder), "--teacher",
               f"resnet18:{resnet18_checkpoint}", "--archs", "resnet10t", "--seeds", "0", "--steps", "2",
               "--json", str(report_path)])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(report_path.read_text())
    assert report["n_images"] == 6 and report["per_class"] == [3, 3] and report["classes"] == WNIDS
    # not a built-in set: RDED's protocol, its step count replaced by --steps
    assert report["protocol"] == "rded" and report["student_config"]["input_size"] == 224
    assert report["student_config"]["temperature"] == 20 and report["student_config"]["epochs"] is None
    assert "indices [0, 217]" in report["teacher_outputs"]
    acc = report["students"]["resnet10t"]["acc"][0]
    assert acc in (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)  # 8 test images
    assert report["quality"]["n_real"] == 8 and "test (8 images)" in report["test_split"]


def test_evaluate_refuses_a_plain_folder_whose_classes_the_teacher_lacks(plain_set, wnid_folder, tiny_teacher_dir,
                                                                         tmp_path, capsys) -> None:
    from adaptive_dd.cli import main

    rc = main(["evaluate", "--distilled", str(plain_set), "--data", str(wnid_folder), "--teacher",
               str(tiny_teacher_dir), "--steps", "1"])
    assert rc == 2
    assert "class 'n01440764' does not match any of the teacher's classes (0, 1" in capsys.readouterr().err


def test_a_plain_folder_is_relabelled_into_a_named_teachers_order(tmp_path, tiny_teacher) -> None:
    from PIL import Image

    from adaptive_dd.evaluation import load_distilled, match_classes

    for name in ("7", "1"):
        (tmp_path / "set" / name).mkdir(parents=True)
        for k in range(2):
            Image.new("L", (8, 8), 40 * k).save(tmp_path / "set" / name / f"{k}.png")
    dset = load_distilled(tmp_path / "set")
    assert not dset.ordered and dset.classes == ["1", "7"] and dset.labels.tolist() == [0, 0, 1, 1]
    matched, teacher = match_classes(dset, tiny_teacher)
    assert teacher is tiny_teacher and matched.classes == [str(i) for i in range(10)]
    assert matched.labels.tolist() == [1, 1, 7, 7] and matched.per_class()[1] == matched.per_class()[7] == 2


def test_test_split_streams_in_batches_in_the_teachers_order(wnid_folder, teacher1k) -> None:
    from adaptive_dd.data import load_dataset
    from adaptive_dd.evaluation import TestStream

    teacher = align_teacher(teacher1k, list(reversed(WNIDS)))  # the set's order: springer first
    stream = TestStream(load_dataset(str(wnid_folder), "test"), teacher, batch_size=3)
    batches = list(stream)
    assert [len(y) for _, y in batches] == [3, 3, 2] and batches[0][0].shape[:2] == (3, 3)
    assert batches[0][0].shape[-1] == teacher.config.input_size
    assert torch.cat([y for _, y in batches]).tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
