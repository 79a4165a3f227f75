#!/usr/bin/env bash
# Install the Debian tools the recipes call: espeak-ng (speech for the embedded corpus), sox
# (audio pipes, mp3 via libsox-fmt-mp3) and sctk (sclite scoring). Installs only what is missing,
# and only as root; otherwise prints the command to run.
# Usage: tools/install_system.sh
set -euo pipefail

missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v sox >/dev/null 2>&1 || missing+=(sox libsox-fmt-mp3)
{ command -v sclite >/dev/null 2>&1 || [ -x /usr/lib/sctk/bin/sclite ]; } || missing+=(sctk)

if [ ${#missing[@]} -eq 0 ]; then
  echo "install_system.sh: espeak-ng, sox and sctk are present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_system.sh: missing ${missing[*]}; install them as root:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  echo "  (espeak-ng is needed to build the embedded corpus; sclite is optional)" >&2
  exit 0
fi
echo "install_system.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
