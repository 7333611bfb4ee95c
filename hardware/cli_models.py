"""`tier-runner models`: the model catalog, and converting a GGUF into a folder vLLM can serve."""

from __future__ import annotations

from pathlib import Path

import click

from hardware.catalog import cache_dir, load_catalog


@click.group()
def models() -> None:
    """The model catalog (hardware/models.yaml) and model conversion."""


@models.command("list")
def list_models() -> None:
    """Each catalog model, its format and where its file is expected."""
    for name, entry in sorted(load_catalog().models.items()):
        path = entry.source.locate()
        click.echo(f"{name}\t{entry.format}\t{'present' if path.exists() else 'missing'}\t{path}")


@models.command()
@click.argument("model")
@click.argument("out_dir", required=False, type=click.Path(path_type=Path))
@click.option("--dtype", default="bfloat16", show_default=True, type=click.Choice(["bfloat16", "float16", "float32"]))
@click.option("--force", is_flag=True, help="replace OUT_DIR if it already holds a model")
def convert(model: str, out_dir: Path | None, dtype: str, force: bool) -> None:
    """Convert MODEL (a catalog GGUF model or a .gguf file) into a transformers folder for vLLM.

    OUT_DIR defaults to the cache folder that the catalog's converted entry points at. Needs torch,
    transformers, gguf and accelerate: run it as .venv-vllm/bin/tier-runner (make vllm-setup does).
    """
    from hardware.convert import convert_gguf, resolve_gguf

    gguf = resolve_gguf(model)
    if out_dir is None:
        out_dir = _default_out(model)
    result = convert_gguf(gguf, out_dir, dtype=dtype, force=force)
    click.echo(f"converted {result.source} -> {result.folder} ({result.dtype}, "
               f"{result.bytes_written / 1e6:.0f} MB) in {result.seconds:.1f} s")


def _default_out(model: str) -> Path:
    for entry in load_catalog().models.values():
        source = entry.source
        if getattr(source, "converted_from", None) == model:
            return source.locate()
    return cache_dir() / (Path(model).stem + "-hf")
