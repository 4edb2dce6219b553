"""robustbench_lite: an adversarial-robustness benchmark harness that runs on CPUs and GPUs."""
from .numerics import pin as _pin

_pin()  # before anything here computes with torch: see robustbench_lite/numerics.py

__version__ = "0.1.0"
