"""Attacks, one file each; ``base.py`` is what they build on (the :class:`Attack` protocol and the
gradient loop). A new attack is a new file here: the registry imports every module of this
package on first lookup.

``from robustbench_lite.attacks import X`` finds ``X`` in whichever module defines it."""
from robustbench_lite.registry import exports

__getattr__ = exports(__name__)
