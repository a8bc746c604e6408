"""CEMR: multi-level test-time adaptation of 3D human mesh recovery to out-of-domain video."""

import contextlib
import io
import logging
import warnings

__version__ = "0.1.0"


def _silence_known_noise() -> None:
    """Quiet what third-party packages print on every command and that says nothing about the run:
    gym's deprecation notice (learn2learn imports gym, which prints it to stderr on import),
    Lightning's `_pytree` deprecation, its "modules in eval mode" warning (adaptation keeps the model
    in eval mode on purpose: BatchNorm keeps its source statistics) and its tips and device lines,
    and the non-leaf `.grad` warning learn2learn's clone of a GRU raises (it reads each parameter's
    grad, which a clone's non-leaf parameters never have)."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(ImportError):
        import gym  # noqa: F401
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r"The \.grad attribute of a Tensor that is not a leaf Tensor")
    # pytorch_lightning / lightning_fabric: the standalone packages' names, which a dependency that
    # imports them makes the rank-zero logger go by
    for package in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):
        logging.getLogger(f"{package}.utilities.rank_zero").setLevel(logging.WARNING)


_silence_known_noise()
