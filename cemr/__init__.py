"""CEMR: multi-level test-time adaptation of 3D human mesh recovery to out-of-domain video."""

__version__ = "0.1.0"
