"""Installs ``conf/`` (the Hydra configs, kept at the top of the repository) as the package data
``fewmult/conf/`` of the wheel, and builds the compiled kernels of :mod:`fewmult.runtime`; everything
else about the package is in pyproject.toml."""

from pathlib import Path

from setuptools import Extension, find_namespace_packages, setup
from setuptools.command.build_ext import build_ext

CONF = Path(__file__).parent / "conf"
CONF_PACKAGES = ["fewmult.conf"] + [
    "fewmult.conf." + ".".join(d.relative_to(CONF).parts) for d in sorted(CONF.rglob("*")) if d.is_dir()
]
KERNELS = "fewmult/runtime/csrc"
OPENMP = "-fopenmp"


class KernelsWithOrWithoutOpenMP(build_ext):
    """Builds the kernels with OpenMP threads where the compiler has OpenMP, else single-threaded.

    The extension is optional: where no C compiler works, the package installs without it and
    ``fewmult.runtime`` runs its NumPy path, saying so in one line.
    """

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            if OPENMP not in ext.extra_compile_args:
                raise
            print(f"fewmult: building the kernels without OpenMP (one thread): {exc}")
            ext.extra_compile_args = [a for a in ext.extra_compile_args if a != OPENMP]
            ext.extra_link_args = [a for a in ext.extra_link_args if a != OPENMP]
            super().build_extension(ext)


kernels = Extension(
    "fewmult.runtime._kernels",
    sources=[
        f"{KERNELS}/{name}.c"
        for name in (
            "module",
            "cpu",
            "bitpack",
            "xnor_gemm",
            "amx_gemm",
            "select_gemm",
            "select_lut",
            "float_gemm",
            "conv",
            "pool",
            "residual",
            "chain",
        )
    ],
    depends=[f"{KERNELS}/{name}.h" for name in ("fewmult_kernels", "simd")],
    extra_compile_args=["-O3", "-std=c11", OPENMP],
    extra_link_args=[OPENMP],
    optional=True,
)

setup(
    packages=[
        *find_namespace_packages(
            include=["fewmult", "fewmult.*", "hydra_plugins", "hydra_plugins.*"],
            exclude=["*.__pycache__", "fewmult.runtime.csrc"],
        ),
        *CONF_PACKAGES,
    ],
    package_dir={"fewmult.conf": "conf"},
    package_data={"fewmult": ["published.csv"], **{name: ["*.yaml"] for name in CONF_PACKAGES}},
    ext_modules=[kernels],
    cmdclass={"build_ext": KernelsWithOrWithoutOpenMP},
)
