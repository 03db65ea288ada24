"""Build script: the package list and (added by the build issue) the compiled core."""

from setuptools import find_packages, setup

# cli/ is installed as mtt_fast.cli (see package-dir in pyproject.toml).
PACKAGES = find_packages(include=["mtt_fast", "mtt_fast.*"]) + ["mtt_fast.cli"]

setup(packages=PACKAGES)
