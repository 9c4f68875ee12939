"""The model-source interface behind ``--arch [SOURCE:]NAME``.

A source is one module in :mod:`dpcli.models.sources` whose class subclasses :class:`ModelSource`
with a ``name``; subclassing registers it.  ``--arch resnet18`` is the builtin source,
``--arch torchvision:vit_b_16`` and ``--arch timm:resnet10t`` the libraries'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from dpcli.registry import Registry

if TYPE_CHECKING:
    from dpcli.data.base import InputSpec
    from dpcli.models.zoo import Classifier

SOURCES: Registry["ModelSource"] = Registry("model source", "dpcli.models.sources", option="--arch source")


@dataclass(frozen=True)
class ModelSpec:
    """What a classifier is built from: the dataset's shape and the user's choices."""

    num_classes: int
    in_channels: int
    image_size: int
    width: int = 32
    depth: int = 3
    weights: str | None = None  # DEFAULT, a library weights name, or a state-dict file
    head_module: str | None = None  # dotted name of the last linear layer when not detectable


class ModelSource:
    """Builds classifiers by name.  Subclass with a ``name`` to register; override :meth:`build`."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            SOURCES.add(cls)

    def check(self, model: str) -> None:
        """Fail fast (one line) on an unknown model name, before any data is loaded."""

    def build(self, model: str, spec: ModelSpec) -> "Classifier":
        raise NotImplementedError

    def preprocessing(self, model: str, weights: str | None) -> "InputSpec | None":
        """Input size and normalization the weights were trained with, where they define it (metadata only)."""
        return None


def parse_arch(arch: str) -> tuple[str, str]:
    """``'torchvision:resnet18'`` -> ``('torchvision', 'resnet18')``; a bare name is builtin."""
    source, sep, name = str(arch).strip().partition(":")
    return (source.lower(), name) if sep else ("builtin", source.lower())


def build(arch: str, spec: ModelSpec) -> "Classifier":
    source, name = parse_arch(arch)
    return SOURCES.get(source)().build(name, spec)


def check_arch(arch: str) -> None:
    source, name = parse_arch(arch)
    SOURCES.get(source)().check(name)
