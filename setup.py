"""Packages and where they live; everything else is in pyproject.toml.

The checkout's top-level folders `schemas/`, `producers/` and `consumers/` install as
`streamrl.schemas`, `streamrl.producers` and `streamrl.consumers`, so a wheel puts one package,
`streamrl`, into site-packages (tests/core/test_namespace.py checks the built wheel).
"""

from setuptools import find_packages, setup

FOLDERS = ("schemas", "producers", "consumers")  # the same tuple as streamrl/__init__.py

packages = find_packages(include=["streamrl", "streamrl.*"])
package_dir = {"streamrl": "streamrl"}
for folder in FOLDERS:
    package_dir[f"streamrl.{folder}"] = folder
    packages += [f"streamrl.{name}" for name in find_packages(include=[folder, f"{folder}.*"])]

setup(packages=packages, package_dir=package_dir)
