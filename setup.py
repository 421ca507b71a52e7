"""Installs ``conf/`` (the Hydra configs, kept at the top of the repository) as the package data
``fewmult/conf/`` of the wheel; everything else about the package is in pyproject.toml."""

from pathlib import Path

from setuptools import find_namespace_packages, setup

CONF = Path(__file__).parent / "conf"
CONF_PACKAGES = ["fewmult.conf"] + [
    "fewmult.conf." + ".".join(d.relative_to(CONF).parts) for d in sorted(CONF.rglob("*")) if d.is_dir()
]

setup(
    packages=[
        *find_namespace_packages(
            include=["fewmult", "fewmult.*", "hydra_plugins", "hydra_plugins.*"], exclude=["*.__pycache__"]
        ),
        *CONF_PACKAGES,
    ],
    package_dir={"fewmult.conf": "conf"},
    package_data={"fewmult": ["published.csv"], **{name: ["*.yaml"] for name in CONF_PACKAGES}},
)
