"""builtin: dpcli's own ConvNet and CIFAR-style ResNet-18/50 (see :mod:`dpcli.models.zoo`)."""

from __future__ import annotations

from dpcli.errors import DpcliError
from dpcli.models.base import ModelSource, ModelSpec


class Builtin(ModelSource):
    name = "builtin"

    def check(self, model: str) -> None:
        from dpcli.models.zoo import ARCHS

        if model not in ARCHS:
            raise DpcliError(
                f"Unknown architecture {model!r}; valid ones are: {', '.join(ARCHS)}, torchvision:NAME, timm:NAME."
            )

    def build(self, model: str, spec: ModelSpec):
        from dpcli.models.zoo import build_builtin

        if spec.weights:
            raise DpcliError(f"--weights applies to torchvision:/timm: models, not the builtin {model!r}")
        return build_builtin(model, spec.num_classes, spec.in_channels, spec.image_size, spec.width, spec.depth)
