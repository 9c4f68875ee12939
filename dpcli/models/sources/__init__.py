"""Model sources behind ``--arch``: one module each (builtin, torchvision, timm), see :mod:`dpcli.models.base`."""
