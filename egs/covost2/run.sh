#!/usr/bin/env bash
# CoVoST2 X->En speech translation (and English ASR) with Speech-LLaMA.
# Each stage reads the previous stage's files on disk and calls one `speechllm` subcommand.
#   ./run.sh                                  # every stage, embedded corpus (db.sh empty)
#   ./run.sh --stage 2 --stop-stage 2 --nj 4  # features only
#   ./run.sh --src-langs "de fr es ca"        # with real CoVoST2 paths in db.sh
set -euo pipefail

log() { echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"; }

stage=1               # first stage to run
stop_stage=100        # last stage to run
nj=2                  # parallel jobs for data-parallel stages
src_langs="de fr es en"   # source languages; "en" is English ASR
norm=tc               # target text convention: tc (true case) or lc.rm
mini_size=1.0         # size of the embedded corpus (1.0 = 240/30/30 utterances per language)
mini_seed=0
train_set=train
valid_set=dev
test_sets=test

help_message=$(cat <<HELP
Usage: $0 [--stage N] [--stop-stage M] [--nj J] [--src-langs "de fr"] [--norm tc|lc.rm]
Stages: 1 data preparation, 2 fbank features + CMVN.
HELP
)

. ./db.sh
. ./path.sh
. ./cmd.sh
. utils/parse_options.sh

if [ -z "$COMMONVOICE" ]; then
  corpus=downloads/mini
  COMMONVOICE=$corpus
  COVOST2=$corpus
fi

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
  log "stage 1: data preparation (${src_langs})"
  if [ -n "${corpus:-}" ]; then
    log "db.sh is empty: building the embedded corpus in ${corpus}"
    speechllm make-mini-corpus "${corpus}" --size "${mini_size}" --seed "${mini_seed}" \
      --langs "${src_langs}" --jobs "${nj}"
  fi
  speechllm prepare-covost2 --cv-root "${COMMONVOICE}" --covost-dir "${COVOST2}" \
    --src-langs "${src_langs}" --norm "${norm}" --out data
  for dset in ${train_set} ${valid_set} ${test_sets}; do
    speechllm validate-data "data/${dset}"
  done
fi

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
  log "stage 2: 80-dim fbank (${nj} jobs) and global CMVN on ${train_set}"
  for dset in ${train_set} ${valid_set} ${test_sets}; do
    speechllm fbank "data/${dset}" "dump/${dset}" --nj "${nj}" --cmd "${train_cmd}"
  done
  speechllm compute-cmvn "dump/${train_set}"
fi

log "done (stages ${stage}-${stop_stage})"
