"""Hugging Face ``transformers`` VideoMAE checkpoints as ``VideoViT`` weights, without importing
transformers.

Accepted: a folder as ``save_pretrained`` writes it (``config.json`` with ``model_type:
videomae`` and ``model.safetensors``, a sharded ``model.safetensors.index.json`` or a
``pytorch_model.bin``), or one of those weight files with its ``config.json`` beside it. The
architecture comes from ``config.json``; the weights of ``VideoMAEModel``,
``VideoMAEForPreTraining`` (decoder ignored) and ``VideoMAEForVideoClassification`` (classifier
ignored) map onto the project's encoder:

    embeddings.patch_embeddings.projection     -> patch_embed.proj
    encoder.layer.i.layernorm_before / _after  -> blocks.i.norm1 / norm2
    ...attention.attention.{query,key,value}   -> blocks.i.attn.qkv (concatenated; q/v biases)
    ...attention.output.dense                  -> blocks.i.attn.proj
    ...intermediate.dense / output.dense       -> blocks.i.mlp.fc1 / fc2
    layernorm (no mean pooling)                -> norm
    fc_norm (classification, mean pooling)     -> norm (applied per token here)

With ``use_mean_pooling`` and neither norm, ``VideoMAEModel`` returns the last block's output
as is: the encoder is built with ``final_norm: false``. Positions are VideoMAE's 1-D sinusoid
table (``sincos1d``), which transformers computes and never stores.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from salt.models.converters import _mlp_ratio, agrees
from salt.models.errors import CheckpointError

log = logging.getLogger("salt.models")

CONFIG_NAME = "config.json"
WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_IGNORED = ("decoder.", "encoder_to_decoder.", "mask_token", "classifier.")
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_LAYER_RENAMES = {
    "layernorm_before.": "norm1.",
    "layernorm_after.": "norm2.",
    "attention.output.dense.": "attn.proj.",
    "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
    "attention.attention.q_bias": "attn.q_bias",  # transformers < 4.40 kept q/v biases apart
    "attention.attention.v_bias": "attn.v_bias",
    "attention.attention.query.bias": "attn.q_bias",
    "attention.attention.value.bias": "attn.v_bias",
}
_QKV = ("query", "key", "value")


def config_beside(path: Path) -> Path | None:
    """The VideoMAE config.json next to a weight file, or None."""
    candidate = path.parent / CONFIG_NAME
    if not candidate.is_file():
        return None
    try:
        model_type = json.loads(candidate.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return candidate if model_type == "videomae" else None


def looks_like_hf(weights: Any) -> bool:
    """transformers' VideoMAE key names (``encoder.layer.N.`` with or without ``videomae.``)."""
    return isinstance(weights, Mapping) and any(
        str(k).startswith(("encoder.layer.", "videomae.encoder.layer.")) for k in weights)


def read_folder(folder: Path, read_weights: Callable[[Path], Any]) -> tuple[Path, dict[str, torch.Tensor]]:
    """(config.json, merged weights) of a save_pretrained folder."""
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise CheckpointError(f"{folder}: a folder, but not a Hugging Face model folder (no {CONFIG_NAME}); "
                              f"pass a checkpoint file, or the folder save_pretrained wrote")
    weights: dict[str, torch.Tensor] = {}
    for file in _weight_files(folder):
        loaded = read_weights(file)
        if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise CheckpointError(f"{file}: not a state dict of tensors")
        weights.update(loaded)
    return config_file, weights


def _weight_files(path: Path) -> list[Path]:
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
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{config_file}: unreadable config.json ({err}); re-save the model") from None
    if not isinstance(config, dict) or config.get("model_type") != "videomae":
        model_type = config.get("model_type") if isinstance(config, dict) else None
        raise CheckpointError(f"{config_file}: model_type {model_type!r}: only Hugging Face VideoMAE "
                              f"(model_type 'videomae') folders are read")
    return config


def arch_from_config(config: Mapping[str, Any], config_file: Path) -> dict[str, Any]:
    """The arch keys config.json determines (final_norm is decided from the weights)."""
    def square(key: str) -> int:
        value = config.get(key)
        if isinstance(value, (list, tuple)):
            if len(value) != 2 or value[0] != value[1]:
                raise CheckpointError(f"{config_file}: {key} {value} is not square; only square "
                                      f"frames and patches are supported")
            value = value[0]
        return int(value)

    try:
        if config.get("hidden_act", "gelu") != "gelu":
            raise CheckpointError(f"{config_file}: hidden_act {config['hidden_act']!r} is not supported "
                                  f"(the encoder's MLP uses exact GELU, transformers' 'gelu')")
        hidden, width = int(config["hidden_size"]), int(config["intermediate_size"])
        return {
            "img_size": square("image_size"), "patch_size": square("patch_size"),
            "num_frames": int(config["num_frames"]), "tubelet_size": int(config["tubelet_size"]),
            "in_chans": int(config["num_channels"]), "embed_dim": hidden,
            "depth": int(config["num_hidden_layers"]), "num_heads": int(config["num_attention_heads"]),
            "mlp_ratio": _mlp_ratio(hidden, width),
            "qkv_bias": "qv" if config.get("qv_bias", config.get("qkv_bias", True)) else False,
            "norm_eps": float(config.get("layer_norm_eps", 1e-12)), "pos_embed": "sincos1d",
            "uniform_power": False,
        }
    except KeyError as err:
        raise CheckpointError(f"{config_file}: config.json lacks {err.args[0]!r}; re-save the model "
                              f"with save_pretrained") from None


def convert_state_dict(weights: Mapping[str, torch.Tensor], depth: int, source: Path) -> dict[str, torch.Tensor]:
    """transformers key names -> the project's. Keys it does not know pass through unchanged,
    so the strict load names them."""
    state: dict[str, torch.Tensor] = {}
    split: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        key = key[len("videomae."):] if key.startswith("videomae.") else key
        if key.startswith(_IGNORED):
            continue
        if key.startswith("embeddings.patch_embeddings.projection."):
            state["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith(("layernorm.", "fc_norm.")):
            state["norm." + key.split(".", 1)[1]] = value
        elif match := _LAYER.match(key):
            layer, rest = int(match.group(1)), match.group(2)
            for name in _QKV:
                if rest == f"attention.attention.{name}.weight":
                    split.setdefault(layer, {})[name] = value
                    break
            else:
                for old, new in _LAYER_RENAMES.items():
                    if rest.startswith(old):
                        rest = new + rest[len(old):]
                        break
                state[f"blocks.{layer}.{rest}"] = value
        else:
            state[key] = value
    missing = [f"encoder.layer.{layer}.attention.attention.{name}.weight"
               for layer in range(depth) for name in _QKV if name not in split.get(layer, {})]
    if missing:
        raise CheckpointError(f"{source}: weights do not match config.json: missing keys {missing[:40]}")
    for layer, parts in split.items():
        state[f"blocks.{layer}.attn.qkv.weight"] = torch.cat([parts[name] for name in _QKV], dim=0)
    return state


def import_hf_videomae(weights: Mapping[str, torch.Tensor], config_file: Path, given: Mapping[str, Any],
                       path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict in the project's names, arch without defaults filled) of a HF VideoMAE."""
    config = read_config(config_file)
    arch = arch_from_config(config, config_file)
    state = convert_state_dict(weights, arch["depth"], path)
    if "fc_norm.weight" in weights or "videomae.fc_norm.weight" in weights:
        log.warning("%s: mapping VideoMAE fc_norm (applied after mean pooling there) to the per-token "
                    "final norm", path)
    arch["final_norm"] = "norm.weight" in state
    if not arch["final_norm"] and not config.get("use_mean_pooling", True):
        raise CheckpointError(f"{path}: config.json has use_mean_pooling false, so the weights should hold "
                              f"'layernorm.weight', and they do not; re-save the model")
    for key, value in given.items():
        if key in arch and not agrees(key, value, arch[key], arch["embed_dim"]):
            raise CheckpointError(f"{path}: arch[{key!r}] = {value!r} contradicts config.json, which gives {arch[key]!r}")
    log.info("%s: Hugging Face VideoMAE (%s), %s", path, config.get("architectures", ["?"])[0], arch)
    return state, {**given, **arch}
