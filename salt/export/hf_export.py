"""`salt export`: any encoder ``load_encoder`` reads, as a Hugging Face ``transformers`` folder that
``AutoModel.from_pretrained(DIR)`` loads without SALT, giving the same tokens.

- RoPE encoders (V-JEPA 2's tiled layout) -> ``VJEPA2Model``. transformers requires predictor
  weights: the source's own when it is a V-JEPA 2 folder, otherwise a freshly initialised one of
  the smallest valid size (seeded, so every export of the same encoder is the same bytes),
  stated in README.md, ``config.json``'s ``salt`` field and ``salt_export.json``.
- VideoMAE's 1-D sin-cos positions (``sincos1d``) -> ``VideoMAEModel``. Its keys carry no bias;
  a full qkv bias loses only the key part, which adds the same score to every key of a query
  and so cancels in the softmax: the tokens are the same.
- Anything no transformers class computes exactly (SALT's 3-D sin-cos table, V-JEPA 2.1's
  interleaved RoPE, which transformers up to at least 5.24 does not read) is refused.

The source may also be a training run (`RUN_DIR`, its `checkpoints/stepN/`, or a file in one):
its newest committed checkpoint's encoder, with the run's arch and frame step. A RoPE checkpoint
that does not record its clip geometry (V-JEPA 2's `.pt`) is refused unless `--arch img_size=…
--arch num_frames=…` give it: transformers takes the RoPE grid from crop_size. Beside the model
go the video processor's config, salt_export.json and README.md (salt/export/hf_feeding.py).

The folder is built in a temporary sibling and renamed into place: a failure leaves nothing.
Never imports transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from salt.errors import NoSpaceLeft, no_space
from salt.export.hf_feeding import export_record, write_feeding_files
from salt.latents.storage import make_readable
from salt.models import hf_folder, load_encoder, read_checkpoint
from salt.models.errors import ExportError

# The smallest predictor VJEPA2Model accepts with RoPE on every axis: one layer, one head of 6
# dims (2 per axis), MLP ratio 1, one mask token. Seeded: the same bytes on every export.
FRESH_PREDICTOR = {
    "pred_hidden_size": 6,
    "pred_num_attention_heads": 1,
    "pred_num_hidden_layers": 1,
    "pred_num_mask_tokens": 1,
    "pred_mlp_ratio": 1.0,
    "pred_zero_init_mask_tokens": True,
}
PREDICTOR_SEED = 0
# VJEPA2Config's predictor defaults, for a source folder whose config.json leaves some out.
VJEPA2_PREDICTOR_DEFAULTS = {
    "pred_hidden_size": 384,
    "pred_num_attention_heads": 12,
    "pred_num_hidden_layers": 12,
    "pred_num_mask_tokens": 10,
    "pred_mlp_ratio": 4.0,
    "pred_zero_init_mask_tokens": True,
}
_INIT_STD = 0.02  # transformers' initializer_range default; trunc-normal within ±2 std


# ----------------------------------------------------------------------------- weights


def _split_qkv(state: Mapping[str, torch.Tensor], layer: int, kind: str) -> list[torch.Tensor]:
    return list(state[f"blocks.{layer}.attn.qkv.{kind}"].chunk(3, dim=0))


# SALT name -> transformers name, without ".weight"/".bias"; the fused qkv is split apart below.
_VJEPA2_NAMES = {"patch_embed.proj": "encoder.embeddings.patch_embeddings.proj", "norm": "encoder.layernorm"}
_VJEPA2_LAYER_NAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attention.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VIDEOMAE_NAMES = {"patch_embed.proj": "embeddings.patch_embeddings.projection", "norm": "layernorm"}
_VIDEOMAE_LAYER_NAMES = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}


def _renamed(
    state: Mapping[str, torch.Tensor], names: Mapping[str, str], layer_names: Mapping[str, str], depth: int
) -> dict[str, torch.Tensor]:
    """SALT names -> transformers names for everything but the attention's q/k/v; a key neither
    map places is a bug here, so it raises instead of being left out."""
    tensors, unplaced = {}, []
    for key, value in state.items():
        module, _, kind = key.rpartition(".")
        block, _, inner = module.partition(".")[2].partition(".")
        if module in names:
            tensors[f"{names[module]}.{kind}"] = value
        elif module.startswith("blocks.") and inner in layer_names and int(block) < depth:
            tensors[f"encoder.layer.{block}.{layer_names[inner]}.{kind}"] = value
        elif not key.endswith(("attn.qkv.weight", "attn.qkv.bias", "attn.q_bias", "attn.v_bias")):
            unplaced.append(key)
    if unplaced:
        raise ExportError(f"export: encoder weights {unplaced[:20]} have no place in the transformers layout")
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def vjepa2_tensors(state: Mapping[str, torch.Tensor], arch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The encoder's weights in VJEPA2Model's names."""
    tensors = _renamed(state, _VJEPA2_NAMES, _VJEPA2_LAYER_NAMES, arch["depth"])
    for i in range(arch["depth"]):
        for kind in ("weight", "bias") if arch["qkv_bias"] else ("weight",):
            for name, part in zip(hf_folder.QKV, _split_qkv(state, i, kind)):
                tensors[f"encoder.layer.{i}.attention.{name}.{kind}"] = part.contiguous()
    return tensors


def videomae_tensors(state: Mapping[str, torch.Tensor], arch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The encoder's weights in VideoMAEModel's names (q and v biases only, see the docstring)."""
    tensors = _renamed(state, _VIDEOMAE_NAMES, _VIDEOMAE_LAYER_NAMES, arch["depth"])
    attention = "encoder.layer.{i}.attention.attention."
    for i in range(arch["depth"]):
        for name, part in zip(hf_folder.QKV, _split_qkv(state, i, "weight")):
            tensors[attention.format(i=i) + f"{name}.weight"] = part.contiguous()
        if arch["qkv_bias"] == "qv":
            biases = (state[f"blocks.{i}.attn.q_bias"], state[f"blocks.{i}.attn.v_bias"])
        elif arch["qkv_bias"]:
            query, _, value = _split_qkv(state, i, "bias")  # the key bias cancels in the softmax
            biases = (query, value)
        else:
            continue
        for name, bias in zip(("query", "value"), biases):
            tensors[attention.format(i=i) + f"{name}.bias"] = bias.detach().contiguous()
    return tensors


def fresh_predictor(hidden_size: int, qkv_bias: bool) -> dict[str, torch.Tensor]:
    """VJEPA2Model's predictor of FRESH_PREDICTOR's size, initialised as transformers does
    (trunc-normal linears, zero biases, unit norms, zero mask tokens) from PREDICTOR_SEED."""
    generator = torch.Generator().manual_seed(PREDICTOR_SEED)
    width = FRESH_PREDICTOR["pred_hidden_size"]
    hidden = int(width * FRESH_PREDICTOR["pred_mlp_ratio"])
    tensors: dict[str, torch.Tensor] = {
        "predictor.embeddings.mask_tokens": torch.zeros(FRESH_PREDICTOR["pred_num_mask_tokens"], 1, 1, width)
    }

    def linear(name: str, out_features: int, in_features: int, bias: bool = True) -> None:
        weight = torch.empty(out_features, in_features)
        torch.nn.init.trunc_normal_(weight, std=_INIT_STD, a=-2 * _INIT_STD, b=2 * _INIT_STD, generator=generator)
        tensors[name + ".weight"] = weight
        if bias:
            tensors[name + ".bias"] = torch.zeros(out_features)

    def norm(name: str) -> None:
        tensors[name + ".weight"], tensors[name + ".bias"] = torch.ones(width), torch.zeros(width)

    linear("predictor.embeddings.predictor_embeddings", width, hidden_size)
    for i in range(FRESH_PREDICTOR["pred_num_hidden_layers"]):
        layer = f"predictor.layer.{i}."
        norm(layer + "norm1")
        for name in hf_folder.QKV:
            linear(layer + f"attention.{name}", width, width, bias=qkv_bias)
        linear(layer + "attention.proj", width, width)
        norm(layer + "norm2")
        linear(layer + "mlp.fc1", hidden, width)
        linear(layer + "mlp.fc2", width, hidden)
    norm("predictor.layernorm")
    linear("predictor.proj", hidden_size, width)
    return tensors


def source_predictor(source: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """A V-JEPA 2 folder's own predictor (tensors, pred_* config fields), or None for any other source."""
    config_file = source / hf_folder.CONFIG_NAME if source.is_dir() else hf_folder.config_beside(source)
    if config_file is None or not config_file.is_file():  # a training run, or not a Hugging Face source
        return None
    if hf_folder.read_config(config_file)["model_type"] != "vjepa2":
        return None
    config = hf_folder.read_config(config_file)
    weights = hf_folder.read_folder(source, read_checkpoint)[1] if source.is_dir() else read_checkpoint(source)
    tensors = {hf_folder.strip_base_prefix(k): v.contiguous() for k, v in weights.items()}
    tensors = {k: v for k, v in tensors.items() if k.startswith("predictor.")}
    fields = {k: config[k] for k in FRESH_PREDICTOR if k in config}
    return (tensors, fields) if tensors else None


# ----------------------------------------------------------------------------- configs


def vjepa2_config(arch: Mapping[str, Any], predictor_fields: Mapping[str, Any], salt_note: Mapping[str, Any]) -> dict:
    return {
        "architectures": ["VJEPA2Model"],
        "model_type": "vjepa2",
        "dtype": "float32",
        "crop_size": arch["img_size"],
        "frames_per_clip": arch["num_frames"],
        "patch_size": arch["patch_size"],
        "tubelet_size": arch["tubelet_size"],
        "in_chans": arch["in_chans"],
        "hidden_size": arch["embed_dim"],
        "num_hidden_layers": arch["depth"],
        "num_attention_heads": arch["num_heads"],
        "mlp_ratio": arch["mlp_ratio"],
        "layer_norm_eps": arch["norm_eps"],
        "qkv_bias": arch["qkv_bias"],
        "hidden_act": "gelu",
        "drop_path_rate": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "attention_dropout": 0.0,
        "initializer_range": _INIT_STD,
        **predictor_fields,
        "salt": dict(salt_note),
    }


def videomae_config(arch: Mapping[str, Any], salt_note: Mapping[str, Any]) -> dict:
    return {
        "architectures": ["VideoMAEModel"],
        "model_type": "videomae",
        "dtype": "float32",
        "image_size": arch["img_size"],
        "patch_size": arch["patch_size"],
        "num_channels": arch["in_chans"],
        "num_frames": arch["num_frames"],
        "tubelet_size": arch["tubelet_size"],
        "hidden_size": arch["embed_dim"],
        "num_hidden_layers": arch["depth"],
        "num_attention_heads": arch["num_heads"],
        "intermediate_size": int(arch["embed_dim"] * arch["mlp_ratio"]),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": arch["norm_eps"],
        "qv_bias": bool(arch["qkv_bias"]),
        "use_mean_pooling": not arch["final_norm"],
        "salt": dict(salt_note),
    }


def refuse_unexportable(arch: Mapping[str, Any], source: Path) -> None:
    """One line naming why no transformers class computes this encoder exactly, and what would."""
    kind = arch["pos_embed"]
    if kind == "sincos3d":
        raise ExportError(
            f"{source}: pos_embed 'sincos3d' (SALT's / V-JEPA 1's 3-D sin-cos table): no transformers "
            f"class adds that table, so no export would be exact; nothing was written — train a RoPE size "
            f"(e.g. --set encoder.arch=vit_tiny_rope; salt models '*rope' lists them), which exports as "
            f"VJEPA2Model (VideoMAE's sincos1d encoders export as VideoMAEModel)"
        )
    if kind == "rope_interleaved":
        raise ExportError(
            f"{source}: pos_embed 'rope_interleaved' (V-JEPA 2.1's RoPE): the transformers VJEPA2Model "
            f"this was tested against computes only V-JEPA 2's tiled RoPE and would ignore "
            f"use_rope_interleave, computing something else; nothing was written"
        )
    if kind == "rope" and not arch["final_norm"]:
        raise ExportError(
            f"{source}: final_norm false: VJEPA2Model always applies its last layernorm; nothing was written"
        )
    if kind == "rope" and arch["qkv_bias"] == "qv":
        raise ExportError(f"{source}: q/v-only biases have no place in VJEPA2Model; nothing was written")


# ----------------------------------------------------------------------------- the folder


def sha256_of(path: Path) -> dict[str, str]:
    """sha256 of the source file, or of each file of a source folder (by relative name)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digests = {}
    for file in files:
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digests[str(file.relative_to(path)) if path.is_dir() else file.name] = digest.hexdigest()
    return digests


def _write_folder(tmp: Path, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], record: Mapping) -> None:
    from safetensors.torch import save_file

    save_file(dict(tensors), str(tmp / "model.safetensors"), metadata={"format": "pt"})  # transformers needs "pt"
    (tmp / hf_folder.CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    write_feeding_files(tmp, record)  # salt_export.json, the video processor's config, README.md
    # mkdtemp (0700) and safetensors (0600) would hide the export from everyone else: as plain files.
    make_readable(tmp, folder=True)
    for file in tmp.iterdir():
        make_readable(file)
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def _refuse_existing(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(
            f"--out {out} already exists and is not empty; nothing was "
            "written. Choose a new folder (or remove that one yourself)"
        )


def recorded_frame_step(source: Path) -> int | None:
    """The frame step a salt-encoder checkpoint's training config records (None: not recorded)."""
    if source.is_dir() or source.suffix not in (".pt", ".pth", ".safetensors"):
        return None
    try:
        if source.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(source), "pt") as handle:
                meta = json.loads((handle.metadata() or {}).get("meta", "{}"))
        else:  # mmap: the weights are not read again
            obj = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
            meta = obj.get("meta", {}) if isinstance(obj, dict) else {}
    except Exception:  # anything load_encoder read but this cannot: the step is simply not known
        return None
    config = meta.get("config") or {}
    step = (config.get("geometry") or config.get("data", {}).get("view") or {}).get("frame_step")
    return step if isinstance(step, int) and step > 0 else None


def load_source(source: Path, arch: Mapping[str, Any] | None, checkpoint_key: str | None):
    """(encoder, arch, frame step or None, source label, sha256 of the files read) of what
    `salt export` was given: a training run or one of its checkpoints, or anything load_encoder
    reads, whose clip geometry must be recorded or given (never assumed)."""
    from salt.training.run_encoder import find_run_checkpoint, load_run_encoder

    checkpoint = find_run_checkpoint(source)
    if checkpoint is not None:
        if arch or checkpoint_key not in (None, "encoder"):
            raise ExportError(
                f"{source} is a training run: its config.yaml gives the architecture and its checkpoint's encoder is "
                "the trained one — drop --arch, and --checkpoint-key (or give `encoder`)"
            )
        encoder, full_arch, frame_step = load_run_encoder(checkpoint)
        digests = sha256_of(checkpoint.step_dir) | sha256_of(checkpoint.run_dir / "config.yaml")
        return encoder, full_arch, frame_step, checkpoint.label, digests
    encoder, full_arch = load_encoder(source, arch, checkpoint_key, assume_geometry=False)
    return encoder, full_arch, recorded_frame_step(source), str(source.resolve()), sha256_of(source)


def export_encoder(
    source: str | os.PathLike,
    out: str | os.PathLike,
    arch: Mapping[str, Any] | None = None,
    checkpoint_key: str | None = None,
    frame_step: int | None = None,
) -> dict:
    """Write ``out`` as a transformers folder of the encoder at ``source`` (anything load_encoder
    reads, or a training run / checkpoint folder: its newest encoder); returns its salt_export record."""
    source, out = Path(source), Path(out)
    _refuse_existing(out)
    encoder, full_arch, recorded_step, label, digests = load_source(source, arch, checkpoint_key)
    frame_step = frame_step or recorded_step
    refuse_unexportable(full_arch, source)
    state = {k: v.float() for k, v in encoder.state_dict().items()}  # fp32: what the folder's config says
    if full_arch["pos_embed"] == "rope":
        carried = source_predictor(source)
        if carried:
            predictor = {
                "kind": "source",
                "about": "the source V-JEPA 2 folder's own predictor, its values copied unchanged",
            }
            predictor_tensors, fields = carried[0], {**VJEPA2_PREDICTOR_DEFAULTS, **carried[1]}
        else:
            predictor = {
                "kind": "fresh",
                "seed": PREDICTOR_SEED,
                "size": FRESH_PREDICTOR,
                "about": "NOT TRAINED: VJEPA2Model requires a predictor and the source has none; this one is "
                "freshly initialised (trunc-normal std 0.02, zero biases and mask tokens), of the "
                "smallest valid size. Use the encoder (last_hidden_state) only",
            }
            predictor_tensors, fields = fresh_predictor(full_arch["embed_dim"], full_arch["qkv_bias"]), FRESH_PREDICTOR
        record = export_record(label, digests, full_arch, "VJEPA2Model", predictor["about"], frame_step)
        config = vjepa2_config(full_arch, fields, {"exported_by": "salt export", "predictor": predictor})
        tensors = {**vjepa2_tensors(state, full_arch), **{k: v.float() for k, v in predictor_tensors.items()}}
    else:
        record = export_record(label, digests, full_arch, "VideoMAEModel", "none (VideoMAEModel has none)", frame_step)
        config = videomae_config(full_arch, {"exported_by": "salt export"})
        tensors = videomae_tensors(state, full_arch)
    _refuse_existing(out)  # again: it may have appeared while the encoder loaded
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        _write_folder(tmp, config, tensors, record)
        os.rename(tmp, out)  # replaces an empty folder; a non-empty one makes it fail, never merge
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if no_space(err) or "No space left on device" in str(err):  # safetensors raises its own error type
            raise NoSpaceLeft(out) from err
        raise
    return record
