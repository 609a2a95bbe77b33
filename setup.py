"""Build hook for the one C extension, ``ecac._opscan`` (everything else is in pyproject.toml)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("ecac._opscan", ["src/ecac/_opscan.c"], extra_compile_args=["-O2", "-Wall"])])
