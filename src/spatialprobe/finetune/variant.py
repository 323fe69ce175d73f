"""The `lora:<id>` model variant: a base checkpoint plus a Mod C adapter folder (peft's `save_pretrained`).

Its identity is the adapter's content: the SHA-256 of its weights and config files (small: LoRA only),
never the folder's path, so a copied adapter keeps its features and a retrained one gets a new key.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from ..errors import SpatialProbeError

#: the files of a peft adapter folder that decide what it computes
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
#: adapter_config.json fields that say where the base came from (a copy of the base must give the same key)
PLACE_FIELDS = ("base_model_name_or_path", "revision")


def adapter_fingerprint(folder: str | Path) -> dict[str, str]:
    """file name -> SHA-256 of its bytes, for the adapter files of `folder`; {} while it does not exist yet
    (a dry run before the fine-tune: the key changes once the adapter is trained, as a hub id's does
    once its commit is known)."""
    folder = Path(folder)
    facts = {}
    for name in ADAPTER_FILES:
        if (folder / name).is_file():
            stat = (folder / name).stat()
            facts[name] = file_sha256(str(folder / name), stat.st_size, stat.st_mtime_ns)
    return facts


@lru_cache(maxsize=256)  # keyed by size and mtime: every job's key reads the adapter, a rewritten one is read again
def file_sha256(path: str, size: int, mtime_ns: int) -> str:
    content = Path(path).read_bytes()
    if path.endswith(".json"):  # the base model's path is where it was trained from, not what the adapter computes
        config = {k: v for k, v in json.loads(content).items() if k not in PLACE_FIELDS}
        content = json.dumps(config, sort_keys=True).encode()
    return hashlib.sha256(content).hexdigest()


def apply_adapter(backbone, folder: str | Path) -> None:
    """Load the adapter in `folder` onto the backbone's model (`backbone.model` becomes a PeftModel, in eval
    mode); stages, footprints and extraction work as for the original."""
    from peft import PeftModel

    folder = Path(folder)
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        raise SpatialProbeError(f"LoRA adapter folder {folder} has no {' or '.join(missing)}: "
                                "run the finetune task first (it writes <folder>/adapter)")
    backbone.model = PeftModel.from_pretrained(backbone.model, str(folder), is_trainable=False).eval()
