"""bort's GEMM microkernels (csrc/gemm/) against numpy, through the encoder's linear layer.

Odd M, N and K (1..67, M = 1, K off every block size, column tails) in fp32, bf16 and int8,
with the fused epilogue (bias, GELU, residual), on 1 and 2 threads; for every backend this
CPU can run: the default one, AVX2 forced (BORT_ISA=avx2) and MKL forced (BORT_GEMM=mkl).
Each backend runs in its own process, since the choice is made once per process.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from bort import _core

SHAPES = [(1, 1, 1), (1, 67, 45), (3, 16, 64), (7, 33, 17), (13, 48, 3), (37, 67, 45),
          (67, 50, 67), (1, 200, 130), (9, 1, 5), (128, 96, 64), (4, 64, 768)]
ERF = np.vectorize(math.erf)


def bf16_round(a: np.ndarray) -> np.ndarray:
    """Round float32 to bf16 (nearest even) and back, as the kernels convert."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row asymmetric u8 codes, scales and zero points, in the kernels' float32 steps."""
    lo = np.minimum(x.min(1), 0).astype(np.float32)
    hi = np.maximum(x.max(1), 0).astype(np.float32)
    s = np.where(hi > lo, (hi - lo) / np.float32(255), np.float32(1)).astype(np.float32)
    z = np.clip(np.rint(-lo / s), 0, 255).astype(np.float32)
    inv = (np.float32(1) / s).astype(np.float32)
    q = np.minimum(np.maximum(x * inv[:, None] + (z + np.float32(0.5))[:, None], 0), 255.49)
    return np.trunc(q).astype(np.int64), s.astype(np.float64), z.astype(np.int64)


def reference(x, w, b, r, dtype: str, int8_max: int) -> tuple[np.ndarray, np.ndarray]:
    """y = GELU(x · wᵀ + b) + r in float64 from the operands the kernel sees, and a tolerance
    per element (fp32 accumulation order; for int8, one activation code)."""
    if dtype == "bf16":
        x, w = bf16_round(x), bf16_round(w)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    scale = np.abs(x64) @ np.abs(w64).T + np.abs(b)
    if dtype == "int8":
        sw = np.maximum(np.abs(w64).max(1), 0) / int8_max
        sw[sw == 0] = 1
        wq = np.clip(np.rint(w64 / sw[:, None]), -int8_max, int8_max).astype(np.int64)
        xq, sx, zx = quantize_rows(x)
        acc = (xq - zx[:, None]) @ wq.T
        pre = sx[:, None] * sw[None, :] * acc
        slack = sx[:, None] * sw[None, :] * int8_max  # one code (FMA contraction at a tie)
    else:
        pre = x64 @ w64.T
        slack = 0.0
    pre = pre + b
    y = 0.5 * pre * (1 + ERF(pre / math.sqrt(2))) + r
    return y, 4e-6 * (scale + np.abs(r)) + slack + 1e-6


def check_backend() -> None:
    """Every dtype × shape × thread count of this process's backend against numpy."""
    int8_max = _core.backend()["int8_weight_max"]
    rng = np.random.default_rng(0)
    for dtype in _core.DTYPES:
        for m, n, k in SHAPES:
            x = rng.standard_normal((m, k)).astype(np.float32)
            w = (rng.standard_normal((n, k)) / math.sqrt(k)).astype(np.float32)
            b = rng.standard_normal(n).astype(np.float32)
            r = rng.standard_normal((m, n)).astype(np.float32)
            ref, tol = reference(x, w, b, r, dtype, int8_max)
            for threads in (1, 2):
                y = _core.Linear(w, dtype, threads)(x, b, "gelu", r)
                bad = np.abs(y - ref) > tol
                assert not bad.any(), (dtype, (m, n, k), threads, np.abs(y - ref).max())
            plain = _core.Linear(w, dtype)(x)  # no epilogue at all
            assert plain.shape == (m, n) and np.isfinite(plain).all()


BACKENDS = {
    "default": {},
    "avx2": {"BORT_ISA": "avx2"},
    "mkl": {"BORT_GEMM": "mkl"},
}


def _skip_reason(name: str) -> str | None:
    if name == "avx2" and _core.backend()["isa"] != "avx512":
        return "the default backend is already AVX2"
    return None


@pytest.mark.parametrize("name", list(BACKENDS))
def test_kernels_match_numpy(name: str) -> None:
    if reason := _skip_reason(name):
        pytest.skip(reason)
    env = {**os.environ, **BACKENDS[name]}
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import test_gemm; "
            "from bort import _core; print(_core.backend()['description']); "
            "test_gemm.check_backend()")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    print(out.stdout)
    assert out.returncode == 0, out.stderr[-3000:]


def test_backend_is_chosen_by_features() -> None:
    """The default backend runs bort's own kernel for every dtype whose instruction the CPU has
    (MKL only with AMX), and the forced ones do what they say."""
    be = _core.backend()
    feats = be["features"]
    if feats["amx"]:
        assert set(be["gemm"].values()) <= {"mkl", "mkl-amx"}
    else:
        assert be["gemm"]["fp32"] == f"own-{be['isa']}"
        assert be["gemm"]["bf16"] == ("own-avx512bf16" if feats["avx512_bf16"] else "mkl")
        assert be["gemm"]["int8"] == ("own-avx512vnni" if feats["avx512_vnni"] else "mkl")
    code = "from bort import _core; print(_core.backend()['description'])"
    for env, want in (({"BORT_GEMM": "mkl"}, "fp32: mkl, bf16: mkl"),
                      ({"BORT_ISA": "avx2"}, "avx2 (fp32: own-avx2, bf16: mkl, int8: mkl)")):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                             capture_output=True, text=True, timeout=60, check=True)
        assert want in out.stdout, out.stdout
    bad = subprocess.run([sys.executable, "-c", code], env={**os.environ, "BORT_GEMM": "fast"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "BORT_GEMM must be 'own' or 'mkl'" in bad.stderr


def test_linear_rejects_bad_shapes() -> None:
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="x must be \\(M, 5\\)"):
        _core.Linear(np.zeros((4, 5), np.float32))(x)
    with pytest.raises(ValueError, match="bias must have shape"):
        _core.Linear(np.zeros((4, 3), np.float32))(x, bias=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="dtype 'fp16' is not available"):
        _core.Linear(np.zeros((4, 3), np.float32), "fp16")
    with pytest.raises(ValueError, match="non-empty"):
        _core.Linear(np.zeros((0, 3), np.float32))


def test_peak_loops_run() -> None:
    """Each own kernel's register-only loop reports a rate; dtypes without one report 0."""
    be = _core.backend()
    for dtype in _core.DTYPES:
        rate = _core.gemm_peak(dtype, 0.02)
        assert (rate > 1e9) == be["gemm"][dtype].startswith("own"), (dtype, rate)
