"""Evaluation of a distilled set: students trained on it, and image-quality and diversity metrics.

    report = evaluate(load_distilled("out/"), load_teacher("uci-digits"), load_dataset("uci-digits", "test"))

Students (the paper's Table 2) follow `students.py`; quality and diversity (Table 4) are computed in the
teacher's penultimate-layer feature space against the target's test images, and labelled so. The test split is
only ever measured against, never used to choose anything.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data import DataError, ImageDataset, open_image, to_tensor
from ..fidelity import Teacher
from .metrics import class_vendi, feature_metrics, renyi_mutual_information, vendi
from .students import StudentConfig, accuracy, train_student


class EvaluationError(ValueError):
    """A distilled set that cannot be evaluated as asked; the message names the problem."""


@dataclass
class DistilledSet:
    """Images (N, C, H, W) in [0, 1] with labels indexing classes, in the class order the set declares."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str = "distilled"

    def per_class(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()


def load_distilled(directory: str | Path) -> DistilledSet:
    """An export of ours: the class order comes from manifest.json, never from sorting folder names."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        classes = [c["name"] for c in manifest["classes"]]
        rows = manifest["images"]
    except FileNotFoundError:
        raise EvaluationError(f"{directory}: no manifest.json; evaluate a folder written by `adaptive-dd distill`") \
            from None
    except (ValueError, KeyError, TypeError) as e:
        raise EvaluationError(f"{directory / 'manifest.json'}: not a valid manifest ({e})") from None
    root = directory.resolve()
    pils, labels = [], []
    for row in rows:
        path = (directory / row["file"]).resolve()
        if not path.is_relative_to(root):
            raise EvaluationError(f"manifest entry {row['file']!r} points outside {directory}")
        if row["class"] not in classes:
            raise EvaluationError(f"manifest entry {row['file']!r} has class {row['class']!r}, not in its class list")
        try:
            pils.append(open_image(path))
        except DataError as e:
            raise EvaluationError(str(e)) from None
        labels.append(classes.index(row["class"]))
    sizes = {im.size for im in pils}
    if len(sizes) != 1 or any(w != h for w, h in sizes):
        raise EvaluationError(f"{directory}: images must be square and of one size, found {sorted(sizes)}")
    size = pils[0].size[0]
    channels = 1 if all(im.mode == "L" for im in pils) else 3
    return DistilledSet(to_tensor(pils, size, channels), torch.tensor(labels), classes, directory.name)


def check_class_order(classes: list[str], teacher: Teacher) -> None:
    """Refuse a set whose class order differs from the teacher's: soft labels would be scored against the wrong
    classes (the reproduction gap behind several of RDED's issues)."""
    if teacher.classes is None:
        if len(classes) != teacher.config.num_classes:
            raise EvaluationError(f"the set has {len(classes)} classes, the teacher {teacher.config.num_classes}")
        return
    if list(classes) != list(teacher.classes):
        diff = next((i for i, (a, b) in enumerate(zip(classes, teacher.classes)) if a != b), min(len(classes),
                                                                                              len(teacher.classes)))
        raise EvaluationError(f"class order differs from the teacher's at position {diff}: set "
                              f"{classes[diff:diff + 3]} vs teacher {list(teacher.classes[diff:diff + 3])}")


def target_test_set(test: ImageDataset, teacher: Teacher) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's test split at the teacher's input size, labels mapped to the teacher's class order."""
    order = list(teacher.classes or test.classes)
    missing = sorted(set(test.classes) - set(order))
    if missing:
        raise EvaluationError(f"test classes {missing[:5]} are not among the teacher's classes")
    images = test.tensor(range(len(test)), teacher.config.input_size, teacher.config.in_chans)
    labels = torch.tensor([order.index(test.classes[int(y)]) for y in test.labels])
    return images, labels


def student_accuracy(dset: DistilledSet, teacher: Teacher, test_images: torch.Tensor, test_labels: torch.Tensor,
                     arch: str, seed: int, cfg: StudentConfig = StudentConfig()) -> float:
    """Test accuracy of one student trained on the set: the unit of work the benchmark spreads over processes."""
    model = train_student(dset.images, teacher, arch, seed, cfg)
    return accuracy(model, test_images, test_labels, teacher.config.in_chans, cfg)


def summarize(accs: list[float]) -> dict:
    return {"acc": accs, "mean": statistics.fmean(accs), "std": statistics.pstdev(accs)}


def quality(dset: DistilledSet, teacher: Teacher, test_images: torch.Tensor) -> dict:
    """Table 4's metrics in the teacher's feature space, plus Vendi scores and the class-conditional Renyi MI."""
    real, fake = teacher.features(test_images), teacher.features(dset.images)
    labels = dset.labels.numpy()
    out = feature_metrics(real, fake, k=min(5, len(fake) - 1))
    out.update({
        "vendi_1": vendi(fake, 1), "vendi_2": vendi(fake, 2),
        "class_vendi_1": class_vendi(fake, labels, 1)["class_mean"],
        "rmi_2": renyi_mutual_information(fake, labels, 2),
        "feature_space": f"teacher penultimate layer ({teacher.config.model_name}, {real.shape[1]}-d)",
        "n_real": len(real), "n_fake": len(fake),
    })
    return out


def evaluate(dset: DistilledSet, teacher: Teacher, test: ImageDataset, cfg: StudentConfig = StudentConfig(),
             with_quality: bool = True) -> dict:
    """Students of every configured architecture and seed, and (optionally) quality metrics, as one report."""
    cfg.validate()
    check_class_order(dset.classes, teacher)
    if len(set(dset.labels.tolist())) < 2 or len(dset.images) < 2:
        raise EvaluationError(f"{dset.name}: needs images of at least two classes, got {dset.per_class()}")
    test_images, test_labels = target_test_set(test, teacher)
    report = {"set": dset.name, "n_images": len(dset.images), "per_class": dset.per_class(),
              "students": {arch: summarize([student_accuracy(dset, teacher, test_images, test_labels, arch, s, cfg)
                                            for s in cfg.seeds]) for arch in cfg.archs},
              "student_config": asdict(cfg), "test_split": f"{test.name} test ({len(test)} images)"}
    if with_quality:
        report["quality"] = quality(dset, teacher, test_images)
    return report


__all__ = ["DistilledSet", "EvaluationError", "StudentConfig", "check_class_order", "evaluate", "load_distilled",
           "quality", "student_accuracy", "summarize", "target_test_set"]
