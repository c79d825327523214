"""Reading Hugging Face ``transformers`` model folders without importing transformers: what the
VideoMAE (``salt.models.hf_videomae``) and V-JEPA 2 (``salt.models.hf_vjepa2``) importers share.

A folder as ``save_pretrained`` writes it holds ``config.json`` and ``model.safetensors``, a
sharded ``model.safetensors.index.json`` or a ``pytorch_model.bin``; a weight file with its
``config.json`` beside it is read the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from salt.models.converters import agrees
from salt.models.errors import CheckpointError

CONFIG_NAME = "config.json"
WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# model_type -> what the importer calls it; the prefix its task models put before the encoder.
MODEL_TYPES = {"videomae": "VideoMAE", "vjepa2": "V-JEPA 2"}
_BASE_PREFIXES = ("videomae.", "vjepa2.")
QKV = ("query", "key", "value")


def config_beside(path: Path) -> Path | None:
    """The config.json of a model type we read next to a weight file, or None."""
    candidate = path.parent / CONFIG_NAME
    if not candidate.is_file():
        return None
    try:
        model_type = json.loads(candidate.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return candidate if model_type in MODEL_TYPES else None


def looks_like_hf(weights: Any) -> bool:
    """transformers' key names (``encoder.layer.N.``, bare or under a task model's prefix)."""
    prefixes = ("encoder.layer.",) + tuple(p + "encoder.layer." for p in _BASE_PREFIXES)
    return isinstance(weights, Mapping) and any(str(k).startswith(prefixes) for k in weights)


def read_folder(folder: Path, read_weights: Callable[[Path], Any]) -> tuple[Path, dict[str, torch.Tensor]]:
    """(config.json, merged weights) of a save_pretrained folder."""
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise CheckpointError(
            f"{folder}: a folder, but not a Hugging Face model folder (no {CONFIG_NAME}); "
            f"pass a checkpoint file, or the folder save_pretrained wrote"
        )
    weights: dict[str, torch.Tensor] = {}
    for file in weight_files(folder):
        loaded = read_weights(file)
        if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise CheckpointError(f"{file}: not a state dict of tensors")
        weights.update(loaded)
    return config_file, weights


def weight_files(path: Path) -> list[Path]:
    """The weight files of a folder: one file, or every shard a safetensors index names."""
    for name in WEIGHT_NAMES:
        if (path / name).is_file():
            return _shards(path / name) if name.endswith(".index.json") else [path / name]
    raise CheckpointError(f"{path}: a Hugging Face folder without weights: expected one of {list(WEIGHT_NAMES)}")


def _shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index}: unreadable shard index ({err!r}); re-save the model") from None
    files = [index.parent / name for name in dict.fromkeys(weight_map.values())]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise CheckpointError(f"{index}: shards {absent} are missing; copy the whole folder")
    return files


def read_config(config_file: Path) -> dict[str, Any]:
    """config.json as a dict, of a model type some importer reads."""
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{config_file}: unreadable config.json ({err}); re-save the model") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in MODEL_TYPES:
        known = " and ".join(f"{name} ('{kind}')" for kind, name in MODEL_TYPES.items())
        raise CheckpointError(f"{config_file}: model_type {model_type!r}: only Hugging Face {known} folders are read")
    return config


def square(config: Mapping[str, Any], key: str, config_file: Path) -> int:
    """A size that config.json may give as an int or a square [n, n] pair."""
    value = config.get(key)
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise CheckpointError(
                f"{config_file}: {key} {value} is not square; only square frames and patches are supported"
            )
        value = value[0]
    if value is None:
        raise KeyError(key)
    return int(value)


def strip_base_prefix(key: str) -> str:
    """A task model's key (``videomae.encoder...``, ``vjepa2.encoder...``) as the base model's."""
    for prefix in _BASE_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def fuse_qkv(
    state: dict[str, torch.Tensor],
    split: Mapping[tuple[int, str], Mapping[str, torch.Tensor]],
    expected: list[tuple[int, str]],
    hf_name: Callable[[int, str, str], str],
    source: Path,
) -> None:
    """Concatenate separate query/key/value tensors into ``blocks.i.attn.qkv.<kind>``.

    ``split[(layer, kind)][name]`` holds what the weights have, ``expected`` the (layer, kind)
    pairs the config promises; anything absent is named by its transformers key."""
    missing = [
        hf_name(layer, name, kind)
        for layer, kind in expected
        for name in QKV
        if name not in split.get((layer, kind), {})
    ]
    unexpected = [
        hf_name(layer, name, kind)
        for (layer, kind), parts in split.items()
        if (layer, kind) not in expected
        for name in parts
    ]
    problems = [f"{what} keys {keys[:40]}" for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    if problems:
        raise CheckpointError(f"{source}: weights do not match config.json: " + "; ".join(problems))
    for layer, kind in expected:
        state[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([split[(layer, kind)][name] for name in QKV], dim=0)


def merge_given(given: Mapping[str, Any], arch: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The user's arch facts with config.json's on top; CheckpointError where they disagree."""
    for key, value in given.items():
        if key in arch and not agrees(key, value, arch[key], arch["embed_dim"]):
            raise CheckpointError(
                f"{path}: arch[{key!r}] = {value!r} contradicts config.json, which gives {arch[key]!r}"
            )
    return {**given, **arch}
