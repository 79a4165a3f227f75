#!/usr/bin/env bash
# Whisper as a front-end and as a peer, beside the fbank systems, in one results table (exp/RESULTS.md):
#   1. zero-shot Whisper base (transcribe English, translate the rest; 30 s padding, as Whisper runs)
#   2. Whisper base fine-tuned on the train set (./run.sh --model-type whisper; conf/train_whisper.yaml)
#   3. Speech-LLaMA on Whisper with CTC frame averaging (./run.sh's default: conf/train_speechllm_whisper.yaml)
#   4. Speech-LLaMA on Whisper with SLAM-ASR's stacking + MLP adapter, no CTC (conf/tuning/whisper_stack_mlp.yaml)
#   5. the paper's Speech-LLaMA on fbank (./run.sh --frontend fbank) and the seq2seq baseline (local/run_baselines.sh)
#      when --with-fbank true (they take ~25 min more on 2 cores)
#   local/run_whisper.sh                        # embedded corpus, after `make demo`
#   local/run_whisper.sh --with-fbank false --nj 4
set -euo pipefail

log() { echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"; }

nj=2
test_sets=test
whisper=exp/whisper/base
decode_config=conf/decode.yaml
with_fbank=true

help_message="Usage: $0 [--nj J] [--whisper DIR] [--with-fbank true|false] [--test-sets 'test ...']"

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh

log "stages 1-4 on Whisper (reused when done): data, Whisper log-mel, export, CTC compressor on Whisper"
./run.sh --stage 1 --stop-stage 4 --nj "${nj}" --whisper "${whisper}"

log "1. zero-shot ${whisper}"
for dset in ${test_sets}; do
  speechllm decode --model "${whisper}" --data "dump/whisper_mel/${dset}" --out "exp/whisper_zeroshot/decode_${dset}" \
    --nj "${nj}" --cmd "${decode_cmd}" --config "${decode_config}"
  speechllm score "exp/whisper_zeroshot/decode_${dset}"
done

log "2. Whisper fine-tuned on the train set"
./run.sh --model-type whisper --stage 5 --stop-stage 7 --nj "${nj}" --whisper "${whisper}" --test-sets "${test_sets}"

log "3. Speech-LLaMA on Whisper, CTC frame averaging"
./run.sh --stage 5 --stop-stage 7 --nj "${nj}" --whisper "${whisper}" --test-sets "${test_sets}"

log "4. Speech-LLaMA on Whisper, stacking + MLP adapter"
./run.sh --stage 5 --stop-stage 7 --nj "${nj}" --whisper "${whisper}" --test-sets "${test_sets}" \
  --train-config conf/tuning/whisper_stack_mlp.yaml --exp-dir exp/speechllm_whisper_stack_mlp \
  --train-args "--set model.frontend.dir=${whisper}"

if [ "${with_fbank}" = true ]; then
  log "5. the paper's fbank systems: Speech-LLaMA on fbank, then the seq2seq baseline and LLM rescoring"
  ./run.sh --frontend fbank --stage 2 --stop-stage 7 --nj "${nj}" --test-sets "${test_sets}"
  local/run_baselines.sh --nj "${nj}" --test-sets "${test_sets}"
fi

speechllm results exp
log "done: exp/RESULTS.md"
