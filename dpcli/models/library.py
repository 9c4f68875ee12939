"""Library classifiers (torchvision, timm, your own nn.Module) split into features and head.

Influence needs ``head(features(x))`` with ``head`` an ``nn.Linear``.  :func:`find_head` locates the
last linear layer (``fc``, ``classifier``, ``head``/``heads``, timm's ``get_classifier()``, or the
module the user names with ``--head-module``); :class:`LibraryClassifier` keeps the network with that
layer replaced by ``Identity`` as the feature extractor and a fresh ``Linear`` for the dataset's
classes as the head.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dpcli.errors import DpcliError
from dpcli.models.zoo import Classifier

HEAD_NAMES = ("fc", "classifier", "head", "heads", "last_linear")


def _get(model: nn.Module, dotted: str) -> nn.Module | None:
    try:
        return model.get_submodule(dotted)
    except AttributeError:
        return None


def _last_linear(module: nn.Module, prefix: str) -> str | None:
    """The dotted name of ``module`` if it is Linear, else of the last Linear inside it, if that is
    the container's last parametrized layer (so nothing with weights follows the head)."""
    if isinstance(module, nn.Linear):
        return prefix
    last: tuple[str, nn.Module] | None = None
    for name, sub in module.named_modules():
        if name and any(True for _ in sub.parameters(recurse=False)):
            last = (name, sub)
    if last is not None and isinstance(last[1], nn.Linear):
        return f"{prefix}.{last[0]}"
    return None


def find_head(model: nn.Module, head_module: str | None = None) -> str:
    """Dotted name of the last linear layer; one clear line when there is none."""
    if head_module:
        sub = _get(model, head_module)
        if sub is None:
            raise DpcliError(f"--head-module {head_module!r}: the model has no submodule of that name")
        name = _last_linear(sub, head_module)
        if name is None:
            raise DpcliError(
                f"--head-module {head_module!r} is a {type(sub).__name__}, not (and not ending in) an nn.Linear"
            )
        return name
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):  # timm
        clf = get_classifier()
        for name, sub in model.named_modules():
            if sub is clf and isinstance(sub, nn.Linear):
                return name
    for attr in HEAD_NAMES:
        sub = _get(model, attr)
        if sub is not None:
            name = _last_linear(sub, attr)
            if name is not None:
                return name
    raise DpcliError(
        f"{type(model).__name__}: no last linear layer found (looked for {', '.join(HEAD_NAMES)} and "
        "timm's get_classifier()); name it with --head-module NAME (a dotted submodule path)"
    )


def _set(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def split_head(
    model: nn.Module, head_module: str | None = None, *, copy_model: bool = True
) -> tuple[nn.Module, nn.Linear]:
    """``(body, head)`` with ``body(x)`` the head's input; ``model`` is left intact unless ``copy_model=False``."""
    name = find_head(model, head_module)
    body = copy.deepcopy(model) if copy_model else model
    head = body.get_submodule(name)
    assert isinstance(head, nn.Linear)  # find_head names only a Linear
    _set(body, name, nn.Identity())
    return body, head


class LibraryClassifier(Classifier):
    """A library network as ``head(features(x))``, its head replaced for ``num_classes``."""

    def __init__(
        self,
        network: nn.Module,
        num_classes: int,
        arch: str,
        in_channels: int = 3,
        expects_channels: int = 3,
        head_module: str | None = None,
    ) -> None:
        super().__init__()
        body, old = split_head(network, head_module, copy_model=False)
        self.body = body
        self.arch = arch
        self.feature_dim = int(old.in_features)
        self.head = nn.Linear(self.feature_dim, num_classes)
        self.repeat = expects_channels if in_channels == 1 and expects_channels != 1 else 1

    def features(self, x: Tensor) -> Tensor:
        if self.repeat > 1:  # grey images into an RGB network
            x = x.expand(-1, self.repeat, -1, -1)
        out = self.body(x)
        if isinstance(out, (tuple, list)):  # e.g. auxiliary outputs in training mode
            out = out[0]
        return torch.flatten(out, 1)


def load_state_file(network: nn.Module, path: str | Path, arch: str) -> None:
    """Load a local state dict (``torch.save(model.state_dict())`` or a checkpoint holding one)."""
    path = Path(path)
    if not path.is_file():
        raise DpcliError(f"--weights {path}: no such file (give DEFAULT, a weights name, or a state-dict file)")
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise DpcliError(f"--weights {path}: cannot read a PyTorch state dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DpcliError(f"--weights {path}: holds a {type(state).__name__}, not a state dict")
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise DpcliError(f"--weights {path}: does not fit {arch} ({detail[:200]})") from None
