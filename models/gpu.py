"""Making implicit's CUDA extension loadable from pip-installed NVIDIA/RAPIDS wheels.

implicit 0.7.3's PyPI wheel ships `implicit/gpu/_cuda.so` built for CUDA 13. It loads only when
`import rmm` works (package rmm-cu13) and libcublas.so.13, libcublasLt.so.13 and libcurand.so.10 can
be found. The `gpu` extra (`pip install -e '.[gpu]'`) installs those wheels; they put the libraries
under site-packages/nvidia/cu13/lib, which the dynamic loader does not search, so they are preloaded
here (RTLD_GLOBAL) before implicit.gpu is first imported.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

CUDA_LIBRARIES = ("nvidia/cu13/lib/libcublasLt.so.13", "nvidia/cu13/lib/libcublas.so.13",
                  "nvidia/cu13/lib/libcurand.so.10")
INSTALL_HINT = ("install the GPU runtime wheels with `pip install -e '.[gpu]'` (rmm-cu13, nvidia-cublas, "
                "nvidia-curand for CUDA 13) on a machine with an NVIDIA driver for CUDA 13")


def preload_cuda_libraries() -> dict[str, str]:
    """Load the CUDA libraries found on sys.path; returns {library: path or error}."""
    found: dict[str, str] = {}
    for rel in CUDA_LIBRARIES:
        name = Path(rel).name
        for entry in sys.path:
            path = Path(entry) / rel
            if path.exists():
                try:
                    ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
                    found[name] = str(path)
                except OSError as exc:
                    found[name] = f"failed: {exc}"
                break
        else:
            found[name] = "not found"
    return found


def cuda_status() -> tuple[bool, str]:
    """(implicit can use CUDA, a reason a person can act on when it cannot)."""
    libs = preload_cuda_libraries() if "implicit.gpu" not in sys.modules else {}
    import implicit.gpu

    if getattr(implicit.gpu, "HAS_CUDA", False):
        return True, "implicit CUDA extension loaded"
    missing = [f"{n}: {state}" for n, state in libs.items() if not state.startswith("/")]
    try:
        import rmm  # noqa: F401
        rmm_state = "rmm imports"
    except Exception as exc:  # any failure to import rmm disables implicit's GPU path
        rmm_state = f"rmm does not import ({type(exc).__name__}: {exc})"
    try:
        from implicit.gpu import _cuda  # noqa: F401
        ext_state = "extension imports but reports no usable device (driver / GPU missing?)"
    except Exception as exc:
        ext_state = f"extension does not load ({exc})"
    detail = "; ".join([rmm_state, ext_state] + missing)
    return False, f"implicit.gpu.HAS_CUDA is False: {detail}. To fix: {INSTALL_HINT}"
