"""`python -m cemr.data.prepare dataset=3dpw|h36m|video [overrides]`: raw data -> prepared dataset.

The CLI composes the same config as adapt.py and calls the body model's and the dataset's
`prepare` nodes (`prepare_assets`), the very functions a run calls when the prepared
files are missing. Overrides without a dot that name a key of the chosen dataset are taken as
`dataset.<key>` (so `dataset=video video_path=clip.mp4` works); `dataset.prepare.overwrite=true`
rebuilds.

Also home of the stamp every preparer writes: files are written atomically (cemr.atomic), and
`prepare.json` (the parameters the outputs were built with) is written last. A dataset dir counts
as prepared only when its stamp matches the parameters asked for and every split file exists, so
an interrupted run is redone rather than trusted. Split files in a dir that has neither a stamp nor
the `.prepare.building` mark of an interrupted build are someone else's: they are not overwritten
unless asked. Leftovers of killed processes (`remove_leftovers`) are removed by the next build.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from cemr.atomic import remove_leftovers, write_text_atomic

log = logging.getLogger(__name__)

STAMP_NAME = "prepare.json"
BUILDING_MARK = ".prepare.building"  # present from the start of a build until its stamp is written
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    """The form the stamp stores: paths as str, tuples as lists."""
    return json.loads(json.dumps(params, default=str))


def start_or_skip(
    out_dir: str | Path, splits: list[str], params: dict[str, Any], overwrite: bool = False
) -> bool:
    """True if `out_dir` already holds `splits` built with `params` (the caller returns at once).

    Otherwise marks the dir as being built, removes any old stamp (so a failed rebuild never passes
    for complete) and leftovers of killed builds, and returns False; the writers below create
    folders as needed. Raises FileExistsError, before writing anything, where `out_dir` holds split
    files that no build of this project made (no stamp, no build mark), unless `overwrite`.
    """
    out_dir = Path(out_dir).resolve()
    stamp = out_dir / STAMP_NAME
    found = None
    if stamp.is_file():
        try:
            found = json.loads(stamp.read_text())
        except (OSError, ValueError):
            pass
    if not overwrite and found == _jsonable(params) and all((out_dir / f"{s}.npz").is_file() for s in splits):
        return True
    ours = isinstance(found, dict) or (out_dir / BUILDING_MARK).is_file()
    theirs = [f"{s}.npz" for s in splits if (out_dir / f"{s}.npz").exists()]
    if stamp.exists() and not isinstance(found, dict):
        theirs.append(STAMP_NAME)
    if theirs and not ours and not overwrite:
        raise FileExistsError(
            f"{out_dir} holds {', '.join(theirs)} but no valid {STAMP_NAME}: not prepared by this project "
            "(or by a version that left no mark), so they are not overwritten; choose another dataset.root, "
            "or pass dataset.prepare.overwrite=true to replace them"
        )
    write_text_atomic(out_dir / BUILDING_MARK, json.dumps(_jsonable(params), sort_keys=True))
    stamp.unlink(missing_ok=True)
    remove_leftovers(out_dir, recursive=True)
    return False


def mark_prepared(out_dir: str | Path, params: dict[str, Any]) -> None:
    """Write the stamp, last, once every output is in place."""
    write_text_atomic(Path(out_dir) / STAMP_NAME, json.dumps(_jsonable(params), indent=2, sort_keys=True))
    (Path(out_dir) / BUILDING_MARK).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- CLI


def _dataset_shorthand(overrides: list[str], config_dir: Path, config_name: str) -> list[str]:
    """Rewrite `key=value` to `dataset.key=value` where `key` is a dataset key and not a top-level one."""
    from hydra import compose, initialize_config_dir

    groups = {p.name for p in config_dir.iterdir() if p.is_dir()}

    def is_shorthand(item: str) -> bool:
        key = item.split("=", 1)[0]
        return "=" in item and key.isidentifier() and key not in groups

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        base = compose(config_name=config_name, overrides=[o for o in overrides if not is_shorthand(o)])

    def rewritten(item: str) -> str:
        key = item.split("=", 1)[0]
        if is_shorthand(item) and key not in base and key in base.dataset:
            return f"dataset.{item}"
        return item  # anything else is Hydra's to accept or reject

    return [rewritten(o) for o in overrides]


def prepare(node: DictConfig | None) -> Path | None:
    """Build a cached asset (body model, prepared dataset) from its config's `prepare` node.

    The node's `_target_` is idempotent: it returns at once when its outputs already exist and
    fails with a clear message when the raw inputs it needs are absent.
    """
    if node is None:
        return None
    return instantiate(node)


def check_body_matches_dataset(cfg: DictConfig) -> None:
    """A dataset whose ground truth is defined in one body model must be scored with that model."""
    needed = cfg.dataset.get("body") if "dataset" in cfg else None
    if needed and "body" in cfg and cfg.body.name != needed:
        raise ValueError(
            f"dataset={cfg.dataset.name} has its ground truth in the '{needed}' body model, but body="
            f"{cfg.body.name} is configured; add body={needed} to the command line"
        )


def prepare_assets(cfg: DictConfig) -> None:
    """Build everything the configured body model and dataset need, in dependency order."""
    check_body_matches_dataset(cfg)
    for group in ("body", "dataset"):
        if group in cfg:
            prepare(cfg[group].get("prepare"))


def main(
    argv: list[str] | None = None, config_dir: str | Path = CONFIG_DIR, config_name: str = "adapt"
) -> Path:
    """Compose the config with `argv` overrides, build body model and dataset, return the dataset dir."""
    from hydra import compose, initialize_config_dir

    config_dir = Path(config_dir)
    overrides = _dataset_shorthand(list(sys.argv[1:] if argv is None else argv), config_dir, config_name)
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    if cfg.dataset.get("prepare") is None:
        raise ValueError(f"dataset '{cfg.dataset.name}' has no prepare node; nothing to build")
    prepare_assets(cfg)
    root = Path(cfg.dataset.root)
    print(f"prepared dataset '{cfg.dataset.name}' in {root}")
    for npz in sorted(root.glob("*.npz")):
        with np.load(npz) as archive:
            print(f"  {npz.name}: {len(archive['imgname'])} frames")
    return root


if __name__ == "__main__":
    main()
