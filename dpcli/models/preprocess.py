"""Which preprocessing a model's input gets: its pretrained weights' own, or dpcli's defaults.

``--weights DEFAULT|NAME`` of a torchvision or timm model define how their training images were
prepared (resize, center crop, mean/std, interpolation); fine-tuning or extracting features with
anything else shifts the input distribution.  :func:`resolve` turns ``--arch``/``--weights``/
``--image-size`` into a :class:`dpcli.data.base.InputSpec` (None: dpcli's defaults, i.e. the stored or
``--image-size`` resolution and the dataset's own channel statistics), read from the weights' metadata
only (no download).  Precedence: an explicit ``--image-size N`` sets the size (crop N of the shorter
side resized to round(N / 0.875), bilinear); the normalization still follows the weights.  A local
state-dict file carries no metadata: defaults.  The spec used is stored in the checkpoint's lineage,
and later stages read it from there (:func:`of_checkpoint`).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from dpcli.data.base import InputSpec
from dpcli.errors import DpcliError

if TYPE_CHECKING:
    from dpcli.config import TrainConfig
    from dpcli.data.base import Dataset

LINEAGE_KEY = "preprocessing"
EXPLICIT = "--image-size"
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def make_spec(crop: Any, resize: Any, mean: Any, std: Any, interpolation: Any, source: str) -> InputSpec:
    """An :class:`InputSpec` from a library's values (lists, enums); one line for what dpcli cannot reproduce."""

    def side(v: Any, what: str) -> int:
        vals = [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
        if len(set(vals)) != 1 or vals[0] < 1:
            raise DpcliError(f"{source}: a non-square {what} {vals} is not supported; pass --image-size N")
        return vals[0]

    interp = str(getattr(interpolation, "value", interpolation)).lower()
    if interp not in INTERPOLATIONS:
        raise DpcliError(
            f"{source}: interpolation {interp!r} is not supported ({', '.join(INTERPOLATIONS)}); pass --image-size N"
        )
    crop_i, resize_i = side(crop, "crop"), side(resize, "resize")
    if resize_i < crop_i:
        raise DpcliError(f"{source}: resize {resize_i} is smaller than the crop {crop_i}; pass --image-size N")
    return InputSpec(
        crop=crop_i,
        resize=resize_i,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        interpolation=interp,
        source=source,
    )


def is_local(weights: str | None) -> bool:
    """A state-dict file rather than a library weights name."""
    from pathlib import Path

    return weights is not None and (bool(Path(weights).suffix) or "/" in weights or Path(weights).exists())


def resolve(arch: str, weights: str | None, image_size: int | None = None) -> InputSpec | None:
    """The input spec of ``--arch``/``--weights``/``--image-size`` (see the module docstring)."""
    from dpcli.data.cache import stored_side
    from dpcli.models.base import SOURCES, parse_arch

    if not weights or is_local(weights):
        return None
    source, name = parse_arch(arch)
    spec = SOURCES.get(source)().preprocessing(name, weights)
    if spec is None or image_size is None:
        return spec
    return InputSpec(
        crop=int(image_size),
        resize=stored_side(int(image_size)),
        mean=spec.mean,
        std=spec.std,
        interpolation="bilinear",
        source=f"{EXPLICIT} {image_size}; normalization of {spec.source}",
    )


def explicit_size(spec: InputSpec) -> bool:
    """Whether the size of ``spec`` is the user's --image-size (then it is part of the run's configuration)."""
    return spec.source.startswith(EXPLICIT)


def for_config(config: "TrainConfig") -> InputSpec | None:
    return resolve(config.arch, config.weights, config.image_size)


def to_dict(spec: InputSpec | None) -> dict | None:
    return None if spec is None else {**asdict(spec), "mean": list(spec.mean), "std": list(spec.std)}


def from_dict(data: dict | None) -> InputSpec | None:
    if not data:
        return None
    return InputSpec(
        crop=int(data["crop"]),
        resize=int(data["resize"]),
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        interpolation=str(data["interpolation"]),
        source=str(data.get("source", "")),
    )


def of_checkpoint(ck: Any) -> InputSpec | None:
    """The spec a checkpoint was trained with: recorded in its lineage (else resolved from its config)."""
    lineage = getattr(ck, "lineage", None) or {}
    if LINEAGE_KEY in lineage:
        return from_dict(lineage[LINEAGE_KEY])
    return for_config(ck.config)


def check(config_spec: InputSpec | None, config_size: int | None, ds: "Dataset", what: str) -> None:
    """The pipeline is part of the model: ``ds`` must have been loaded with the spec the model expects."""
    if ds.input != config_spec:
        want = config_spec.source if config_spec else "dpcli's defaults"
        have = ds.input.source if ds.input else "dpcli's defaults"
        raise DpcliError(
            f"{what} expects the preprocessing of {want}, but the dataset was loaded with {have}; "
            "pass the same --arch/--weights/--image-size to every command"
        )
    if config_spec is None and config_size != ds.train.crop:
        raise DpcliError(
            f"{what} is configured with --image-size {config_size} but the dataset was loaded "
            f"with {ds.train.crop}; pass the same --image-size to every command"
        )
