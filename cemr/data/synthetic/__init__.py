"""Embedded synthetic two-domain human video benchmark (studio source -> in-the-wild target).

`build_benchmark(out_dir, body_model_dir, ...)` writes the prepared-dataset layout (images and
`source_train.npz`, `source_test.npz`, `target_test.npz`); `python -m cemr.data.synthetic preview`
draws a contact sheet of both domains.
"""

from cemr.data.synthetic.build import build_benchmark

__all__ = ["build_benchmark"]
