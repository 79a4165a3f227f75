#!/usr/bin/env bash
# What each robustness measure buys, on the test set, on its noisy copy (test_noisy: noise at 5-15 dB SNR, half
# reverberant) and on the test sentences spoken by voices that no train set has (test_unheard: 8 speakers per
# language of espeak-ng variants outside the classic and the wide train sets), in one table (exp/ROBUSTNESS.md, rows
# in conf/robustness/systems.yaml):
#   fbank Speech-LLaMA (the paper's system; every row trains its own CTC compressor on the row's data, and its
#   speech LLM at lr 5e-4: at the recipe's 1.5e-3 the augmented model stops listening in its first epoch)
#     1. clean training                       exp/ctc_compressor      + exp/rob_fbank_clean
#     2. + noise and reverberation on the fly exp/ctc_compressor_noise + exp/rob_fbank_noise
#     3. + speed perturbation 0.9/1.0/1.1     exp/ctc_compressor_sp   + exp/rob_fbank_sp (the same number of updates)
#     4. + wide train voices                  exp/ctc_compressor_wide + exp/rob_fbank_wide
#   Speech-LLaMA on Whisper (the recipe's system and compressor, exp/ctc_whisper; the measures on the LLM side)
#     5. clean training (exp/speechllm_whisper), 6. + noise and reverberation, 7. + speed perturbation (the same
#     number of updates), 8. + wide train voices
# Each stage reuses what is done (data, dumps, trained models, finished decodes). About 3 h on 2 CPU cores after
# `make demo` and `./run.sh --frontend fbank`.
#   local/run_robustness.sh
#   local/run_robustness.sh --stage 2 --stop-stage 2 --nj 4
set -euo pipefail

log() { echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"; }

stage=1
stop_stage=100
nj=2
noisy_snr="5 15"
augment="noise_prob=0.5 reverb_prob=0.3"
speed_perturb_factors="0.9 1.0 1.1"

help_message="Usage: $0 [--stage 1-10] [--stop-stage 1-10] [--nj J] [--noisy-snr '5 15'] [--augment 'k=v ...']"

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh

lr=(--set train.lr=5e-4)
sp_ctc=(--set train.epochs=7 --set train.max_steps=1220)   # 3 copies: the updates of 20 epochs of the clean set
sp_llm=(--set train.epochs=2 --set train.max_steps=305)    # likewise for 5 epochs
# fbank ROW_ARGS...: the fbank system of one row, data (stages 1-2, the tokenizer of the clean set kept), compressor,
# speech LLM, decoding of test and test_noisy and scoring (stages 4-7)
fbank() {
  ./run.sh --stage 1 --stop-stage 2 --frontend fbank --nj "${nj}" --noisy-snr "${noisy_snr}" "$@"
  ./run.sh --stage 4 --stop-stage 7 --frontend fbank --nj "${nj}" --noisy-snr "${noisy_snr}" "$@"
}
# whisper ROW_ARGS...: the same for the speech LLM on Whisper, over the recipe's clean compressor (stages 5-7)
whisper() {
  ./run.sh --stage 1 --stop-stage 2 --nj "${nj}" --noisy-snr "${noisy_snr}" "$@"
  ./run.sh --stage 5 --stop-stage 7 --nj "${nj}" --noisy-snr "${noisy_snr}" "$@"
}

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
  log "stage 1: fbank, clean training"
  fbank --exp-dir exp/rob_fbank_clean --train-args "${lr[*]}"
fi
if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
  log "stage 2: fbank + noise and reverberation (${augment})"
  fbank --augment "${augment}" --ctc-exp exp/ctc_compressor_noise --exp-dir exp/rob_fbank_noise --train-args "${lr[*]}"
fi
if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
  log "stage 3: fbank + speed perturbation (${speed_perturb_factors})"
  fbank --speed-perturb-factors "${speed_perturb_factors}" --ctc-exp exp/ctc_compressor_sp --ctc-args "${sp_ctc[*]}" \
    --exp-dir exp/rob_fbank_sp --train-args "${lr[*]} ${sp_llm[*]}"
fi
if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then
  log "stage 4: fbank + wide train voices"
  fbank --mini-voices wide --ctc-exp exp/ctc_compressor_wide --exp-dir exp/rob_fbank_wide --train-args "${lr[*]}"
fi
if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
  log "stage 5: Whisper, clean training (the recipe's system) on test and test_noisy"
  whisper
fi
if [ "${stage}" -le 6 ] && [ "${stop_stage}" -ge 6 ]; then
  log "stage 6: Whisper + noise and reverberation (${augment})"
  whisper --augment "${augment}" --exp-dir exp/rob_whisper_noise
fi
if [ "${stage}" -le 7 ] && [ "${stop_stage}" -ge 7 ]; then
  log "stage 7: Whisper + speed perturbation (${speed_perturb_factors})"
  whisper --speed-perturb-factors "${speed_perturb_factors}" --exp-dir exp/rob_whisper_sp --train-args "${sp_llm[*]}"
fi
if [ "${stage}" -le 8 ] && [ "${stop_stage}" -ge 8 ]; then
  log "stage 8: Whisper + wide train voices"
  whisper --mini-voices wide --exp-dir exp/rob_whisper_wide
fi
if [ "${stage}" -le 9 ] && [ "${stop_stage}" -ge 9 ]; then
  log "stage 9: test_unheard (the test sentences in voices no train set has), decoded by every row's model"
  # its train and dev clips are the classic corpus's: hard links, so that only the test set is synthesised
  [ -d downloads/mini_unheard ] || cp -al downloads/mini downloads/mini_unheard
  speechllm make-mini-corpus downloads/mini_unheard --voices unheard --jobs "${nj}"
  speechllm prepare-covost2 --cv-root downloads/mini_unheard --covost-dir downloads/mini_unheard \
    --src-langs "de fr es en" --out data/mini_unheard
  rm -rf data/test_unheard && mv data/mini_unheard/test data/test_unheard && rm -rf data/mini_unheard
  speechllm validate-data data/test_unheard
  speechllm fbank data/test_unheard dump/test_unheard --type fbank --nj "${nj}" --cmd "${train_cmd}"
  speechllm fbank data/test_unheard dump/whisper_mel/test_unheard --type whisper_mel --nj "${nj}" --cmd "${train_cmd}"
  for row in rob_fbank_clean:dump rob_fbank_noise:dump rob_fbank_sp:dump rob_fbank_wide:dump \
             speechllm_whisper:dump/whisper_mel rob_whisper_noise:dump/whisper_mel rob_whisper_sp:dump/whisper_mel \
             rob_whisper_wide:dump/whisper_mel; do
    exp_dir=exp/${row%%:*} dump=${row##*:}
    speechllm decode --model "${exp_dir}" --data "${dump}/test_unheard" --out "${exp_dir}/decode_test_unheard" \
      --nj "${nj}" --cmd "${decode_cmd}" --config conf/decode.yaml
    speechllm score "${exp_dir}/decode_test_unheard"
  done
fi
if [ "${stage}" -le 10 ] && [ "${stop_stage}" -ge 10 ]; then
  log "stage 10: the table"
  speechllm results exp --systems conf/robustness/systems.yaml --sets "test test_noisy test_unheard" \
    --out exp/ROBUSTNESS.md
  cat exp/ROBUSTNESS.md
fi
log "done (stages ${stage}-${stop_stage})"
