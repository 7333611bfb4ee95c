"""llama-cpp-python's own OpenAI server, run as its users run it (`python -m llama_cpp.server ...`), except that its
model loads in the weight layout runners/llama/layout.py chooses: with the default one, llama.cpp's AMX kernels
killed this server on its first chat completion on a CPU with AMX. The server looks `llama_cpp.Llama` up when it
loads the model, so replacing it first is enough."""

from __future__ import annotations

import runpy

import llama_cpp

from runners.llama.layout import llama_class

if __name__ == "__main__":
    llama_cpp.Llama = llama_class()
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
