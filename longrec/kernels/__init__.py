"""Hot-path kernels (RecBLR's scan, LMN's product-key read) and a record of which backend each ran on."""

from __future__ import annotations

_BACKENDS_USED: dict[str, set[str]] = {}


def record_backend(kernel: str, backend: str) -> None:
    """Note that `kernel` ran on `backend` in this process (model metadata says whether Triton ran)."""
    _BACKENDS_USED.setdefault(kernel, set()).add(backend)


def backends_used() -> dict[str, list[str]]:
    """Every kernel that ran in this process and the backends it ran on."""
    return {kernel: sorted(backends) for kernel, backends in sorted(_BACKENDS_USED.items())}


def reset_backends_used() -> None:
    _BACKENDS_USED.clear()
