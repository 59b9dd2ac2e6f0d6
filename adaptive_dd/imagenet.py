"""ImageNet-1K's class list, keyed by WordNet id, and the ImageNet subsets the field distills.

An ImageFolder whose class folders are WordNet ids (n01440764, ...) keeps the wnids as its class names; this
module turns them into readable names (Stable Diffusion prompts) and ImageNet-1K indices (DiT labels, the outputs
of ImageNet-trained teachers). The table is imagenet_classes.tsv beside this file; its header says where it came
from. A subset's class order is the order its anchors list, never the sorted folder order of someone's copy.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

TABLE = Path(__file__).resolve().parent / "imagenet_classes.tsv"
NUM_CLASSES = 1000
WNID = re.compile(r"n\d{8}")

# ImageNette and ImageWoof in the order of fastai's imagenette repository, which the field's code follows
# (RDED, D4M, Minimax): indices 0, 217, 482, 491, 497, 566, 569, 571, 574, 701 for ImageNette.
PRESETS: dict[str, tuple[str, ...]] = {
    "imagenette": ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
                   "n03425413", "n03445777", "n03888257"),
    "imagewoof": ("n02086240", "n02087394", "n02088364", "n02089973", "n02093754", "n02096294", "n02099601",
                  "n02105641", "n02111889", "n02115641"),
}


class ImageNetClass(NamedTuple):
    index: int
    wnid: str
    name: str


@lru_cache(maxsize=1)
def classes() -> tuple[ImageNetClass, ...]:
    """The 1000 ImageNet-1K classes in index order."""
    rows = [line.split("\t") for line in TABLE.read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#")][1:]
    table = tuple(ImageNetClass(int(i), w, n) for i, w, n in rows)
    if [c.index for c in table] != list(range(NUM_CLASSES)):
        raise RuntimeError(f"{TABLE} must list the {NUM_CLASSES} ImageNet classes in index order")
    return table


@lru_cache(maxsize=1)
def _by_wnid() -> dict[str, ImageNetClass]:
    return {c.wnid: c for c in classes()}


@lru_cache(maxsize=1)
def _by_name() -> dict[str, ImageNetClass]:
    return {c.name: c for c in classes()}


@lru_cache(maxsize=1)
def _by_folded_name() -> dict[str, ImageNetClass]:
    """Case-folded readable names; one that two classes share (Cardigan the corgi, cardigan the sweater) is left
    out, so those match only exactly."""
    folded: dict[str, list[ImageNetClass]] = {}
    for c in classes():
        folded.setdefault(c.name.casefold(), []).append(c)
    return {k: v[0] for k, v in folded.items() if len(v) == 1}


def lookup(name: str) -> ImageNetClass | None:
    """The ImageNet class a class name denotes: by WordNet id, or by its readable name (exact, else
    case-insensitive when that is unambiguous)."""
    name = name.strip()
    return _by_wnid().get(name) or _by_name().get(name) or _by_folded_name().get(name.casefold())


def is_wnid(name: str) -> bool:
    return name in _by_wnid()


def readable(name: str) -> str:
    """A WordNet id's readable name (for prompts and captions); any other name as it is."""
    c = _by_wnid().get(name)
    return c.name if c else name


def indices(names: list[str]) -> list[int] | None:
    """ImageNet-1K indices of names, when every one is an ImageNet class (by wnid or readable name)."""
    found = [lookup(n) for n in names]
    return None if any(c is None for c in found) else [c.index for c in found]


def expand_classes(names: list[str] | None) -> list[str] | None:
    """A --classes list with presets ("imagenette", "imagewoof") replaced by their wnids, in their anchors' order."""
    if names is None:
        return None
    return [w for n in names for w in PRESETS.get(n.casefold(), (n,))]
