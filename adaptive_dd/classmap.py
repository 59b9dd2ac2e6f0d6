"""Which teacher output stands for which dataset class, and a teacher restricted to a dataset's classes.

A class matches a teacher output by name, or by denoting the same ImageNet class (a WordNet id and its readable
name). A teacher with 1000 outputs and no class list is taken to be in ImageNet-1K's order, as every
ImageNet-trained timm model is. Distilling or evaluating a 10-class ImageNet subset with such a teacher uses only
the subset's 10 outputs: the softmax (the students' soft labels, and the fidelity objective) runs over those
alone, in the dataset's class order, as RDED does for ImageNette and ImageWoof.
"""
from __future__ import annotations

import dataclasses

import torch

from . import imagenet
from .fidelity import Embedding, Teacher


class ClassMatchError(ValueError):
    """Dataset classes that cannot be matched to a teacher's outputs; the message names the class."""


def is_imagenet_teacher(teacher: Teacher) -> bool:
    """1000 outputs and no class list: taken to be in ImageNet-1K's order."""
    return teacher.classes is None and teacher.config.num_classes == imagenet.NUM_CLASSES


def output_indices(classes: list[str], teacher: Teacher) -> list[int]:
    """The teacher output that stands for each class, by name, WordNet id or, for a teacher without class names,
    by position (then the counts must agree); a class without one is refused, by name."""
    if teacher.classes is None and not is_imagenet_teacher(teacher):
        if teacher.config.num_classes != len(classes):
            raise ClassMatchError(f"the set has {len(classes)} classes and the teacher {teacher.config.num_classes} "
                                  f"outputs without class names, so they cannot be matched")
        return list(range(len(classes)))
    names = [c.wnid for c in imagenet.classes()] if teacher.classes is None else list(teacher.classes)
    by_name, by_imagenet = {}, {}
    for i, n in enumerate(names):
        by_name.setdefault(n, i)
        if (c := imagenet.lookup(n)) is not None:
            by_imagenet.setdefault(c.index, i)

    def find(name: str) -> int | None:
        if name in by_name:
            return by_name[name]
        c = imagenet.lookup(name)
        return None if c is None else by_imagenet.get(c.index)

    found = [find(c) for c in classes]
    missing = [c for c, i in zip(classes, found) if i is None]
    if missing:
        known = ("ImageNet-1K's classes (by WordNet id or readable name)" if teacher.classes is None
                 else f"the teacher's classes ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})")
        raise ClassMatchError(f"class {missing[0]!r} does not match any of {known}")
    return found


class SubsetTeacher(Teacher):
    """Another teacher's logits at the given output indices, in the given class order (same network, same
    preprocessing and features): softmax over its outputs runs over the subset only."""

    def __init__(self, teacher: Teacher, indices: list[int], classes: list[str]):
        config = dataclasses.replace(teacher.config, num_classes=len(indices), classes=list(classes))
        super().__init__(teacher.model, config)
        self.source_outputs = teacher.config.num_classes
        self.register_buffer("indices", torch.tensor(indices, dtype=torch.long))
        self.to(teacher.mean.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward(images)[:, self.indices]

    def embed(self, images: torch.Tensor, batch_size: int = 256) -> Embedding:
        """The objectives' view (logits and features from one trunk pass), logits restricted like forward's."""
        view = super().embed(images, batch_size)
        return dataclasses.replace(view, logits=view.logits[:, self.indices])

    def describe(self) -> str:
        return (f"soft labels restricted to {len(self.indices)} of the teacher's {self.source_outputs} outputs "
                f"(indices {self.indices.tolist()}, in the class order {self.classes}); the softmax runs over "
                f"those only")


def align_teacher(teacher: Teacher, classes: list[str]) -> Teacher:
    """An ImageNet-1K teacher restricted to a dataset of ImageNet classes, in the dataset's order; any other
    teacher, or a dataset with other classes, as it is."""
    if not is_imagenet_teacher(teacher) or imagenet.indices(classes) is None:
        return teacher
    found = output_indices(classes, teacher)
    return teacher if found == list(range(imagenet.NUM_CLASSES)) else SubsetTeacher(teacher, found, classes)


def class_notes(classes: list[str], teacher: Teacher) -> dict:
    """Manifest entries for ImageNet classes (WordNet id, index, readable name) and a restricted teacher."""
    notes: dict = {}
    found = [imagenet.lookup(c) for c in classes]
    if classes and all(found):
        notes["imagenet_classes"] = [{"class": c, "wnid": f.wnid, "index": f.index, "name": f.name}
                                     for c, f in zip(classes, found)]
    if isinstance(teacher, SubsetTeacher):
        notes["teacher_outputs"] = teacher.describe()
    return notes
