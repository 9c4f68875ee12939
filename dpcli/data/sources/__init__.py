"""Dataset sources, one module each (digits, cifar, imagefolder); ``load_dataset`` picks one by spec.

Adding a source is one new module here whose class subclasses
:class:`dpcli.data.base.DatasetSource` with a ``name`` (see docs/datasets.md).  The names below
are re-exported for the callers that import them from here; the torch-dependent ones load lazily.
"""

from __future__ import annotations

from dpcli.data.base import (
    SOURCES,
    Dataset,
    DatasetSource,
    DiskImages,
    Split,
    dataset_fingerprint,
    default_data_root,
    load_dataset,
    source_for,
)

__all__ = [
    "SOURCES",
    "Dataset",
    "DatasetSource",
    "DiskImages",
    "Split",
    "augment_pad",
    "dataset_fingerprint",
    "default_data_root",
    "inference_batch",
    "iterate_batches",
    "load_dataset",
    "source_for",
]


def __getattr__(name: str):
    if name in ("iterate_batches", "augment_pad", "inference_batch"):
        from dpcli.data import batches

        return getattr(batches, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
