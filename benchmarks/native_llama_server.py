"""Native llama-server from the very llama.cpp that the installed llama-cpp-python vendors: the baseline of
benchmarks/tier3_throughput.py, built for this CPU (GGML_NATIVE=ON, as `make setup` builds the bindings).

The source is llama-cpp-python's own sdist, fetched from the package index pip is configured with; the
binary is cached per llama-cpp-python version under the project's cache folder (TIER_RUNNER_CACHE, default
~/.cache/value-tier-runner), so it is built once (about 12 minutes on 2 cores). Nothing is committed.
Usage: python benchmarks/native_llama_server.py [build|path]
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF",
               "-DBUILD_SHARED_LIBS=OFF"]  # one self-contained binary to cache


def version() -> str:
    return importlib.metadata.version("llama-cpp-python")


def binary() -> Path:
    """Where the llama-server for the installed llama-cpp-python lives once built (it may not exist yet)."""
    cache = Path(os.environ.get("TIER_RUNNER_CACHE") or Path.home() / ".cache" / "value-tier-runner")
    return cache / f"llama-server-{version()}" / "llama-server"


def build() -> Path:
    target = binary()
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                        f"llama-cpp-python=={version()}", "-d", str(work)], check=True)
        (sdist,) = work.glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build_dir = work / "build"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        subprocess.run(["cmake", "-S", str(source), "-B", str(build_dir), *generator, *CMAKE_FLAGS], check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", str(os.cpu_count() or 2)],
                       check=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build_dir / "bin" / "llama-server", target)
    return target


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else "build"
    if command not in ("build", "path"):
        raise SystemExit(__doc__)
    print(build() if command == "build" else binary())


if __name__ == "__main__":
    main()
