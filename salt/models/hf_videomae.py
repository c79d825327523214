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

import logging
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from salt.models import hf_folder
from salt.models.converters import _mlp_ratio
from salt.models.errors import CheckpointError

log = logging.getLogger("salt.models")

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


def read_config(config_file: Path) -> dict[str, Any]:
    config = hf_folder.read_config(config_file)
    if config["model_type"] != "videomae":
        raise CheckpointError(f"{config_file}: model_type {config['model_type']!r} is not VideoMAE's")
    return config


def arch_from_config(config: Mapping[str, Any], config_file: Path) -> dict[str, Any]:
    """The arch keys config.json determines (final_norm is decided from the weights)."""

    def square(key: str) -> int:
        return hf_folder.square(config, key, config_file)

    try:
        if config.get("hidden_act", "gelu") != "gelu":
            raise CheckpointError(
                f"{config_file}: hidden_act {config['hidden_act']!r} is not supported "
                f"(the encoder's MLP uses exact GELU, transformers' 'gelu')"
            )
        hidden, width = int(config["hidden_size"]), int(config["intermediate_size"])
        return {
            "img_size": square("image_size"),
            "patch_size": square("patch_size"),
            "num_frames": int(config["num_frames"]),
            "tubelet_size": int(config["tubelet_size"]),
            "in_chans": int(config["num_channels"]),
            "embed_dim": hidden,
            "depth": int(config["num_hidden_layers"]),
            "num_heads": int(config["num_attention_heads"]),
            "mlp_ratio": _mlp_ratio(hidden, width),
            "qkv_bias": "qv" if config.get("qv_bias", config.get("qkv_bias", True)) else False,
            "norm_eps": float(config.get("layer_norm_eps", 1e-12)),
            "pos_embed": "sincos1d",
            "uniform_power": False,
        }
    except KeyError as err:
        raise CheckpointError(
            f"{config_file}: config.json lacks {err.args[0]!r}; re-save the model with save_pretrained"
        ) from None


def convert_state_dict(weights: Mapping[str, torch.Tensor], depth: int, source: Path) -> dict[str, torch.Tensor]:
    """transformers key names -> the project's. Keys it does not know pass through unchanged,
    so the strict load names them."""
    state: dict[str, torch.Tensor] = {}
    split: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        key = hf_folder.strip_base_prefix(key)
        if key.startswith(_IGNORED):
            continue
        if key.startswith("embeddings.patch_embeddings.projection."):
            state["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith(("layernorm.", "fc_norm.")):
            state["norm." + key.split(".", 1)[1]] = value
        elif match := _LAYER.match(key):
            layer, rest = int(match.group(1)), match.group(2)
            name = rest.removeprefix("attention.attention.").removesuffix(".weight")
            if name in hf_folder.QKV and rest == f"attention.attention.{name}.weight":
                split.setdefault((layer, "weight"), {})[name] = value
                continue
            for old, new in _LAYER_RENAMES.items():
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
                    break
            state[f"blocks.{layer}.{rest}"] = value
        else:
            state[key] = value
    hf_folder.fuse_qkv(
        state,
        split,
        [(layer, "weight") for layer in range(depth)],
        lambda layer, name, kind: f"encoder.layer.{layer}.attention.attention.{name}.{kind}",
        source,
    )
    return state


def import_hf_videomae(
    weights: Mapping[str, torch.Tensor], config_file: Path, given: Mapping[str, Any], path: Path
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict in the project's names, arch without defaults filled) of a HF VideoMAE."""
    config = read_config(config_file)
    arch = arch_from_config(config, config_file)
    state = convert_state_dict(weights, arch["depth"], path)
    if "fc_norm.weight" in weights or "videomae.fc_norm.weight" in weights:
        log.warning("%s: mapping VideoMAE fc_norm (applied after mean pooling there) to the per-token final norm", path)
    arch["final_norm"] = "norm.weight" in state
    if not arch["final_norm"] and not config.get("use_mean_pooling", True):
        raise CheckpointError(
            f"{path}: config.json has use_mean_pooling false, so the weights should hold "
            f"'layernorm.weight', and they do not; re-save the model"
        )
    log.info("%s: Hugging Face VideoMAE (%s), %s", path, config.get("architectures", ["?"])[0], arch)
    return state, hf_folder.merge_given(given, arch, path)
