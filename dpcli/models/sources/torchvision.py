"""torchvision: any classification model ``torchvision.models.get_model`` builds, with its weights."""

from __future__ import annotations

import difflib
from pathlib import Path

from dpcli.errors import DpcliError
from dpcli.models.base import ModelSource, ModelSpec

# built without their auxiliary classifiers (only the main head is the model's output)
_NO_AUX = ("googlenet", "inception_v3")


def classification_models() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _offline(exc: BaseException) -> bool:
    import urllib.error

    return isinstance(exc, (urllib.error.URLError, ConnectionError, TimeoutError, OSError))


class TorchVision(ModelSource):
    name = "torchvision"

    def check(self, model: str) -> None:
        names = classification_models()
        if model not in names:
            close = difflib.get_close_matches(model, names, n=3)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise DpcliError(
                f"unknown torchvision classification model {model!r}{hint} "
                "(torchvision.models.list_models() lists them)"
            )

    def weights_enum(self, model: str, weights: str):
        import torchvision.models as tvm

        if weights.upper() == "DEFAULT":
            return tvm.get_model_weights(model).DEFAULT
        try:
            return tvm.get_weight(weights if "." in weights else f"{tvm.get_model_weights(model).__name__}.{weights}")
        except (ValueError, KeyError, AttributeError):
            names = [w.name for w in tvm.get_model_weights(model)]
            raise DpcliError(
                f"--weights {weights!r}: not a weights name of {model} (choose DEFAULT, "
                f"{', '.join(names)}, or a state-dict file)"
            ) from None

    def build(self, model: str, spec: ModelSpec):
        import torchvision.models as tvm

        from dpcli.models.library import LibraryClassifier, load_state_file

        self.check(model)
        kwargs = {"aux_logits": False, "init_weights": False} if model in _NO_AUX else {}
        weights = spec.weights
        local = weights is not None and (Path(weights).suffix or "/" in weights or Path(weights).exists())
        if weights and not local:
            enum = self.weights_enum(model, weights)
            try:
                net = tvm.get_model(model, weights=enum, **({"aux_logits": True} if model in _NO_AUX else {}))
            except Exception as exc:  # noqa: BLE001 - the download is the library's; report it in one line
                if _offline(exc):
                    raise DpcliError(
                        f"cannot download torchvision weights {enum} (no internet?): download "
                        f"{enum.url} elsewhere and pass the file: --weights PATH"
                    ) from None
                raise
            if model in _NO_AUX:
                net.aux_logits, net.AuxLogits = False, None
                if hasattr(net, "aux1"):
                    net.aux1 = net.aux2 = None
        else:
            net = tvm.get_model(model, weights=None, **kwargs)
            if weights is not None and local:
                load_state_file(net, weights, f"torchvision:{model}")
        return LibraryClassifier(
            net, spec.num_classes, f"torchvision:{model}", in_channels=spec.in_channels, head_module=spec.head_module
        )

    def preprocessing(self, model: str, weights: str | None):
        """The Weights enum's eval transforms (metadata only: building them downloads nothing)."""
        from dpcli.models.preprocess import is_local, make_spec

        if not weights or is_local(weights):
            return None
        self.check(model)
        enum = self.weights_enum(model, weights)
        t = enum.transforms()
        return make_spec(t.crop_size, t.resize_size, t.mean, t.std, t.interpolation, f"torchvision:{enum}")
