"""Map the four top-level folders onto the ``cellgym`` namespace (``registry/`` -> ``cellgym.registry``, ...).

Subpackages are found automatically, so adding ``predictors/<family>/`` needs no change here. Folders
without an ``__init__.py`` that hold data the code reads (``predictors/grn/models/*.txt``) are found as
namespace packages, so ``[tool.setuptools.package-data]`` ships their files in the wheel too (a plain
``find_packages`` skips them: the wheel then lacks the shipped Boolean models). The small
``cellgym/`` folder is the top-level package itself (``cellgym.__version__``, ``python -m cellgym``).
"""

from setuptools import find_namespace_packages, setup

ROOTS = ("registry", "predictors", "envs", "agents")

packages: list[str] = ["cellgym"]
package_dir: dict[str, str] = {"cellgym": "cellgym"}
for root in ROOTS:
    package_dir[f"cellgym.{root}"] = root
    packages.append(f"cellgym.{root}")
    packages += [f"cellgym.{root}.{sub}" for sub in find_namespace_packages(root, exclude=["*__pycache__*"])]

setup(packages=packages, package_dir=package_dir)
