#!/usr/bin/env bash
# Kaldi-style option parsing, sourced by recipes after their defaults are set:
#   stage=1; nj=4; . utils/parse_options.sh
# turns "--stage 3", "--stage=3" and "--src-langs 'de fr'" into the shell variables stage,
# src_langs (dashes become underscores). An option whose variable the script did not define is an
# error, as is a missing value. "--config FILE" sources FILE first; "--help" prints $help_message.
# Positional arguments after the options are left in "$@".

while true; do
  [ $# -eq 0 ] && break
  case "$1" in
    --help|-h)
      echo "${help_message:-no help available}"
      exit 0 ;;
    --*=*)
      __name=${1%%=*}; __value=${1#*=}; shift ;;
    --*)
      __name=$1
      if [ $# -lt 2 ]; then echo "$0: option $1 needs a value" >&2; exit 1; fi
      __value=$2; shift 2 ;;
    *) break ;;
  esac
  __name=${__name#--}; __name=${__name//-/_}
  if [ "$__name" = config ]; then
    [ -f "$__value" ] || { echo "$0: config file $__value not found" >&2; exit 1; }
    # shellcheck disable=SC1090
    . "$__value"
    continue
  fi
  if [[ ! "$__name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || ! declare -p "$__name" >/dev/null 2>&1; then
    echo "$0: unknown option --${__name//_/-} (run $0 --help for the options)" >&2
    exit 1
  fi
  printf -v "$__name" '%s' "$__value"
done
unset __name __value
true
