"""Build glue: the cffi extension gatewayd._native is assembled by native/build_native.py."""

from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
