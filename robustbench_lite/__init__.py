"""robustbench_lite: an adversarial-robustness benchmark harness that runs on CPUs."""
__version__ = "0.1.0"
