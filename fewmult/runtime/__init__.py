"""Run networks exported by ``python -m fewmult.export`` on compiled binary kernels.

    >>> import fewmult.runtime
    >>> net = fewmult.runtime.load("outputs/.../export/model.npz")
    >>> net.predict(images)          # the class of every image (N, *input_shape), float32
    >>> net.describe()               # which kernel runs each op

Sign-activation layers run as XNOR + popcount on packed bits, binary and ternary weights with
float activations as selected sums over packed weights (``csrc/``: bit packing, binary GEMM,
selection GEMM, one file each with its portable reference loop), on the widest instructions the
CPU has (AVX-512 VPOPCNTDQ, AVX2, portable C), with OpenMP threads. Imports NumPy only (no torch).
Without compiled kernels (no C compiler at install time) the NumPy reference
(:mod:`fewmult.packed_forward`) runs, and says so in one line.
"""

from fewmult.runtime.kernels import best_isa, max_threads, unavailable_reason
from fewmult.runtime.network import CompiledNetwork, load

__all__ = ["CompiledNetwork", "best_isa", "load", "max_threads", "unavailable_reason"]
