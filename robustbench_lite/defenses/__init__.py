"""Defenses and detectors, one file each; ``base.py`` is what they build on (the :class:`Defense`
and :class:`Detector` protocols). A new defense is a new file here: the registry imports every
module of this package on first lookup.

``from robustbench_lite.defenses import X`` finds ``X`` in whichever module defines it."""
from robustbench_lite.registry import exports

__getattr__ = exports(__name__)
