# Activate the project's virtual environment and put the recipe's utils/ on PATH.
# shellcheck disable=SC1091
__root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ -f "$__root/.venv/bin/activate" ]; then
  . "$__root/.venv/bin/activate"
elif ! command -v speechllm >/dev/null 2>&1; then
  echo "path.sh: no $__root/.venv and no speechllm on PATH; run 'make install' in $__root" >&2
  return 1 2>/dev/null || exit 1
fi
export PATH=$PWD/utils:$PATH
export LC_ALL=C
export PYTHONUNBUFFERED=1
unset __root
