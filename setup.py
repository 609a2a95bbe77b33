"""Build hook for the one C extension, ``ecac._native`` (everything else is in pyproject.toml)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("ecac._native", ["src/ecac/_native.c"], extra_compile_args=["-O2", "-Wall"], libraries=["dl"])])
