"""The one device resolver: ``"auto"`` is CUDA when available, else the CPU."""

from __future__ import annotations

import torch

from latentdit.errors import ConfigError


def resolve_device(name: str | torch.device | None = "auto", *, option: str = "device") -> torch.device:
    """``name`` as a device (``None`` or ``"auto"``: CUDA when available, else the CPU); a CUDA
    device without CUDA is a :class:`ConfigError` naming ``option`` (the setting that asked for it)."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option}={str(name)!r} but CUDA is not available; use 'cpu' or 'auto'")
    return dev
