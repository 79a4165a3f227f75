#!/usr/bin/env bash
# The survey's three integration families ("When Large Language Models Meet Speech", ACL 2025) trained on the same
# data (the recipe's train set) with the same LLM (SmolLM2-135M-Instruct), in one table (exp/FAMILIES.md):
#   latent representation  1. Speech-LLaMA on Whisper (CTC frame averaging, label table; LoRA 2: the recipe's system)
#                          2. the same with LoRA 8 (the rank every other LLM system here uses)
#   text-based             3. cascade: Whisper base fine-tuned for ASR in every source language -> the LLM + LoRA 8
#                             translating its transcript (conf/families/cascade_mt.yaml; English passes through)
#                          4. generative error correction: the 5-best list of Whisper base fine-tuned on the train set
#                             -> the LLM + LoRA 8 writing the corrected output (conf/families/ger.yaml); the training
#                             lists come from 2-fold models (each half's speakers decoded by the other half's model)
#   audio-token            5. 500 k-means units of Whisper base's encoder, runs collapsed -> 500 new LLM token rows +
#                             LoRA 8 (conf/families/units.yaml)
#                          6. the same on the CTC compressor's encoder (Whisper + 2 layers trained with CTC on the
#                             source transcripts, exp/ctc_whisper): units that are closer to phones
# Each stage reuses what is done (trained models, finished decodes). About 2 h on 2 CPU cores after `make demo`.
#   local/run_families.sh                          # embedded corpus, after `make demo`
#   local/run_families.sh --stage 3 --stop-stage 3 --nj 4
set -euo pipefail

log() { echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"; }

stage=1
stop_stage=100
nj=2
test_sets=test
whisper=exp/whisper/base
llm=exp/llm/smollm2_hf
decode_config=conf/decode.yaml
num_units=500
nbest=5

help_message="Usage: $0 [--stage 1-6] [--stop-stage 1-6] [--nj J] [--test-sets 'test ...'] [--num-units K] [--nbest N]"

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh

dump=dump/whisper_mel
lora8=(--set model.lora.rank=8 --set model.lora.alpha=16)

# train EXP_DIR ARGS...: speechllm train into EXP_DIR, resumed when checkpoints exist (a finished run ends at once)
train() {
  local exp_dir=$1; shift
  local resume=(); [ -d "${exp_dir}/checkpoints" ] && resume=(--resume)
  log "training ${exp_dir} (log: ${exp_dir}/train.log)"
  speechllm train --out "${exp_dir}" "${resume[@]}" "$@"
}
# decode MODEL DATA OUT ARGS...: decode (a finished decode with the same options is left alone) and score
decode_and_score() {
  local model=$1 data=$2 out=$3; shift 3
  speechllm decode --model "${model}" --data "${data}" --out "${out}" --nj "${nj}" --cmd "${decode_cmd}" \
    --config "${decode_config}" "$@"
  speechllm score "${out}"
}

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
  log "stage 1: latent representation: Speech-LLaMA on Whisper (LoRA 2 and 8), and Whisper fine-tuned"
  ./run.sh --stage 1 --stop-stage 7 --nj "${nj}" --test-sets "${test_sets}"
  ./run.sh --stage 5 --stop-stage 7 --nj "${nj}" --test-sets "${test_sets}" --exp-dir exp/speechllm_whisper_lora8 \
    --train-args "${lora8[*]}"
  ./run.sh --model-type whisper --stage 5 --stop-stage 7 --nj "${nj}" --test-sets "${test_sets}"
fi

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
  log "stage 2: text-based (a): the cascade's ASR, Whisper base fine-tuned on text.src of every language"
  train exp/whisper_asr --config conf/train_whisper.yaml --train-data "${dump}/train" --valid-data "${dump}/dev" \
    --set whisper="${whisper}" --set task=asr --set target=text.src
  for dset in dev ${test_sets}; do
    speechllm decode --model exp/whisper_asr --data "${dump}/${dset}" --out "exp/whisper_asr/decode_${dset}" \
      --task asr --nj "${nj}" --cmd "${decode_cmd}" --config "${decode_config}"
    log "the ASR's source-language WER on ${dset} (exp/whisper_asr/decode_${dset}/src_wer):"
    speechllm score "exp/whisper_asr/decode_${dset}" --ref "${dump}/${dset}/text.src" --asr-langs "de en es fr" \
      | tee "exp/whisper_asr/decode_${dset}/src_wer"
  done
  log "stage 2: the cascade's translation step: LoRA on (text.src -> text) pairs"
  for dset in train dev; do
    speechllm text-input --data "${dump}/${dset}" --from-table text.src --out "dump/text_src/${dset}"
  done
  train exp/family_cascade_mt --config conf/families/cascade_mt.yaml --train-data dump/text_src/train \
    --valid-data dump/text_src/dev --set model.llm="${llm}"
  for dset in ${test_sets}; do
    speechllm text-input --data "${dump}/${dset}" --from-decode "exp/whisper_asr/decode_${dset}" \
      --out "dump/cascade_whisper_asr/${dset}"
    decode_and_score exp/family_cascade_mt "dump/cascade_whisper_asr/${dset}" "exp/family_cascade_mt/decode_${dset}"
  done
fi

if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
  log "stage 3: text-based (b): generative error correction of Whisper fine-tuned's ${nbest}-best lists"
  [ -f exp/whisper_finetuned/model/model.yaml ] || { log "exp/whisper_finetuned missing: run stage 1"; exit 1; }
  speechllm split-data "${dump}/train" 2   # whole speakers per half
  for fold in 1 2; do
    cp "${dump}/train/feats_type" "${dump}/train/split2/${fold}/"
    train "exp/whisper_fold${fold}" --config conf/train_whisper.yaml --train-data "${dump}/train/split2/${fold}" \
      --valid-data "${dump}/dev" --set whisper="${whisper}"
  done
  nbest_args=(--beam "${nbest}" --nbest "${nbest}" --nj "${nj}" --cmd "${decode_cmd}" --config "${decode_config}")
  speechllm decode --model exp/whisper_fold1 --data "${dump}/train/split2/2" \
    --out "exp/whisper_fold1/decode_train_fold2_nbest${nbest}" "${nbest_args[@]}"
  speechllm decode --model exp/whisper_fold2 --data "${dump}/train/split2/1" \
    --out "exp/whisper_fold2/decode_train_fold1_nbest${nbest}" "${nbest_args[@]}"
  speechllm text-input --data "${dump}/train" --nbest "${nbest}" --out dump/ger/train \
    --from-decode "exp/whisper_fold1/decode_train_fold2_nbest${nbest}" \
    --from-decode "exp/whisper_fold2/decode_train_fold1_nbest${nbest}"
  for dset in dev ${test_sets}; do
    speechllm decode --model exp/whisper_finetuned --data "${dump}/${dset}" \
      --out "exp/whisper_finetuned/decode_${dset}_nbest${nbest}" "${nbest_args[@]}"
    speechllm score "exp/whisper_finetuned/decode_${dset}_nbest${nbest}"   # the first pass's own 1-best
    speechllm text-input --data "${dump}/${dset}" --nbest "${nbest}" --out "dump/ger/${dset}" \
      --from-decode "exp/whisper_finetuned/decode_${dset}_nbest${nbest}"
  done
  train exp/family_ger --config conf/families/ger.yaml --train-data dump/ger/train --valid-data dump/ger/dev \
    --set model.llm="${llm}" --set model.nbest="${nbest}"
  for dset in ${test_sets}; do
    decode_and_score exp/family_ger "dump/ger/${dset}" "exp/family_ger/decode_${dset}"
  done
fi

if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then
  # units of two pretrained encoders: Whisper base's (20 ms frames) and the CTC compressor's on it (stage 4 of
  # run.sh: Whisper + 2 Transformer layers trained with CTC on the source transcripts, 40 ms frames, no compression)
  for encoder in whisper ctc; do
    if [ "${encoder}" = whisper ]; then
      km=exp/kmeans_whisper${num_units}; exp_dir=exp/family_units; frontend=(--frontend whisper --frontend-dir "${whisper}")
    else
      km=exp/kmeans_ctc${num_units}; exp_dir=exp/family_units_ctc
      frontend=(--frontend ctc_compressor --frontend-dir exp/ctc_whisper)
    fi
    log "stage 4: audio-token: ${num_units} k-means units of the ${encoder} encoder -> new LLM token rows + LoRA 8"
    [ -f "${km}/model.yaml" ] || speechllm train-kmeans "${frontend[@]}" --data "${dump}/train" \
      --num-units "${num_units}" --out "${km}"
    for dset in ${test_sets}; do
      speechllm units --kmeans "${km}" --data "${dump}/${dset}" --out "dump/units_${encoder}${num_units}/${dset}"
    done
    train "${exp_dir}" --config conf/families/units.yaml --train-data "${dump}/train" --valid-data "${dump}/dev" \
      --set model.frontend.dir="${km}" --set model.llm="${llm}"
    for dset in ${test_sets}; do
      decode_and_score "${exp_dir}" "${dump}/${dset}" "${exp_dir}/decode_${dset}"
    done
  done
fi

if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
  log "stage 5: the families table (exp/FAMILIES.md, systems in conf/families/systems.yaml)"
  speechllm results exp --systems conf/families/systems.yaml --sets "${test_sets}" --out exp/FAMILIES.md
fi

log "done (stages ${stage}-${stop_stage})"
