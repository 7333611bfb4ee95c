"""Turn a GGUF chat model into a plain transformers folder that vLLM can serve, offline.

vLLM 0.32 no longer reads GGUF itself (and its GGUF plugin needs CUDA). transformers can dequantize
a GGUF; its weights are copied into a plain model whose config has no `quantization_config`, then
saved as safetensors with the tokenizer and chat template. Needs torch, transformers, gguf and
accelerate: run it in the vLLM virtual environment, which has them (`make vllm-setup` does).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from hardware.errors import ConfigError

NEEDS = ("torch", "transformers", "gguf", "accelerate")
DTYPES = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class Converted:
    folder: Path
    source: Path
    dtype: str
    bytes_written: int
    seconds: float


def _import_heavy():
    import importlib

    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"converting a GGUF needs {', '.join(missing)} in this Python; install them with "
            f"`pip install {' '.join(missing)}`, or run the command from the vLLM environment "
            "(.venv-vllm/bin/tier-runner models convert ..., set up by `make vllm-setup`)"
        )
    import torch
    import transformers

    return torch, transformers


def convert_gguf(gguf: Path, out: Path, dtype: str = "bfloat16", force: bool = False) -> Converted:
    """Write `out` (a transformers folder) from the GGUF file `gguf`; atomic: a half-written folder never remains."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    gguf, out = Path(gguf).resolve(), Path(out).resolve()
    if not gguf.is_file():
        raise ConfigError(f"{gguf} does not exist; give a .gguf file or a catalog model name")
    if (out / "config.json").exists() and not force:
        raise ConfigError(f"{out} already holds a model; pass --force to replace it")
    torch, transformers = _import_heavy()
    started = time.perf_counter()
    torch_dtype = getattr(torch, dtype)

    quantized = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch_dtype)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    model_type = config_dict.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **config_dict)
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight") or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ConfigError(f"{gguf}: the dequantized weights do not fit a plain {model_type} model "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{gguf} has no chat template in its metadata; convert an instruct model")

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    plain.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    (partial / "tier_runner_source.json").write_text(json.dumps(
        {"converted_from": str(gguf), "source_bytes": gguf.stat().st_size, "dtype": dtype,
         "transformers": transformers.__version__, "torch": torch.__version__}, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    written = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return Converted(out, gguf, dtype, written, time.perf_counter() - started)


def resolve_gguf(name_or_path: str) -> Path:
    """A .gguf path as given, or a catalog model name resolved (and sha256-checked) to its file."""
    if name_or_path.endswith(".gguf"):
        return Path(name_or_path)
    from hardware.catalog import load_catalog, resolve_model_file

    catalog = load_catalog()
    if catalog.entry(name_or_path).format != "gguf":
        raise ConfigError(f"{name_or_path} is not a GGUF model in the catalog; give a GGUF model or a .gguf file")
    return resolve_model_file(name_or_path, catalog)
