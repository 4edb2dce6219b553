"""Defenses, one file each. Importing this package registers them in ``DEFENSES``."""
