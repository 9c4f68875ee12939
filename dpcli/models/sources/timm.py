"""timm: any ``timm.create_model`` name (optional extra: ``pip install "dpcli[timm]"``)."""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path

from dpcli.errors import DpcliError
from dpcli.models.base import ModelSource, ModelSpec

INSTALL = 'timm models need the optional extra: pip install "dpcli[timm]" (or pip install timm)'


def _timm():
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise DpcliError(INSTALL) from None


class Timm(ModelSource):
    name = "timm"

    def check(self, model: str) -> None:
        timm = _timm()
        names = timm.list_models()
        if model not in names and model.split(".")[0] not in names:
            close = difflib.get_close_matches(model, names, n=3)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise DpcliError(f"unknown timm model {model!r}{hint} (timm.list_models() lists them)")

    def build(self, model: str, spec: ModelSpec):
        from dpcli.models.library import LibraryClassifier, load_state_file

        timm = _timm()
        self.check(model)
        weights = spec.weights
        local = weights is not None and weights.upper() != "DEFAULT" and (Path(weights).suffix or "/" in weights)
        if weights and not local:
            name = model if weights.upper() == "DEFAULT" else f"{model.split('.')[0]}.{weights}"
            try:
                net = timm.create_model(name, pretrained=True)
            except Exception as exc:  # noqa: BLE001 - hub errors come in many types; report in one line
                raise DpcliError(
                    f"cannot get timm weights for {name} ({type(exc).__name__}; no internet?): "
                    "download them elsewhere and pass the file: --weights PATH"
                ) from None
        else:
            net = timm.create_model(model, pretrained=False)
            if weights is not None and local:
                load_state_file(net, weights, f"timm:{model}")
        return LibraryClassifier(
            net,
            spec.num_classes,
            f"timm:{model}",
            in_channels=spec.in_channels,
            expects_channels=int(getattr(net, "default_cfg", {}).get("input_size", (3,))[0]),
            head_module=spec.head_module,
        )

    def preprocessing(self, model: str, weights: str | None):
        """The pretrained config's eval transform (timm's ``transforms_imagenet_eval``: resize the shorter side
        to floor(size / crop_pct), center crop); read from timm's registry, nothing is downloaded."""
        import math

        from dpcli.models.preprocess import is_local, make_spec

        if not weights or is_local(weights):
            return None
        timm = _timm()
        self.check(model)
        name = model if weights.upper() == "DEFAULT" else f"{model.split('.')[0]}.{weights}"
        try:
            pretrained = timm.models.get_pretrained_cfg(name)
        except Exception:  # noqa: BLE001 - an unknown tag
            pretrained = None
        if pretrained is None:
            raise DpcliError(
                f"--weights {weights!r}: timm has no pretrained config {name!r} (timm.list_pretrained() lists them)"
            )
        cfg = timm.data.resolve_data_config(pretrained_cfg=pretrained.to_dict())
        if cfg.get("crop_mode", "center") != "center":
            raise DpcliError(f"timm:{name}: crop mode {cfg['crop_mode']!r} is not supported; pass --image-size N")
        size = cfg["input_size"][1:]
        resize = [math.floor(s / cfg["crop_pct"]) for s in size]
        return make_spec(size, resize, cfg["mean"], cfg["std"], cfg["interpolation"], f"timm:{name}")
