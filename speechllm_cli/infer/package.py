"""``speechllm package``: a trained model as one self-contained dir that ``infer`` and ``SpeechModel`` load anywhere.

Example::

    from speechllm_cli.infer.package import package_model
    package_model("exp/speechllm_whisper", "mymodel")             # the LLM referenced by path and content hash
    package_model("exp/speechllm_whisper", "mymodel", with_llm=True)   # the LLM copied in (mymodel/llm)

Layout (a speech-LLM; other model types are self-contained dirs and are copied as they are)::

    mymodel/model.yaml        the model record; frontend.dir: frontend, llm.path: llm (--with-llm) or the original
    mymodel/audio.safetensors mymodel/lora/ (or llm.safetensors)    the trained weights
    mymodel/frontend/         the front-end's model (a CTC compressor, or a Whisper export); a compressor's
    mymodel/whisper/            Whisper beside it (recorded as ../whisper)
    mymodel/encoder/          a k-means units front-end's encoder (recorded as ../encoder by frontend/model.yaml)
    mymodel/llm/              the LLM (with --with-llm)
    mymodel/decode.yaml       decode options (the experiment's last decode), used by infer
    mymodel/infer.yaml        max_seconds: recordings longer than the longest training utterance are split
    mymodel/README.md         the model card: data, config, results

Paths inside are relative to the dir that records them, so the package can be copied or moved. Without
``--with-llm`` the LLM is found at its recorded path, or at ``--llm`` given to ``infer``: its content hash must be the
recorded one, else loading stops with an error naming both hashes.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import yaml

from speechllm_cli.decode.decode import resolve_model_dir
from speechllm_cli.models.model_dir import (
    GGUF_DIR,
    RECORD_NAME,
    SPEECH_LLM_TYPES,
    read_model_record,
    resolve_recorded_path,
)
from speechllm_cli.utils.io import atomic_dir

logger = logging.getLogger(__name__)

FRONTEND_DIR, WHISPER_DIR, ENCODER_DIR, LLM_DIR = "frontend", "whisper", "encoder", "llm"
# what a trained dir holds besides its model (checkpoints, other weight variants, plots, logs, decodes, exports)
TRAINING_LEFTOVERS = (GGUF_DIR, "checkpoints", "decode_*", "*.avg.safetensors", "*.best.safetensors", "images",
                      "history.json", "train.log", "report_*.json")


def _copy_dir(source: str | os.PathLike, target: Path, skip: tuple[str, ...] = ()) -> None:
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"{source} not found: the model refers to it; run from the recipe dir (egs/covost2) "
                                "or restore it")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*TRAINING_LEFTOVERS, *skip))


def _write_record(model_dir: Path, record: dict) -> None:
    (model_dir / RECORD_NAME).write_text(yaml.safe_dump(record, sort_keys=False, allow_unicode=True),
                                         encoding="utf-8")


def _package_frontend(record: dict, model_dir: Path, out: Path) -> None:
    """Copy the front-end's model (and a compressor's Whisper) into ``out`` and point the records at the copies."""
    frontend = record["config"]["frontend"]
    if not frontend.get("dir"):
        return
    source = resolve_recorded_path(frontend["dir"], model_dir)
    _copy_dir(source, out / FRONTEND_DIR)
    frontend["dir"] = FRONTEND_DIR
    inner = read_model_record(out / FRONTEND_DIR)
    whisper = inner.get("whisper")
    if inner["model_type"] == "ctc_compressor" and whisper:  # its Whisper, recorded relative to the compressor
        _copy_dir(resolve_recorded_path(whisper["path"], source), out / WHISPER_DIR)
        inner["whisper"]["path"] = inner["config"]["whisper_dir"] = f"../{WHISPER_DIR}"
        _write_record(out / FRONTEND_DIR, inner)
    encoder = inner.get("config", {}).get("frontend", {}) if inner["model_type"] == "kmeans_units" else {}
    if encoder.get("dir"):  # the units' encoder (a Whisper export or a compressor), recorded relative to the k-means
        _copy_dir(resolve_recorded_path(encoder["dir"], source), out / ENCODER_DIR)
        encoder["dir"] = f"../{ENCODER_DIR}"
        _write_record(out / FRONTEND_DIR, inner)


def _results_rows(experiment_dir: Path) -> list[str]:
    rows = []
    for result in sorted(experiment_dir.glob("decode_*/result.txt")):
        lines = [line for line in result.read_text(encoding="utf-8").splitlines() if line.strip()]
        table = [line for line in lines if line.split()[0] in ("set",) or line.split()[0].startswith("all_")
                 or len(line.split()) > 3 and line.split()[1] in ("st", "asr")]
        if table:
            rows += [f"{result.parent.name}:", "", "```", *table, "```", ""]
    return rows


def _model_card(record: dict, model_dir: Path, options: dict, with_llm: bool, name: str) -> str:
    config = record.get("config", {})
    training = record.get("training", {})
    from speechllm_cli.infer.model import training_dump

    experiment = model_dir.parent
    dump = training_dump(model_dir)
    data = []
    if dump is not None:
        seconds = [float(f[1]) for f in map(str.split, (dump / "utt2dur").read_text().splitlines()) if len(f) == 2]
        langs = sorted({f[1] for f in map(str.split, (dump / "utt2lang").read_text().splitlines()) if len(f) == 2}) \
            if (dump / "utt2lang").is_file() else []
        data = [f"- training data: {dump} ({len(seconds)} utterances, {sum(seconds) / 3600:.2f} h, longest "
                f"{max(seconds):.1f} s; languages {', '.join(langs) or '-'})"]
    llm = record.get("llm", {})
    lines = [
        f"# {name}: a {record['model_type']} model packaged by speechllm from {experiment}",
        "",
        "```python",
        "from speechllm_cli import SpeechModel",
        f'model = SpeechModel.load("{name}")      # this dir',
        'print(model.transcribe("recording.wav").text)',
        "```",
        "",
        f"Command line: `speechllm infer --model {name} recording.wav`",
        "",
        "## LLM",
        f"- {'copied into llm/' if with_llm else 'referenced, not copied: ' + str(llm.get('path'))}"
        f" (content hash {llm.get('hash', '-')})" if llm else "- none (a self-contained model)",
        "",
        "## Training",
        f"- task: {training.get('task', '-')}, ASR languages: {training.get('asr_langs', '-')}, "
        f"target: {training.get('target', '-')}",
        *data,
        "",
        "## Config",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False, allow_unicode=True).rstrip(),
        "```",
        "",
        "## Decode options (decode.yaml)",
        "```yaml",
        yaml.safe_dump(options, sort_keys=False).rstrip(),
        "```",
        "",
        "## Results",
        *(_results_rows(experiment) or ["(no scored decode dir beside the model)"]),
    ]
    return "\n".join(lines) + "\n"


def package_model(model: str | os.PathLike, out: str | os.PathLike, with_llm: bool = False) -> Path:
    """Write the model of ``model`` (an experiment or model dir) as a self-contained package dir ``out``
    (replaced atomically). Returns ``out``."""
    from speechllm_cli.infer.model import DECODE_CONFIG, INFER_CONFIG, model_decode_options, model_max_seconds

    model_dir = resolve_model_dir(model)
    record = read_model_record(model_dir)
    options = model_decode_options(model_dir).record()
    with atomic_dir(out) as tmp:
        tmp.rmdir()
        speech_llm = record["model_type"] in SPEECH_LLM_TYPES
        packaged = (FRONTEND_DIR, WHISPER_DIR, ENCODER_DIR, LLM_DIR)  # a package's own copies: made again below
        _copy_dir(model_dir, tmp, skip=packaged if speech_llm else ())
        if speech_llm:
            _package_frontend(record, model_dir, tmp)
            llm_path = resolve_recorded_path(record["llm"]["path"], model_dir)
            if with_llm:
                _copy_dir(llm_path, tmp / LLM_DIR)
                record["llm"]["path"] = LLM_DIR
            else:
                record["llm"]["path"] = str(Path(llm_path).resolve())
            _write_record(tmp, record)
        (tmp / DECODE_CONFIG).write_text(yaml.safe_dump(options, sort_keys=False), encoding="utf-8")
        (tmp / INFER_CONFIG).write_text(yaml.safe_dump({"max_seconds": model_max_seconds(model_dir)}), encoding="utf-8")
        card = _model_card(record, model_dir, options, with_llm, Path(out).name)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    logger.info("packaged %s into %s%s", model_dir, out, " (LLM included)" if with_llm else "")
    return Path(out)

