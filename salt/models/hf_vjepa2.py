"""Hugging Face ``transformers`` V-JEPA 2 folders (``model_type: vjepa2``) as ``VideoViT`` weights,
without importing transformers.

``VJEPA2Model`` (encoder + predictor) and ``VJEPA2ForVideoClassification`` (the same under
``vjepa2.``, plus an attentive pooler and a classifier) give their encoder:

    encoder.embeddings.patch_embeddings.proj   -> patch_embed.proj
    encoder.layer.i.norm1 / norm2              -> blocks.i.norm1 / norm2
    ...attention.{query,key,value}             -> blocks.i.attn.qkv (concatenated)
    ...attention.proj                          -> blocks.i.attn.proj
    ...mlp.fc1 / mlp.fc2                       -> blocks.i.mlp.fc1 / fc2
    encoder.layernorm                          -> norm (VJEPA2Model's last_hidden_state is after it)

The predictor, pooler and classifier are not the encoder and are skipped by name; any other
weight is refused by name. Positions are 3-D RoPE as transformers computes it: tiled sin/cos
(``pos_embed: rope``), or with ``use_rope_interleave`` (V-JEPA 2.1) interleaved
(``pos_embed: rope_interleaved``). transformers takes the token grid from ``crop_size``, so the
two agree on clips of ``crop_size``² pixels (any number of frames).

Every config.json field is accounted for: honoured, ignored because it does not touch the
encoder's output (``IGNORED_FIELDS``), or refused unless it has the value that leaves the encoder
as V-JEPA 2's (``REFUSED_UNLESS``). A field this module does not know is refused by name, so
that a newer format never silently computes something else.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from salt.models import hf_folder
from salt.models.errors import CheckpointError

log = logging.getLogger("salt.models")

# Fields read into the architecture (see arch_from_config).
HONOURED_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "mlp_ratio",
    "patch_size",
    "tubelet_size",
    "crop_size",
    "image_size",
    "frames_per_clip",
    "in_chans",
    "layer_norm_eps",
    "qkv_bias",
    "hidden_act",
    "use_rope_interleave",
)
# V-JEPA 2.1 switches (and pruning) that change the encoder's output: read only at these values.
REFUSED_UNLESS: dict[str, tuple[Any, str]] = {
    "use_modality_embeddings": (False, "adds learnable modality embeddings to the patches"),
    "interpolate_rope": (False, "rescales the RoPE positions"),
    "use_image_patch_embedder": (False, "adds a second (single-frame) patch embedder"),
    "hierarchical_layers": (None, "adds per-layer norms for hierarchical outputs"),
    "pruned_heads": ({}, "removes attention heads"),
}
IGNORED_FIELDS = frozenset(
    {
        # the predictor, the classifier's attentive pooler, distillation heads
        "pred_hidden_size",
        "pred_num_attention_heads",
        "pred_num_hidden_layers",
        "pred_num_mask_tokens",
        "pred_zero_init_mask_tokens",
        "pred_mlp_ratio",
        "num_pooler_layers",
        "attention_dropout",
        "use_context_projection",
        "teacher_embed_dim",
        "num_distillation_outputs",
        # training only (dropout, stochastic depth, initialisation)
        "drop_path_rate",
        "attention_probs_dropout_prob",
        "initializer_range",
        # bookkeeping, labels, outputs besides last_hidden_state, and transformers' generic fields
        "model_type",
        "architectures",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "_name_or_path",
        "id2label",
        "label2id",
        "problem_type",
        "finetuning_task",
        "return_dict",
        "output_hidden_states",
        "output_attentions",
        "torchscript",
        "use_bfloat16",
        "tf_legacy_loss",
        "tie_word_embeddings",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "is_decoder",
        "cross_attention_hidden_size",
        "add_cross_attention",
        "tie_encoder_decoder",
        "tokenizer_class",
        "prefix",
        "bos_token_id",
        "pad_token_id",
        "eos_token_id",
        "sep_token_id",
        "decoder_start_token_id",
        "task_specific_params",
        "_attn_implementation_autoset",
        "salt",
    }
)
# VJEPA2Config's defaults of the honoured fields (as in transformers 5.24).
VJEPA2_DEFAULTS = {
    "patch_size": 16,
    "crop_size": 256,
    "frames_per_clip": 64,
    "tubelet_size": 2,
    "hidden_size": 1024,
    "in_chans": 3,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "mlp_ratio": 4.0,
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
    "hidden_act": "gelu",
    "use_rope_interleave": False,
}
SKIPPED_PREFIXES = ("predictor.", "pooler.", "classifier.")
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_LAYER_KEYS = {
    "norm1.weight",
    "norm1.bias",
    "norm2.weight",
    "norm2.bias",
    "attention.proj.weight",
    "attention.proj.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
}
_TOP_KEYS = {
    "encoder.embeddings.patch_embeddings.proj.weight": "patch_embed.proj.weight",
    "encoder.embeddings.patch_embeddings.proj.bias": "patch_embed.proj.bias",
    "encoder.layernorm.weight": "norm.weight",
    "encoder.layernorm.bias": "norm.bias",
}


def check_fields(config: Mapping[str, Any], config_file: Path) -> None:
    """Refuse, by name, a field that would change the encoder or that this reader does not know."""
    for key, (allowed, why) in REFUSED_UNLESS.items():
        if key in config and config[key] != allowed:
            raise CheckpointError(
                f"{config_file}: {key} = {config[key]!r} {why}, which SALT's encoder does not "
                f"compute; only {key} = {allowed!r} is read"
            )
    unknown = sorted(set(config) - set(HONOURED_FIELDS) - set(REFUSED_UNLESS) - IGNORED_FIELDS)
    if unknown:
        raise CheckpointError(
            f"{config_file}: unknown V-JEPA 2 config fields {unknown}: a newer transformers "
            f"format this reader does not know (it might change the encoder); nothing was loaded"
        )


def arch_from_config(config: Mapping[str, Any], config_file: Path) -> dict[str, Any]:
    """The complete set of arch keys config.json determines."""
    check_fields(config, config_file)
    if config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(
            f"{config_file}: hidden_act {config['hidden_act']!r} is not supported "
            f"(the encoder's MLP uses exact GELU, transformers' 'gelu')"
        )
    config = {**VJEPA2_DEFAULTS, **config}  # a field left out means transformers' default
    crop = hf_folder.square(config, "crop_size", config_file)
    if "image_size" in config and hf_folder.square(config, "image_size", config_file) != crop:
        raise CheckpointError(f"{config_file}: image_size {config['image_size']} differs from crop_size {crop}")
    return {
        "img_size": crop,
        "patch_size": hf_folder.square(config, "patch_size", config_file),
        "num_frames": int(config["frames_per_clip"]),
        "tubelet_size": int(config["tubelet_size"]),
        "in_chans": int(config["in_chans"]),
        "embed_dim": int(config["hidden_size"]),
        "depth": int(config["num_hidden_layers"]),
        "num_heads": int(config["num_attention_heads"]),
        "mlp_ratio": float(config["mlp_ratio"]),
        "qkv_bias": bool(config["qkv_bias"]),
        "norm_eps": float(config["layer_norm_eps"]),
        "uniform_power": False,
        "final_norm": True,
        "pos_embed": "rope_interleaved" if config["use_rope_interleave"] else "rope",
    }


def convert_state_dict(
    weights: Mapping[str, torch.Tensor], arch: Mapping[str, Any], source: Path
) -> dict[str, torch.Tensor]:
    """transformers key names -> the project's; predictor/pooler/classifier skipped by name,
    anything else not placed refused by name."""
    state: dict[str, torch.Tensor] = {}
    split: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unplaced, skipped = [], 0
    for original, value in weights.items():
        key = hf_folder.strip_base_prefix(original)
        if key.startswith(SKIPPED_PREFIXES):
            skipped += 1
        elif key in _TOP_KEYS:
            state[_TOP_KEYS[key]] = value
        elif (match := _LAYER.match(key)) and match.group(2) in _LAYER_KEYS:
            layer, rest = match.group(1), match.group(2)
            state[f"blocks.{layer}.{rest.replace('attention.', 'attn.')}"] = value
        elif match and re.fullmatch(r"attention\.(query|key|value)\.(weight|bias)", match.group(2)):
            name, kind = match.group(2).split(".")[1:]
            split.setdefault((int(match.group(1)), kind), {})[name] = value
        else:
            unplaced.append(original)
    if unplaced:
        raise CheckpointError(
            f"{source}: weights SALT's encoder has no place for: {sorted(unplaced)[:40]}; "
            f"they are not in a V-JEPA 2 encoder as config.json describes it"
        )
    kinds = ("weight", "bias") if arch["qkv_bias"] else ("weight",)
    hf_folder.fuse_qkv(
        state,
        split,
        [(layer, kind) for layer in range(arch["depth"]) for kind in kinds],
        lambda layer, name, kind: f"encoder.layer.{layer}.attention.{name}.{kind}",
        source,
    )
    if skipped:
        log.info("%s: skipped %d predictor / pooler / classifier tensors (not the encoder)", source, skipped)
    return state


def import_hf_vjepa2(
    weights: Mapping[str, torch.Tensor], config_file: Path, given: Mapping[str, Any], path: Path
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict in the project's names, arch) of a Hugging Face V-JEPA 2 folder."""
    config = hf_folder.read_config(config_file)
    arch = arch_from_config(config, config_file)
    state = convert_state_dict(weights, arch, path)
    log.info("%s: Hugging Face V-JEPA 2 (%s), %s", path, (config.get("architectures") or ["?"])[0], arch)
    return state, hf_folder.merge_given(given, arch, path)
