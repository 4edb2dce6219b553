"""Experiments, one file each; ``base.py`` is the :class:`Experiment` protocol and its runner. A
new experiment is a new file here: the registry imports every module of this package on first
lookup.

``from robustbench_lite.experiments import X`` finds ``X`` in whichever module defines it."""
from robustbench_lite.registry import exports

__getattr__ = exports(__name__)
