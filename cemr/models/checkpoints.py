"""Loading foreign checkpoints (SPIN, DynaBOA, VIBE, VideoMAE) by their real key layout, and CEMR's own.

Every file goes through `torch.load(weights_only=True)` (`cemr.safe_io.load_torch`). Each loader
maps the file's keys onto the model's names, compares them and returns a `LoadReport` listing
missing, unexpected and mis-shaped keys with their shapes; weights holding NaN or inf are refused.
`strict=True` raises `CheckpointError` with the report before touching any weight; otherwise every
key that fits is copied and the rest is reported (and logged). Layouts: FORMATS.md sections 6 and 10.
A CEMR checkpoint's stored config may only build one of the project's models from plain values
(`config_problem`): it is data, never a recipe for running code.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cemr.atomic import write_atomic
from cemr.models.hmr import HMR
from cemr.models.vibe import VIBE
from cemr.models.video_encoder import VideoEncoder, VideoMAEPretrainer
from cemr.safe_io import load_torch

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
SPIN_HEAD_NAMES = ("fc1", "fc2", "decpose", "decshape", "deccam", "init_pose", "init_shape", "init_cam")
VIDEOMAE_PRETRAIN_ONLY = ("decoder.", "encoder_to_decoder.", "mask_token")
CEMR_FORMAT = "cemr-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint does not fit the model (strict loading) or is not in the expected layout."""


def _shape(value: Any) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


@dataclass
class LoadReport:
    """What a checkpoint load did: keys loaded, and every key that did not fit, with shapes."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[tuple[str, tuple]] = field(default_factory=list)  # (model key, model shape)
    unexpected: list[tuple[str, Any]] = field(default_factory=list)  # (file key, file shape)
    mismatched: list[tuple[str, Any, tuple]] = field(default_factory=list)  # (key, file shape, model shape)
    ignored: list[str] = field(default_factory=list)  # file keys skipped on purpose (not model weights)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [
            f"checkpoint {self.source}: {len(self.loaded)} tensors fit, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} mis-shaped, "
            f"{len(self.ignored)} ignored"
        ]
        lines += [f"  missing in file:   {k} (model {s})" for k, s in self.missing]
        lines += [f"  unexpected in file: {k} {s}" for k, s in self.unexpected]
        lines += [f"  mis-shaped:        {k} file {f} vs model {m}" for k, f, m in self.mismatched]
        if self.ignored:
            lines.append(f"  ignored on purpose: {_summarise(self.ignored)}")
        return "\n".join(lines)


def _summarise(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_into(
    model: nn.Module,
    state_dict: Mapping[str, Any],
    source: str,
    expected_prefixes: Iterable[str] | None = None,
    ignored: Iterable[str] = (),
    strict: bool = False,
) -> LoadReport:
    """Copy the tensors of `state_dict` (already in the model's names) into `model`.

    expected_prefixes: the model keys this file should provide (missing ones are reported); all
    model keys when None. ignored: file keys skipped on purpose, listed in the report.
    """
    target = model.state_dict()
    prefixes = tuple(expected_prefixes) if expected_prefixes is not None else ("",)
    report = LoadReport(source=source, ignored=list(ignored))
    fits = {}
    for key, value in state_dict.items():
        if key not in target:
            report.unexpected.append((key, _shape(value)))
        elif not isinstance(value, torch.Tensor) or value.shape != target[key].shape:
            report.mismatched.append((key, _shape(value), tuple(target[key].shape)))
        else:
            fits[key] = value
    bad = first_non_finite(fits)
    if bad is not None:
        raise CheckpointError(
            f"{source}: tensor '{bad}' holds NaN or inf values; nothing was loaded (a diverged or "
            "corrupt checkpoint)"
        )
    report.loaded = list(fits)
    report.missing = [
        (key, tuple(value.shape))
        for key, value in target.items()
        if key.startswith(prefixes) and key not in state_dict
    ]
    if strict and not report.ok:
        raise CheckpointError(f"strict loading failed, nothing was loaded.\n{report}")
    with torch.no_grad():
        for key, value in fits.items():
            target[key].copy_(value)
    if not report.ok:
        log.warning("%s", report)
    return report


def first_non_finite(tensors: Mapping[str, Any]) -> str | None:
    """The first key whose value is a floating tensor holding NaN or inf; None when there is none."""
    for key, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not value.isfinite().all():
            return key
    return None


def strip_prefix(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Remove a leading `prefix` (e.g. DataParallel's / learn2learn's 'module.') from every key having it."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def _state_dict_from(checkpoint: Any, path: PathLike, keys: tuple[str, ...], layout: str) -> dict[str, Any]:
    """The first of `keys` present in the loaded dict (or the dict itself when '' is among them)."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path}: expected a dict ({layout}), found {type(checkpoint).__name__}")
    for key in keys:
        if key == "":
            return dict(checkpoint)
        if key in checkpoint:
            if not isinstance(checkpoint[key], Mapping):
                raise CheckpointError(
                    f"{path}: entry '{key}' should be a state dict ({layout}), "
                    f"found {type(checkpoint[key]).__name__}"
                )
            return dict(checkpoint[key])
    raise CheckpointError(
        f"{path}: no state dict under {' or '.join(repr(k) for k in keys)} ({layout}); "
        f"found keys {sorted(map(str, checkpoint))[:12]}"
    )


def _require(model: nn.Module, attributes: tuple[str, ...], layout: str) -> None:
    if not all(hasattr(model, a) for a in attributes):
        raise TypeError(
            f"a {layout} checkpoint loads into a model with submodules {attributes}; "
            f"{type(model).__name__} lacks {[a for a in attributes if not hasattr(model, a)]}"
        )


# --- SPIN / DynaBOA (FORMATS.md 6.1, 6.2) -------------------------------------------------------


def spin_key_to_cemr(key: str) -> str:
    """SPIN's flat HMR names -> CEMR's: head names go under `regressor.`, the ResNet under `trunk.`."""
    return ("regressor." if key.split(".")[0] in SPIN_HEAD_NAMES else "trunk.") + key


def cemr_key_to_spin(key: str) -> str:
    """Inverse of `spin_key_to_cemr` (for writing CEMR weights in SPIN's layout)."""
    for prefix in ("regressor.", "trunk."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    raise ValueError(f"key '{key}' is neither under trunk. nor regressor.")


def _load_hmr_layout(path: PathLike, model: nn.Module, layout: str, strict: bool) -> LoadReport:
    _require(model, ("trunk", "regressor"), layout)
    state_dict = _state_dict_from(load_torch(path), path, ("model",), layout)
    mapped = {spin_key_to_cemr(k): v for k, v in strip_prefix(state_dict, "module.").items()}
    return load_state_dict_into(model, mapped, f"{path} ({layout})", ("trunk.", "regressor."), strict=strict)


def load_spin_checkpoint(path: PathLike, model: nn.Module, strict: bool = False) -> LoadReport:
    """SPIN `model_checkpoint.pt` (dict['model']: BatchNorm ResNet-50 + head) into an HMR, or a VIBE's
    trunk + regressor (how VIBE initialises its regressor)."""
    return _load_hmr_layout(path, model, "SPIN model_checkpoint.pt", strict)


def load_dynaboa_checkpoint(path: PathLike, model: nn.Module, strict: bool = False) -> LoadReport:
    """DynaBOA `basemodel.pt` (dict['model']: GroupNorm ResNet-50 + head, keys maybe 'module.'-prefixed)."""
    return _load_hmr_layout(path, model, "DynaBOA basemodel.pt", strict)


# --- VIBE (FORMATS.md 6.3) ----------------------------------------------------------------------


def load_vibe_checkpoint(path: PathLike, model: nn.Module, strict: bool = False) -> LoadReport:
    """VIBE `vibe_model_*.pth.tar` (dict['gen_state_dict']) into a VIBE's encoder + regressor.

    VIBE's registered SMPL buffers (`regressor.smpl.*`) are skipped; the trunk comes from SPIN
    (`load_spin_checkpoint`), as in VIBE, whose generator file holds no trunk.
    """
    layout = "VIBE generator"
    _require(model, ("encoder", "regressor"), layout)
    state_dict = strip_prefix(
        _state_dict_from(load_torch(path), path, ("gen_state_dict",), layout), "module."
    )
    smpl = [k for k in state_dict if k.startswith("regressor.smpl.")]
    weights = {k: v for k, v in state_dict.items() if not k.startswith("regressor.smpl.")}
    return load_state_dict_into(
        model, weights, f"{path} ({layout})", ("encoder.", "regressor."), smpl, strict
    )


# --- VideoMAE (FORMATS.md 10) -------------------------------------------------------------------

_HF_RENAMES = (  # (HF pattern, original replacement), applied in order after 'videomae.' is removed
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"^decoder\.decoder_layers\.(\d+)\.", r"decoder.blocks.\1."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.attention\.(q_bias|v_bias)$", r".attn.\1"),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
)
_HF_QKV = re.compile(r"^(.*)\.attention\.attention\.(query|key|value)\.weight$")


def videomae_hf_to_original(state_dict: Mapping[str, Any], source: str = "state dict") -> dict[str, Any]:
    """HF transformers VideoMAE names -> the original repo's, concatenating query, key, value into qkv."""
    converted: dict[str, Any] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("videomae.")
        match = _HF_QKV.match(key)
        if match:
            qkv.setdefault(match.group(1), {})[match.group(2)] = value
            continue
        for pattern, replacement in _HF_RENAMES:
            key = re.sub(pattern, replacement, key)
        converted[key] = value
    for layer, parts in qkv.items():
        absent = [p for p in ("query", "key", "value") if p not in parts]
        if absent:
            raise CheckpointError(
                f"{source}: HF VideoMAE layer '{layer}' lacks attention.attention.{absent[0]}.weight"
            )
        name = re.sub(r"^encoder\.layer\.(\d+)$", r"blocks.\1", layer)
        name = re.sub(r"^decoder\.decoder_layers\.(\d+)$", r"decoder.blocks.\1", name)
        converted[f"{name}.attn.qkv.weight"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0
        )
    return converted


def _is_encoder_key(key: str) -> bool:
    """True for a canonical VideoMAE key of the encoder (not the pretraining decoder side)."""
    return not key.startswith(VIDEOMAE_PRETRAIN_ONLY)


def load_videomae_checkpoint(path: PathLike, model: nn.Module, strict: bool = False) -> LoadReport:
    """A VideoMAE checkpoint (original fine-tuned or pretraining layout, or HF transformers) into a
    VideoEncoder or a VideoMAEPretrainer.

    Into a VideoEncoder, the pretraining decoder (`decoder.*`, `encoder_to_decoder`, `mask_token`)
    and the classifier `head.*` are ignored on purpose. Choose the encoder's `final_norm` to match
    the file: 'norm' for pretraining checkpoints, 'fc_norm' for fine-tuned ones.
    """
    # Official pretraining checkpoints also store their argparse options; Namespace is a plain record.
    checkpoint = load_torch(path, allowed_globals=[argparse.Namespace])
    state_dict = strip_prefix(
        _state_dict_from(checkpoint, path, ("model", "module", ""), "VideoMAE"), "module."
    )
    hf = any(".encoder.layer." in f".{k}" or k.startswith("decoder.decoder_layers.") for k in state_dict)
    layout = "VideoMAE, HF transformers layout" if hf else "VideoMAE"
    if hf:
        state_dict = videomae_hf_to_original(state_dict, str(path))
    # Canonical form: encoder keys bare ('blocks.0...'), pretraining keys as in the original repo.
    state_dict = {k.removeprefix("encoder."): v for k, v in state_dict.items()}
    if isinstance(model, VideoMAEPretrainer):
        state_dict = {(f"encoder.{k}" if _is_encoder_key(k) else k): v for k, v in state_dict.items()}
        return load_state_dict_into(model, state_dict, f"{path} ({layout})", strict=strict)
    if not isinstance(model, VideoEncoder):
        raise TypeError(
            "a VideoMAE checkpoint loads into a VideoEncoder or VideoMAEPretrainer, "
            f"not {type(model).__name__}"
        )
    skip = [k for k in state_dict if not _is_encoder_key(k) or k.startswith("head.")]
    weights = {k: v for k, v in state_dict.items() if k not in skip}
    return load_state_dict_into(model, weights, f"{path} ({layout})", ignored=skip, strict=strict)


# --- CEMR's own checkpoints ---------------------------------------------------------------------


# A checkpoint's config may only build one of these, and holds plain values only: it comes from a
# file, so it must never choose what code runs (as Hydra's `_target_` anywhere inside it would).
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    name: cls
    for cls in (HMR, VIBE, VideoEncoder)
    for name in (f"cemr.models.{cls.__name__}", f"{cls.__module__}.{cls.__qualname__}")
}
_BUILD_KEYS = ("_target_", "_convert_")  # top-level Hydra keys a saved config may hold
_SPECIAL_KEY = re.compile(r"_.*_")  # Hydra's reserved keys: _target_, _partial_, _args_, _recursive_, ...
_MAX_CONFIG_DEPTH = 16


def _unplain(value: Any, key: str, depth: int = 0) -> tuple[str, str] | None:
    """(dotted key, what is wrong) for the first part of `value` that is not plain data; None if all is."""
    if depth > _MAX_CONFIG_DEPTH:
        return key, f"is nested deeper than {_MAX_CONFIG_DEPTH} levels"
    if isinstance(value, Mapping):
        for name, item in value.items():
            if not isinstance(name, str):
                return key, f"has a non-string key {name!r}"
            dotted = f"{key}.{name}" if key else name
            if _SPECIAL_KEY.fullmatch(name) and not (depth == 0 and name in _BUILD_KEYS):
                return dotted, "is a Hydra special key"
            found = _unplain(item, dotted, depth + 1)
            if found:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _unplain(item, f"{key}[{index}]", depth + 1)
            if found:
                return found
    elif isinstance(value, str):
        if "${" in value:
            return key, f"holds an interpolation ({value!r})"
    elif value is not None and not isinstance(value, bool | int | float):
        return key, f"is a {type(value).__name__}, not plain data (int, float, bool, str, None, list, dict)"
    return None


def config_problem(config: Any) -> tuple[str, str] | None:
    """(key, what is wrong) when `config` may not be stored in or built from a checkpoint, else None.

    Allowed: `_target_` naming one of MODEL_CLASSES, `_convert_`, and parameters of that class with
    plain values (no Hydra special keys, no `${...}` interpolations, at any depth).
    """
    if not isinstance(config, Mapping):
        return "config", f"is a {type(config).__name__}, expected a dict"
    target = config.get("_target_")
    if not isinstance(target, str) or target not in MODEL_CLASSES:
        return "_target_", f"is {target!r}; expected one of the project's models {sorted(MODEL_CLASSES)}"
    found = _unplain(config, "")
    if found:
        return found
    parameters = inspect.signature(MODEL_CLASSES[target]).parameters
    unknown = [k for k in config if k not in parameters and k not in _BUILD_KEYS]
    return (unknown[0], f"is not a parameter of {MODEL_CLASSES[target].__name__}") if unknown else None


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """The model a config node describes; `_target_` may only name one of the project's MODEL_CLASSES."""
    target = config.get("_target_")
    if target not in MODEL_CLASSES:
        raise ValueError(f"model config '_target_' {target!r} is not one of {sorted(set(MODEL_CLASSES))}")
    return MODEL_CLASSES[target](**{k: v for k, v in config.items() if k not in _BUILD_KEYS})


@dataclass
class CEMRCheckpoint:
    model: nn.Module
    config: dict[str, Any]  # the model's config node, `_target_` included
    extra: dict[str, Any]
    report: LoadReport


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    config: Mapping[str, Any] | DictConfig,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the model's state dict with the config that builds it (see `config_problem`).

    `extra` holds other tensors / plain values to keep alongside (e.g. a projection head's state
    dict); everything must be loadable with weights_only=True. The write is atomic. A config that
    `load_checkpoint` would refuse is refused here, before anything is written.
    """
    config = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config)
    if "_target_" not in config:
        raise ValueError(
            f"config for {type(model).__name__} has no '_target_'; cannot rebuild the model from it"
        )
    problem = config_problem(config)
    if problem:
        raise ValueError(f"{path}: config key '{problem[0]}' {problem[1]}; a checkpoint cannot store it")
    if MODEL_CLASSES[config["_target_"]] is not type(model):
        raise ValueError(f"config '_target_' {config['_target_']} does not build a {type(model).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CEMR_FORMAT,
        "config": config,
        "state_dict": model.state_dict(),
        "extra": dict(extra or {}),
    }
    write_atomic(path, lambda file: torch.save(payload, file))
    return path


def load_checkpoint(path: PathLike, strict: bool = True, **overrides: Any) -> CEMRCheckpoint:
    """Rebuild the model of a `save_checkpoint` file and load its weights (on CPU).

    The stored config is checked (`config_problem`) before anything is built, and the weights and
    the extra state dicts must be finite. overrides replace config entries before building, e.g.
    `mean_params=` when the file moved.
    """
    checkpoint = load_torch(path)
    if not isinstance(checkpoint, Mapping) or checkpoint.get("format") != CEMR_FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path}: not a CEMR checkpoint (expected format '{CEMR_FORMAT}', found {found!r}); "
            "foreign files load with load_spin_checkpoint / load_dynaboa_checkpoint / load_vibe_checkpoint / "
            "load_videomae_checkpoint"
        )
    problem = config_problem(checkpoint.get("config"))
    if problem:
        raise CheckpointError(
            f"{path}: config key '{problem[0]}' {problem[1]}; refusing to build a model from it"
        )
    extra = checkpoint.get("extra", {})
    if not isinstance(extra, Mapping):
        raise CheckpointError(f"{path}: entry 'extra' should be a dict, found {type(extra).__name__}")
    for name, tensors in extra.items():
        bad = first_non_finite(tensors) if isinstance(tensors, Mapping) else None
        if bad is not None:
            raise CheckpointError(f"{path}: tensor 'extra.{name}.{bad}' holds NaN or inf values")
    trunk = checkpoint["config"].get("trunk")
    if isinstance(trunk, str) and ":" in trunk:
        raise CheckpointError(
            f"{path}: config key 'trunk' is '{trunk}', a hub reference that timm would fetch over the "
            "network; a checkpoint may name a local timm architecture only"
        )
    # the weights come from the file: building must never download ImageNet ones
    pretrained = {"pretrained": False} if "pretrained" in checkpoint["config"] else {}
    config = {**checkpoint["config"], **pretrained, **overrides}
    try:
        model = build_model(config)
    except Exception as error:
        error.add_note(f"while building the model of checkpoint {path}")
        raise
    state_dict = _state_dict_from(checkpoint, path, ("state_dict",), "CEMR checkpoint")
    report = load_state_dict_into(model, state_dict, str(path), strict=strict)
    return CEMRCheckpoint(model=model, config=config, extra=extra, report=report)
