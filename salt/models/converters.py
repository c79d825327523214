"""Convert V-JEPA and VideoMAE encoder checkpoints (and bare state dicts) into ``VideoViT``.

Both already use timm key names (patch_embed.proj, blocks.N.{norm1,attn.qkv,attn.proj,norm2,
mlp.fc1,mlp.fc2}, norm). What differs, and is handled here:
- V-JEPA: weights under ``target_encoder`` (else ``encoder``; ``checkpoint_key`` picks another)
  with ``module.``/``backbone.`` prefixes. V-JEPA 1 stores a ``pos_embed`` [1, N, D] that is the
  fixed 3-D sin-cos table: it is checked against ours (uniform_power off, then on) and not
  loaded. V-JEPA 2 (RoPE) stores none: no table means ``pos_embed: rope``, and the clip
  geometry (img_size, num_frames) is then not in the file at all. Other top-level entries
  (opt, predictor, scaler, epoch, ...) are not the encoder and are ignored.
- VideoMAE: weights under ``model`` (or ``module``); pre-training checkpoints prefix the
  encoder with ``encoder.`` and carry the decoder (ignored); q/v-only attention biases;
  1-D sin-cos positions not stored; fine-tuned ones have ``fc_norm`` (mapped to ``norm``)
  and a ``head`` (ignored).

Everything the tensor shapes tell is inferred from them; ``arch`` supplies the rest and may
not contradict them.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from salt.models.errors import CheckpointError
from salt.models.vit import ARCH_KEYS, ARCHS, DEFAULT_ARCH, ROPE_KINDS, complete_arch, position_table

log = logging.getLogger("salt.models")

_STRIPPED_PREFIXES = ("module.", "backbone.")
_VIDEOMAE_DECODER = ("decoder.", "encoder_to_decoder.", "mask_token")
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


_SOURCES = (("target_encoder", "V-JEPA"), ("encoder", "V-JEPA"), ("model", "VideoMAE"), ("module", "VideoMAE"))


def _extract(obj: Any, path: Path, checkpoint_key: str | None = None) -> tuple[str, dict[str, torch.Tensor]]:
    """(source, raw state dict) from a loaded checkpoint object."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a checkpoint dict")
    if checkpoint_key:
        if not isinstance(obj.get(checkpoint_key), Mapping):
            weights = sorted(str(k) for k, v in obj.items() if isinstance(v, Mapping))
            raise CheckpointError(
                f"{path}: no state dict under checkpoint key {checkpoint_key!r}; the keys holding weights are {weights}"
            )
        source = dict(_SOURCES).get(checkpoint_key, "V-JEPA" if "encoder" in checkpoint_key else "VideoMAE")
        log.info("%s: using %r as asked (%s layout)", path, checkpoint_key, source)
        return source, dict(obj[checkpoint_key])
    for key, source in _SOURCES:
        if isinstance(obj.get(key), Mapping):
            ignored = sorted(k for k in obj if k != key)
            log.info("%s: %s checkpoint, using %r; ignoring top-level %s", path, source, key, ignored)
            return source, dict(obj[key])
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "bare", dict(obj)
    raise CheckpointError(
        f"{path}: no encoder weights found: expected 'target_encoder'/'encoder' (V-JEPA), "
        f"'model'/'module' (VideoMAE), a salt-encoder checkpoint or a state dict of tensors; "
        f"top-level keys are {sorted(map(str, obj))[:20]}"
    )


def _encoder_keys(state_dict: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes, keep the encoder part, rename fc_norm, drop heads."""
    cleaned = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        while key.startswith(_STRIPPED_PREFIXES):
            key = key.split(".", 1)[1]
        cleaned[key] = value

    if any(k.startswith("encoder.") for k in cleaned):  # VideoMAE pre-training: encoder + decoder
        decoder = sorted(k for k in cleaned if k.startswith(_VIDEOMAE_DECODER))
        if decoder:
            log.info("%s: ignoring the VideoMAE decoder (%d tensors: %s ...)", path, len(decoder), decoder[:3])
        cleaned = {
            (k[len("encoder.") :] if k.startswith("encoder.") else k): v
            for k, v in cleaned.items()
            if not k.startswith(_VIDEOMAE_DECODER)
        }

    head = sorted(k for k in cleaned if k.startswith("head."))
    if head:
        log.info("%s: ignoring the classification head %s", path, head)
        cleaned = {k: v for k, v in cleaned.items() if not k.startswith("head.")}
    if "fc_norm.weight" in cleaned and "norm.weight" not in cleaned:
        # VideoMAE fine-tuning applies fc_norm after mean pooling; here it normalises each
        # token instead, so pooled features differ slightly from VideoMAE's.
        log.warning("%s: mapping VideoMAE fc_norm (applied after mean pooling there) to the per-token final norm", path)
        for suffix in ("weight", "bias"):
            if f"fc_norm.{suffix}" in cleaned:
                cleaned[f"norm.{suffix}"] = cleaned.pop(f"fc_norm.{suffix}")
    return cleaned


def _mlp_ratio(embed_dim: int, hidden: int) -> float:
    """A ratio r with int(embed_dim * r) == hidden, preferring the registry's exact fractions."""
    for ratio in sorted({a["mlp_ratio"] for a in ARCHS.values()}):
        if int(embed_dim * ratio) == hidden:
            return ratio
    ratio = hidden / embed_dim
    while int(embed_dim * ratio) < hidden:  # guard against float rounding just below
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _from_shapes(state_dict: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, Any], int]:
    """Arch values the shapes determine, and the hidden MLP width."""
    weight = state_dict.get("patch_embed.proj.weight")
    if weight is None:
        raise CheckpointError(
            f"{path}: no 'patch_embed.proj.weight': not a video ViT encoder (keys include {sorted(state_dict)[:10]})"
        )
    if weight.dim() != 5 or weight.shape[3] != weight.shape[4]:
        raise CheckpointError(
            f"{path}: patch_embed.proj.weight has shape {tuple(weight.shape)}; "
            f"expected a Conv3d tubelet kernel [D, C, t, p, p]"
        )
    embed_dim, in_chans, tubelet, patch, _ = weight.shape
    blocks = {int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k))}
    depth = max(blocks) + 1 if blocks else 0
    shapes = {
        "embed_dim": embed_dim,
        "in_chans": in_chans,
        "tubelet_size": tubelet,
        "patch_size": patch,
        "depth": depth,
    }
    hidden = 0
    if depth:
        first = f"blocks.{min(blocks)}."  # a missing block 0 is reported by the strict load
        fc1 = state_dict.get(first + "mlp.fc1.weight")
        if fc1 is None:
            raise CheckpointError(f"{path}: missing keys ['{first}mlp.fc1.weight']")
        hidden = fc1.shape[0]
        shapes["mlp_ratio"] = _mlp_ratio(embed_dim, hidden)
        if first + "attn.q_bias" in state_dict:
            shapes["qkv_bias"] = "qv"
        else:
            shapes["qkv_bias"] = first + "attn.qkv.bias" in state_dict
    return shapes, hidden


def _contradiction(path: Path, key: str, given: Any, derived: Any) -> CheckpointError:
    return CheckpointError(
        f"{path}: arch[{key!r}] = {given!r} contradicts the checkpoint, whose tensor shapes give {derived!r}"
    )


def _geometry_candidates(
    tokens: int, arch: dict[str, Any], given: Mapping[str, Any], path: Path
) -> list[tuple[int, int]]:
    """(img_size, num_frames) pairs whose token count equals that of a stored table: one of
    them given derives the other; with neither, 16 frames, 224 pixels, then any other."""
    patch, tubelet = arch["patch_size"], arch["tubelet_size"]

    def from_frames(frames: int) -> tuple[int, int]:
        steps = frames // tubelet
        return (math.isqrt(tokens // steps) * patch if steps else 0), frames

    def from_img(img: int) -> tuple[int, int]:
        side = img // patch
        return img, (tokens // (side * side) * tubelet if side else 0)

    if "img_size" in given and "num_frames" in given:
        candidates = [(given["img_size"], given["num_frames"])]
    elif "img_size" in given:
        candidates = [from_img(given["img_size"])]
    elif "num_frames" in given:
        candidates = [from_frames(given["num_frames"])]
    else:  # the defaults first, then every T' x S x S factorisation (the table picks one)
        candidates = [from_frames(DEFAULT_ARCH["num_frames"]), from_img(DEFAULT_ARCH["img_size"])]
        candidates += [from_frames(steps * tubelet) for steps in range(1, tokens + 1) if tokens % steps == 0]
    fitting = [
        (img, frames)
        for img, frames in candidates
        if img > 0
        and frames > 0
        and img % patch == 0
        and frames % tubelet == 0
        and (frames // tubelet) * (img // patch) ** 2 == tokens
    ]
    if not fitting:
        raise CheckpointError(
            f"{path}: the stored position table has {tokens} tokens, which does not fit "
            f"img_size={given.get('img_size', '?')}, num_frames={given.get('num_frames', '?')} with patch {patch} "
            f"and tubelet {tubelet} (square frames); pass the clip geometry in arch (img_size and/or num_frames)"
        )
    return list(dict.fromkeys(fitting))


def _match_position_table(table: torch.Tensor, arch: dict[str, Any], given: Mapping[str, Any], path: Path) -> None:
    """Find the geometry and fixed table the stored pos_embed is; set img_size, num_frames,
    pos_embed and uniform_power in ``arch``."""
    table = table.reshape(-1, table.shape[-1])
    atol = 1e-5 if table.dtype in (torch.float32, torch.float64) else 1e-2
    table = table.float()
    options = [("sincos3d", False), ("sincos3d", True), ("sincos1d", False)]
    options = [
        (kind, up)
        for kind, up in options
        if given.get("pos_embed", kind) == kind and given.get("uniform_power", up) == up
    ]
    grids = []
    for img, frames in _geometry_candidates(table.shape[0], arch, given, path):
        grid = (frames // arch["tubelet_size"], img // arch["patch_size"], img // arch["patch_size"])
        grids.append(grid)
        for kind, uniform_power in options:
            ours = position_table(kind, arch["embed_dim"], grid, uniform_power)
            if torch.allclose(ours, table, rtol=0, atol=atol):
                arch.update(img_size=img, num_frames=frames, pos_embed=kind, uniform_power=uniform_power)
                return
    raise CheckpointError(
        f"{path}: the stored pos_embed {tuple(table.shape)} is not the fixed sin-cos table of a "
        f"{' or '.join(map(str, grids))} grid (tried {options}); learned positional embeddings are not supported. If "
        "the clip geometry differs, pass img_size/num_frames in arch"
    )


def _num_heads(arch: dict[str, Any], path: Path) -> int:
    # Registry sizes with the same positions first: V-JEPA 2's ViT-g has 22 heads, V-JEPA 1's 16.
    rope = arch["pos_embed"] in ROPE_KINDS
    sizes = sorted(ARCHS.items(), key=lambda item: (item[1]["pos_embed"] in ROPE_KINDS) != rope)
    for name, size in sizes:
        if (size["embed_dim"], size["depth"]) == (arch["embed_dim"], arch["depth"]):
            log.warning(
                "%s: head count is not stored in the weights; assuming "
                "%d (as %s). Pass --arch num_heads=N if that is wrong",
                path,
                size["num_heads"],
                name,
            )
            return size["num_heads"]
    heads = max(arch["embed_dim"] // 64, 1)
    while arch["embed_dim"] % heads:
        heads -= 1
    log.warning(
        "%s: head count is not stored in the weights; assuming %d "
        "(head dim %d). Pass --arch num_heads=N if that is wrong",
        path,
        heads,
        arch["embed_dim"] // heads,
    )
    return heads


def check_arch_keys(arch: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of the architecture facts a user gave; CheckpointError for keys no arch has."""
    given = dict(arch or {})
    unknown = sorted(set(given) - set(ARCH_KEYS))
    if unknown:
        raise CheckpointError(f"unknown arch keys {unknown}; allowed: {list(ARCH_KEYS)}")
    return given


def agrees(key: str, given: Any, derived: Any, embed_dim: int) -> bool:
    """Whether a given arch value is the one a checkpoint determines (mlp_ratio compared by
    the width the model would build, not by float spelling)."""
    if key == "mlp_ratio":
        return int(embed_dim * float(given)) == int(embed_dim * float(derived))
    if key == "qkv_bias":
        return given is derived or given == derived == "qv"
    return given == derived


def import_state_dict(
    obj: Any,
    path: Path,
    arch: Mapping[str, Any] | None,
    checkpoint_key: str | None = None,
    assume_geometry: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Encoder state dict (our key names) and complete arch dict from a foreign checkpoint. A
    RoPE encoder stores no clip geometry: without ``assume_geometry`` one not given is refused."""
    given = check_arch_keys(arch)
    source, raw = _extract(obj, path, checkpoint_key)
    state_dict = _encoder_keys(raw, path)
    table = state_dict.pop("pos_embed", None)
    if table is not None and given.get("pos_embed") in ROPE_KINDS:
        log.warning(
            "%s: ignoring the stored pos_embed %s: arch says pos_embed %s", path, tuple(table.shape), given["pos_embed"]
        )
        table = None

    shapes, _ = _from_shapes(state_dict, path)
    for key, derived in shapes.items():
        if key in given and not agrees(key, given[key], derived, shapes["embed_dim"]):
            raise _contradiction(path, key, given[key], derived)
    resolved = {**DEFAULT_ARCH, **given, **shapes}
    source = _position_kind(source, table, shapes, given, resolved, path)
    if resolved["pos_embed"] in ROPE_KINDS:
        _check_rope_geometry(resolved, given, path, assume_geometry)
    if table is not None:
        if table.shape[-1] != shapes["embed_dim"]:
            raise CheckpointError(
                f"{path}: pos_embed {tuple(table.shape)} does not match embed_dim {shapes['embed_dim']}"
            )
        _match_position_table(table, resolved, given, path)
    if "num_heads" not in given:
        resolved["num_heads"] = _num_heads(resolved, path)
    try:
        resolved = complete_arch(resolved)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    log.info("%s: imported %s encoder %s", path, source, resolved)
    return state_dict, resolved


def _position_kind(source: str, table, shapes: dict, given: Mapping[str, Any], resolved: dict, path: Path) -> str:
    """The checkpoint's source, and `resolved["pos_embed"]` set where its layout tells the positions
    and the arch does not: VideoMAE's 1-D sin-cos, or V-JEPA 2's RoPE (no stored table)."""
    if source == "bare" and table is None and shapes.get("qkv_bias") == "qv" and "pos_embed" not in given:
        source = "VideoMAE"  # q/v-only biases and no stored table: VideoMAE's layout
        log.info("%s: q/v-only attention biases and no position table: assuming VideoMAE's 1-D sin-cos positions", path)
    if source == "VideoMAE" and table is None:
        if given.get("pos_embed", "sincos1d") != "sincos1d":
            raise _contradiction(path, "pos_embed", given["pos_embed"], "sincos1d (VideoMAE)")
        resolved["pos_embed"] = "sincos1d"
    if source == "V-JEPA" and table is None and "pos_embed" not in given:
        # V-JEPA 1 stores its sin-cos table; V-JEPA 2 uses RoPE and stores no positions.
        resolved["pos_embed"] = "rope"
        log.info("%s: V-JEPA checkpoint without pos_embed: V-JEPA 2 layout, 3-D RoPE", path)
    return source


def _check_rope_geometry(resolved: dict, given: Mapping[str, Any], path: Path, assume_geometry: bool) -> None:
    """A RoPE encoder stores no clip geometry: one not given is refused, or assumed with a warning."""
    missing = [key for key in ("img_size", "num_frames") if key not in given]
    if missing and not assume_geometry:
        raise CheckpointError(
            f"{path}: a RoPE encoder stores no clip geometry (no position table) and this checkpoint records "
            f"none — pass the clips it was trained on: {' '.join(f'--arch {key}=N' for key in missing)} "
            "(V-JEPA 2's released ViTs: img_size=256 num_frames=64); nothing is assumed"
        )
    if missing:
        log.warning(
            "%s: a RoPE encoder does not store its clip geometry; assuming %s. Pass "
            "arch img_size/num_frames (the clips it was trained on) if that is wrong",
            path,
            ", ".join(f"{key}={resolved[key]}" for key in missing),
        )
