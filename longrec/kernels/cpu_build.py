"""Building the C++ CPU kernels (``torch.utils.cpp_extension``), shared by the scan and DIN kernels."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# torch leaves a build's lock file behind when the building process dies, and every later build then
# waits on it forever; a lock older than any real build (~20 s) is such a leftover.
STALE_BUILD_LOCK_SECONDS = 600


def kernel_cache_root() -> Path:
    """Where kernels are built and cached: ``$LONGREC_KERNEL_CACHE`` or ~/.cache/longrec/kernels."""
    return Path(os.environ.get("LONGREC_KERNEL_CACHE") or Path.home() / ".cache" / "longrec" / "kernels")


def build_cpu_extension(name: str, source: Path, build_dir: Path, cflags: list[str]) -> Any:
    """Build (or load the cached build of) one C++ source as a Python module; raises where it cannot."""
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:
        # The ninja wheel's binary sits in the venv's bin/, which is not on PATH when the venv's python is
        # run directly (make, kfp.local tasks).
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    build_dir.mkdir(parents=True, exist_ok=True)
    lock = build_dir / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_BUILD_LOCK_SECONDS:
        logger.warning("removing a stale build lock left by a killed build: %s", lock)
        lock.unlink(missing_ok=True)
    logger.info("loading the CPU kernel %s (built once per machine, ~20 s, into %s)", name, build_dir)
    return cpp_extension.load(
        name=name,
        sources=[str(source)],
        extra_cflags=cflags,
        extra_ldflags=["-fopenmp"] if "-fopenmp" in cflags else [],
        build_directory=str(build_dir),
        verbose=False,
    )
