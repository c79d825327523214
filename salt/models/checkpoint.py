"""Encoder checkpoints: the one format this project writes, and the safe loader for it and
for imported V-JEPA 1/2 / VideoMAE checkpoints (``salt.models.converters``) and Hugging Face
VideoMAE and V-JEPA 2 folders (``salt.models.hf_folder``, ``hf_videomae``, ``hf_vjepa2``).

Format (``.pt``, read with ``torch.load(weights_only=True)``): a dict of plain data and tensors
    {"format": "salt-encoder", "format_version": 1, "kind": "teacher" | "student" | ...,
     "arch": {...}, "state_dict": {...}, "fingerprint": "<sha256 hex>", "meta": {...}}
or ``.safetensors``: tensors = state dict, string metadata = format, format_version, kind,
fingerprint, arch (JSON), meta (JSON).

Pickles that need code to load are refused: nothing in a checkpoint is ever executed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from salt.latents.storage import make_readable
from salt.models import hf_folder, hf_videomae, hf_vjepa2
from salt.models.converters import check_arch_keys, import_state_dict
from salt.models.errors import CheckpointError
from salt.models.vit import VideoViT, build_encoder, complete_arch

log = logging.getLogger("salt.models")

FORMAT = "salt-encoder"
FORMAT_VERSION = 1
_ZIP_MAGIC = b"PK\x03\x04"
# torch.save's legacy (non-zip) files start with a pickled magic number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_MAX_LISTED_KEYS = 40


# ----------------------------------------------------------------------------- fingerprint


def fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the sorted (name, dtype, shape, raw bytes) of a state dict.

    Depends only on the weights (not on device, memory layout or how the dict was saved).
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().to("cpu").contiguous()
        # A uint8 view gives the raw bytes of any dtype (bf16 included, which numpy lacks).
        raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        header = f"{name}\0{str(tensor.dtype)}\0{tuple(tensor.shape)}\0{len(raw)}\0"
        digest.update(header.encode())
        digest.update(raw)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- save


def _plain_json(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be plain JSON-able data: {err}") from None


def save_encoder(path: str | os.PathLike, encoder: VideoViT, kind: str, meta: Mapping[str, Any] | None = None) -> str:
    """Write ``encoder`` atomically as a salt-encoder checkpoint; returns its fingerprint.

    A path ending in ``.safetensors`` writes safetensors, anything else a torch ``.pt``.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind must be a non-empty string such as 'teacher', got {kind!r}")
    if not hasattr(encoder, "arch"):
        raise TypeError(
            f"save_encoder needs a VideoViT (with .arch), got {type(encoder).__name__}; "
            f"unwrap DDP/DeepSpeed first (model.module)"
        )
    arch = complete_arch(encoder.arch)
    meta = _plain_json(dict(meta or {}), "meta")
    state_dict = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    digest = fingerprint(state_dict)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(
                state_dict,
                tmp,
                metadata={
                    "format": FORMAT,
                    "format_version": str(FORMAT_VERSION),
                    "kind": kind,
                    "fingerprint": digest,
                    "arch": json.dumps(arch),
                    "meta": json.dumps(meta),
                },
            )
        else:
            torch.save(
                {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "kind": kind,
                    "arch": arch,
                    "state_dict": state_dict,
                    "fingerprint": digest,
                    "meta": meta,
                },
                tmp,
            )
        make_readable(tmp)  # mkstemp's 0600 (safetensors writes its own file, also 0600)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return digest


# ----------------------------------------------------------------------------- read


def _sniff(path: Path) -> str:
    """'torch' or 'safetensors' from the first bytes; CheckpointError for anything else."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(len(_LEGACY_TORCH_MAGIC))
    if head.startswith(_ZIP_MAGIC) or head == _LEGACY_TORCH_MAGIC:
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    raise CheckpointError(
        f"{path}: not a checkpoint ({size} bytes; expected a PyTorch .pt file from torch.save "
        f"or a .safetensors file). Check the path, or re-export the weights in one of those formats."
    )


def _load_torch(path: Path) -> Any:
    try:
        # VideoMAE checkpoints pickle their argparse.Namespace; that one class is allowed.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = str(err).splitlines()
        detail = next((ln.strip() for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), "")
        if detail:
            raise CheckpointError(
                f"{path}: refused: loading it would run code it names ({detail}); nothing was "
                f"executed. Only tensors and plain data are accepted. If you trust the file, "
                f"re-save its state dict (torch.save(model.state_dict(), ...)) or a safetensors "
                f"file in a trusted environment and load that."
            ) from None
        raise CheckpointError(
            f"{path}: corrupt checkpoint, cannot be unpickled "
            f"({lines[-1] if lines else 'no detail'}); re-export or re-download it."
        ) from None
    except Exception as err:  # torch reports truncation as RuntimeError/EOFError/KeyError/...
        raise CheckpointError(
            f"{path}: unreadable checkpoint, probably truncated or corrupt ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); re-export or re-download it."
        ) from None


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as err:
        raise CheckpointError(
            f"{path}: unreadable safetensors file, probably truncated or corrupt "
            f"({type(err).__name__}: {err}); re-export or re-download it."
        ) from None
    return tensors, metadata


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The raw content of a checkpoint file, loaded safely.

    A torch file gives the unpickled object; a safetensors file of ours gives the same dict
    as our .pt format; any other safetensors file gives its tensors (a bare state dict).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if _sniff(path) == "torch":
        return _load_torch(path)
    tensors, metadata = _load_safetensors(path)
    if metadata.get("format") != FORMAT:
        return tensors
    try:
        return {
            "format": FORMAT,
            "format_version": int(metadata["format_version"]),
            "kind": metadata["kind"],
            "arch": json.loads(metadata["arch"]),
            "state_dict": tensors,
            "fingerprint": metadata["fingerprint"],
            "meta": json.loads(metadata.get("meta", "{}")),
        }
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt salt-encoder metadata ({err!r})") from None


# ----------------------------------------------------------------------------- load


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"


def load_state_dict_strict(
    encoder: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike
) -> None:
    """Load every key, or raise CheckpointError naming missing/unexpected/mis-shaped keys.

    The encoder is first cast to the floating dtype the weights were stored in.
    """
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listed(unexpected)}")
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if mismatched:
        problems.append(f"shape mismatches {_listed(mismatched)}")
    if problems:
        raise CheckpointError(f"{path}: weights do not match the architecture: " + "; ".join(problems))
    # An encoder's patch embedding, else (a whole objective, e.g. encoder + decoder) its first tensor.
    reference = state_dict.get("patch_embed.proj.weight", next(iter(state_dict.values()), None))
    stored_dtype = reference.dtype if reference is not None else torch.float32
    if stored_dtype.is_floating_point:
        encoder.to(stored_dtype)
    encoder.load_state_dict(state_dict, strict=True)


def _check_given_arch(given: Mapping[str, Any] | None, actual: Mapping[str, Any], path: Path, source: str) -> None:
    for key, value in check_arch_keys(given).items():
        if actual[key] != value:
            raise CheckpointError(f"{path}: arch[{key!r}] = {value!r} contradicts the {source} value {actual[key]!r}")


def _load_salt_format(obj: dict, path: Path, arch: Mapping[str, Any] | None) -> tuple[VideoViT, dict]:
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: salt-encoder format_version {version!r} is not supported "
            f"(this code reads version {FORMAT_VERSION})"
        )
    missing = [k for k in ("arch", "state_dict", "fingerprint") if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: salt-encoder checkpoint lacks {missing}; the file is corrupt")
    state_dict = obj["state_dict"]
    actual = fingerprint(state_dict)
    if actual != obj["fingerprint"]:
        raise CheckpointError(
            f"{path}: the file is corrupt: weights fingerprint {actual[:16]}... "
            f"differs from the stored {str(obj['fingerprint'])[:16]}..."
        )
    try:
        stored_arch = complete_arch(obj["arch"])
    except ValueError as err:
        raise CheckpointError(f"{path}: invalid stored architecture: {err}") from None
    _check_given_arch(arch, stored_arch, path, "stored")
    encoder = build_encoder(stored_arch)
    load_state_dict_strict(encoder, state_dict, path)
    return encoder, stored_arch


def load_encoder(
    path: str | os.PathLike,
    arch: Mapping[str, Any] | None = None,
    checkpoint_key: str | None = None,
    assume_geometry: bool = True,
) -> tuple[VideoViT, dict]:
    """Load an encoder from a salt-encoder checkpoint (.pt or .safetensors), a V-JEPA 1/2 or
    VideoMAE checkpoint, a Hugging Face VideoMAE or V-JEPA 2 folder (or its weight file beside
    its config.json), or a bare state dict. Returns ``(encoder, arch)``.

    ``arch`` supplies what the weights cannot tell (e.g. num_heads, img_size/num_frames) and
    must agree with whatever they do tell. ``checkpoint_key`` picks the state dict of a
    trainer checkpoint holding several (default: ``target_encoder``, else ``encoder``, ...).
    Without ``assume_geometry``, a RoPE checkpoint whose clip geometry is neither stored nor
    given is refused (exports need it) instead of assumed with a warning.
    The encoder comes back in the floating dtype its weights were stored in. Raises
    CheckpointError for any unreadable, unsafe, corrupt or mismatching file.
    """
    path = Path(path)
    if path.is_dir():
        config_file, weights = hf_folder.read_folder(path, read_checkpoint)
        state_dict, imported_arch = _import_hf(weights, config_file, arch, path)
    else:
        obj = read_checkpoint(path)
        if isinstance(obj, dict) and obj.get("format") == FORMAT:
            encoder, stored_arch = _load_salt_format(obj, path, arch)
            log.info("loaded %s encoder from %s (fingerprint %s)", obj.get("kind"), path, str(obj["fingerprint"])[:16])
            return encoder, stored_arch
        config_file = hf_folder.config_beside(path)
        if config_file is not None and hf_folder.looks_like_hf(obj):
            state_dict, imported_arch = _import_hf(obj, config_file, arch, path)
        elif hf_folder.looks_like_hf(obj):
            raise CheckpointError(
                f"{path}: Hugging Face weights without their config.json; "
                f"pass the folder save_pretrained wrote (config.json + weights)"
            )
        else:
            state_dict, imported_arch = import_state_dict(obj, path, arch, checkpoint_key, assume_geometry)
    encoder = build_encoder(imported_arch)
    load_state_dict_strict(encoder, state_dict, path)
    return encoder, imported_arch


def _import_hf(weights, config_file: Path, arch: Mapping[str, Any] | None, path: Path) -> tuple[dict, dict]:
    importer = {"videomae": hf_videomae.import_hf_videomae, "vjepa2": hf_vjepa2.import_hf_vjepa2}
    model_type = hf_folder.read_config(config_file)["model_type"]
    state_dict, imported = importer[model_type](weights, config_file, check_arch_keys(arch), path)
    try:
        return state_dict, complete_arch(imported)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
