# speechllm: `make install` sets everything up, `make test` runs the fast tests,
# `make demo` runs the recipe on the embedded corpus, `make baselines` the paper's baselines, `make whisper` every
# Whisper system beside them. See README.md.
VENV ?= .venv
PY := $(VENV)/bin/python
STAGE ?= 1
STOP_STAGE ?= 100

.PHONY: install test test-slow demo baselines whisper ablations families robustness lint bench bench-decode clean

install:
	tools/install_system.sh
	tools/install_python.sh $(VENV)

test:
	$(PY) -m pytest -q

test-slow:
	$(PY) -m pytest -q -m slow

demo:
	cd egs/covost2 && ./run.sh --stage $(STAGE) --stop-stage $(STOP_STAGE)

baselines:  # after `make demo`: seq2seq from scratch + LLM n-best rescoring, one table with Speech-LLaMA
	cd egs/covost2 && local/run_baselines.sh

whisper:  # after `make demo`: zero-shot and fine-tuned Whisper, Speech-LLaMA on Whisper, the fbank systems
	cd egs/covost2 && local/run_whisper.sh

ablations:  # after `make baselines`: every conf/tuning/ablation_*.yaml and the decoder-only model, one table
	cd egs/covost2 && local/run_ablations.sh

families:  # after `make demo`: the survey's three integration families on the same data and LLM, one table (~2 h)
	cd egs/covost2 && local/run_families.sh

robustness:  # after `make whisper`: noise, speed perturbation and wide voices, with and without, on test and test_noisy
	cd egs/covost2 && local/run_robustness.sh

lint:
	$(VENV)/bin/ruff check speechllm_cli tests bench

bench:
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

bench-decode:  # after `make demo`: every decode engine on the test set (about 15 min)
	cd egs/covost2 && ../../$(PY) ../../bench/bench_decode.py testset --model exp/speechllm_whisper \
		--data dump/whisper_mel/test

clean:
	rm -rf egs/covost2/data egs/covost2/dump egs/covost2/exp egs/covost2/downloads
