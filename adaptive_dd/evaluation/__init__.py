"""Evaluation of a distilled set: students trained on it, and image-quality and diversity metrics.

    report = evaluate(load_distilled("out/"), load_teacher("uci-digits"), load_dataset("uci-digits", "test"))

A distilled set is a folder written by `adaptive-dd distill` (class order from its manifest) or any ImageFolder,
such as D4M's or RDED's released sets (classes from folder names, matched to the teacher's by name or WordNet id).
Students (the paper's Table 2) follow `students.py`; quality and diversity (Table 4) are computed in the
teacher's penultimate-layer feature space against the target's test images, and labelled so. The test split is
read from disk in batches, and only ever measured against, never used to choose anything.
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..classmap import ClassMatchError, SubsetTeacher, align_teacher, is_imagenet_teacher, output_indices
from ..data import DataError, ImageDataset, load_image_folder, open_image, to_tensor
from ..fidelity import Teacher
from .metrics import class_vendi, feature_metrics, renyi_mutual_information, vendi
from .students import StudentConfig, accuracy, batches_accuracy, train_student


class EvaluationError(ValueError):
    """A distilled set that cannot be evaluated as asked; the message names the problem."""


@dataclass
class DistilledSet:
    """Images (N, C, H, W) in [0, 1] with labels indexing classes, in the class order the set declares."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str = "distilled"
    ordered: bool = True  # False: the class order is only the folders' sorted names, to be matched to the teacher

    def per_class(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()


def load_distilled(directory: str | Path) -> DistilledSet:
    """An export of ours, whose class order comes from manifest.json (never from sorting folder names), or any
    other ImageFolder (classes from its folder names, to be matched to the teacher's: `ordered` is False)."""
    directory = Path(directory)
    if not (directory / "manifest.json").exists():
        try:
            folder = load_image_folder(directory)
            pils = list(folder.images)
        except DataError as e:
            raise EvaluationError(f"{directory}: no manifest.json, and not an ImageFolder either ({e})") from None
        return _as_set(directory, pils, folder.labels.tolist(), folder.classes, ordered=False)
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        classes = [c["name"] for c in manifest["classes"]]
        rows = manifest["images"]
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
    return _as_set(directory, pils, labels, classes, ordered=True)


def _as_set(directory: Path, pils: list, labels: list[int], classes: list[str], ordered: bool) -> DistilledSet:
    sizes = {im.size for im in pils}
    if len(sizes) != 1 or any(w != h for w, h in sizes):
        raise EvaluationError(f"{directory}: images must be square and of one size, found {sorted(sizes)}")
    size = pils[0].size[0]
    channels = 1 if all(im.mode == "L" for im in pils) else 3
    return DistilledSet(to_tensor(pils, size, channels), torch.tensor(labels), classes, directory.name, ordered)


def match_classes(dset: DistilledSet, teacher: Teacher) -> tuple[DistilledSet, Teacher]:
    """The set and the teacher with one class order: an ImageNet-1K teacher (1000 outputs, no class names) is
    restricted to the set's classes; a set whose order is only its folder names is relabelled into the teacher's
    order. Classes the teacher lacks are refused, by name; a set with our manifest keeps its own order, which
    check_class_order then holds against a teacher with class names."""
    try:
        found = output_indices(dset.classes, teacher)
    except ClassMatchError as e:
        raise EvaluationError(str(e)) from None
    if is_imagenet_teacher(teacher):
        return dset, align_teacher(teacher, dset.classes)
    if not dset.ordered:
        order = list(teacher.classes or dset.classes)
        relabel = torch.tensor(found)
        return replace(dset, labels=relabel[dset.labels], classes=order, ordered=True), teacher
    return dset, teacher


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


class TestStream:
    """A target's test split read from disk in batches at the teacher's input size, labels in the teacher's class
    order (the test classes matched to it by name or WordNet id)."""

    def __init__(self, test: ImageDataset, teacher: Teacher, batch_size: int = 256):
        try:  # a teacher without class names is taken in the test split's own order
            to_teacher = output_indices(test.classes, teacher) if teacher.classes is not None else None
        except ClassMatchError as e:
            raise EvaluationError(f"test split of {test.name}: {e}") from None
        self.test = test
        self.labels = torch.tensor(test.labels if to_teacher is None else np.asarray(to_teacher)[test.labels])
        self.size, self.channels = teacher.config.input_size, teacher.config.in_chans
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.test)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.test), self.batch_size):
            rows = range(i, min(i + self.batch_size, len(self.test)))
            yield self.test.tensor(rows, self.size, self.channels), self.labels[i:rows.stop]


def target_test_set(test: ImageDataset, teacher: Teacher) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole test split in memory (small targets: the benchmark's digits); evaluate() streams it instead."""
    stream = TestStream(test, teacher)
    return torch.cat([x for x, _ in stream]), stream.labels


def student_accuracy(dset: DistilledSet, teacher: Teacher, test_images: torch.Tensor, test_labels: torch.Tensor,
                     arch: str, seed: int, cfg: StudentConfig = StudentConfig()) -> float:
    """Test accuracy of one student trained on the set: the unit of work the benchmark spreads over processes."""
    model = train_student(dset.images, teacher, arch, seed, cfg)
    return accuracy(model, test_images, test_labels, teacher.config.in_chans, cfg)


def summarize(accs: list[float]) -> dict:
    return {"acc": accs, "mean": statistics.fmean(accs), "std": statistics.pstdev(accs)}


def quality(dset: DistilledSet, teacher: Teacher, test_images: torch.Tensor | TestStream) -> dict:
    """Table 4's metrics in the teacher's feature space, plus Vendi scores and the class-conditional Renyi MI."""
    real = teacher.features(test_images) if isinstance(test_images, torch.Tensor) else \
        torch.cat([teacher.features(x) for x, _ in test_images])
    fake = teacher.features(dset.images)
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
    source = "manifest" if dset.ordered else "ImageFolder (classes matched by folder name)"
    dset, teacher = match_classes(dset, teacher)
    check_class_order(dset.classes, teacher)
    if len(set(dset.labels.tolist())) < 2 or len(dset.images) < 2:
        raise EvaluationError(f"{dset.name}: needs images of at least two classes, got {dset.per_class()}")
    stream = TestStream(test, teacher)

    def student(arch: str, seed: int) -> float:
        return batches_accuracy(train_student(dset.images, teacher, arch, seed, cfg), stream,
                                teacher.config.in_chans, cfg)

    report = {"set": dset.name, "n_images": len(dset.images), "per_class": dset.per_class(),
              "classes": dset.classes, "class_order_from": source,
              "students": {arch: summarize([student(arch, s) for s in cfg.seeds]) for arch in cfg.archs},
              "student_config": asdict(cfg), "test_split": f"{test.name} test ({len(test)} images)"}
    if isinstance(teacher, SubsetTeacher):
        report["teacher_outputs"] = teacher.describe()
    if with_quality:
        report["quality"] = quality(dset, teacher, stream)
    return report


__all__ = ["DistilledSet", "EvaluationError", "StudentConfig", "TestStream", "check_class_order", "evaluate",
           "load_distilled", "match_classes", "quality", "student_accuracy", "summarize", "target_test_set"]
