"""Score a decode dir: BLEU/chrF for translation sets, WER/CER for recognition sets, overall and
per source language, written to ``result.txt`` (for people) and ``result.json`` (for
``speechllm results``).

BLEU and chrF are computed twice, as ESPnet's ST recipes report them: ``tc`` (the texts as they
are: true case, punctuation) and ``lc.rm`` (both sides lower-cased, punctuation removed). WER and
CER are computed on ``lc.rm`` text. sclite ``trn`` files are written for recognition sets, and
sclite's own report beside ours when ``sclite`` is installed.

Example:
    speechllm score exp/speechllm/decode_test          # reads hyp.txt, ref.txt, utt2lang
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

from speechllm_cli.data.kaldi_dir import DataDirError, read_table
from speechllm_cli.score.metrics import bleu, cer, chrf, wer
from speechllm_cli.text.normalize import lowercase_remove_punctuation
from speechllm_cli.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

ASR_LANGS = ("en",)  # source language == target language: recognition, scored by WER
SCLITE_PATHS = ("sclite", "/usr/lib/sctk/bin/sclite")


def read_pairs(ref_path: Path, hyp_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Reference and hypothesis tables; every reference needs a hypothesis (an empty one is allowed)."""
    refs = read_table(ref_path)
    hyps = read_table(hyp_path, allow_empty_value=True)
    missing = [u for u in refs if u not in hyps]
    if missing:
        raise DataDirError(f"{hyp_path}: no hypothesis for {len(missing)} utterance(s) of {ref_path} "
                           f"(first: {missing[0]}); re-run decoding")
    return refs, hyps


def unscored_hypotheses(refs: dict[str, str], hyps: dict[str, str], hyp_path: Path, ref_path: Path) -> dict:
    """Hypothesis ids absent from the references (not scored): ``{"count", "first"}`` (first 10 ids), with a
    warning that names them; ``count`` is 0 when every hypothesis has a reference."""
    extra = [u for u in hyps if u not in refs]
    if extra:
        logger.warning("%s: %d hypothesis id(s) have no reference in %s and are not scored (first: %s); decode and "
                       "score the same set, or check the utterance ids", hyp_path, len(extra), ref_path,
                       ", ".join(extra[:10]))
    return {"count": len(extra), "first": extra[:10]}


def score_group(utts: list[str], refs: dict[str, str], hyps: dict[str, str], task: str) -> dict:
    ref = [refs[u] for u in utts]
    hyp = [hyps[u] for u in utts]
    ref_lc = [lowercase_remove_punctuation(t) for t in ref]
    hyp_lc = [lowercase_remove_punctuation(t) for t in hyp]
    # a model that ignores its audio writes a few fluent sentences for many inputs: distinct hyps << distinct refs
    result: dict = {"task": task, "num_utts": len(utts), "distinct_hyps": len(set(hyp)), "distinct_refs": len(set(ref))}
    if task == "asr":
        w, c = wer(ref_lc, hyp_lc), cer(ref_lc, hyp_lc)
        result.update(wer=w.rate, cer=c.rate, wer_sub=w.sub, wer_del=w.dele, wer_ins=w.ins, ref_words=w.ref_len)
    else:
        result["bleu"], result["bleu_signature"] = bleu(ref, hyp)
        result["bleu_lc_rm"], _ = bleu(ref_lc, hyp_lc)
        result["chrf"], result["chrf_signature"] = chrf(ref, hyp)
        result["chrf_lc_rm"], _ = chrf(ref_lc, hyp_lc)
    return result


def write_trn(path: Path, table: dict[str, str], utts: list[str], utt2spk: dict[str, str]) -> None:
    """sclite ``trn`` lines: ``text (speaker-utt)`` on lc.rm text."""
    lines = []
    for utt in utts:
        spk = utt2spk.get(utt, utt.split("-")[0])
        utt_part = utt[len(spk) + 1:] if utt.startswith(spk + "-") else utt
        lines.append(f"{lowercase_remove_punctuation(table[utt])} ({spk}-{utt_part})\n")
    atomic_write_text(path, "".join(lines))


def run_sclite(decode_dir: Path) -> Path | None:
    exe = next((p for p in SCLITE_PATHS if shutil.which(p)), None)
    if exe is None:
        logger.info("sclite not installed: skipping its report (make install adds sctk)")
        return None
    out = decode_dir / "sclite"
    out.mkdir(exist_ok=True)
    subprocess.run([exe, "-r", str(decode_dir / "ref.trn"), "trn", "-h", str(decode_dir / "hyp.trn"), "trn",
                    "-i", "rm", "-o", "sum", "pra", "-O", str(out), "-n", "result"],
                   check=True, capture_output=True)
    return out / "result.sys"


def format_report(result: dict) -> str:
    lines = [f"# {result['decode_dir']}", ""]
    lines.append(f"{'set':<10} {'task':<5} {'#utt':>6} {'BLEU':>7} {'BLEU lc.rm':>11} {'chrF':>7} "
                 f"{'WER':>7} {'CER':>7} {'distinct hyp/ref':>17}")
    for name, r in result["groups"].items():
        distinct = f"{r['distinct_hyps']}/{r['distinct_refs']}"
        if r["task"] == "asr":
            lines.append(f"{name:<10} {'asr':<5} {r['num_utts']:>6} {'':>7} {'':>11} {'':>7} "
                         f"{r['wer']:>7.2f} {r['cer']:>7.2f} {distinct:>17}")
        else:
            lines.append(f"{name:<10} {'st':<5} {r['num_utts']:>6} {r['bleu']:>7.2f} {r['bleu_lc_rm']:>11.2f} "
                         f"{r['chrf']:>7.2f} {'':>7} {'':>7} {distinct:>17}")
    st_groups = [r for r in result["groups"].values() if r["task"] == "st"]
    if st_groups:
        lines += ["", f"sacrebleu BLEU signature: {st_groups[0]['bleu_signature']}",
                  f"sacrebleu chrF signature: {st_groups[0]['chrf_signature']}"]
    unscored = result.get("unscored_hyps", {"count": 0})
    if unscored["count"]:
        lines += ["", f"{unscored['count']} hypothesis id(s) absent from the reference, not scored "
                      f"(first: {', '.join(unscored['first'])})"]
    lines += ["", "WER/CER on lc.rm text; BLEU/chrF on the texts as written (tc) and on lc.rm text."]
    return "\n".join(lines) + "\n"


def score_decode_dir(decode_dir: Path, ref: Path | None = None, hyp: Path | None = None,
                     utt2lang: Path | None = None, asr_langs: tuple[str, ...] = ASR_LANGS) -> dict:
    """Score ``decode_dir`` (or explicit ``ref``/``hyp`` files) and write result.txt/json there."""
    decode_dir = Path(decode_dir)
    ref = ref or decode_dir / "ref.txt"
    hyp = hyp or decode_dir / "hyp.txt"
    refs, hyps = read_pairs(ref, hyp)
    unscored = unscored_hypotheses(refs, hyps, hyp, ref)
    lang_path = utt2lang or decode_dir / "utt2lang"
    langs = read_table(lang_path) if lang_path.exists() else {}
    utt2spk = read_table(decode_dir / "utt2spk") if (decode_dir / "utt2spk").exists() else {}
    by_lang: dict[str, list[str]] = {}
    for utt in refs:
        by_lang.setdefault(langs.get(utt, "all"), []).append(utt)
    groups = {}
    st_utts = [u for lang, us in by_lang.items() if lang not in asr_langs for u in us]
    asr_utts = [u for lang, us in by_lang.items() if lang in asr_langs for u in us]
    if len(by_lang) > 1:
        if st_utts:
            groups["all_st"] = score_group(st_utts, refs, hyps, "st")
        if asr_utts:
            groups["all_asr"] = score_group(asr_utts, refs, hyps, "asr")
    for lang in sorted(by_lang):
        groups[lang] = score_group(by_lang[lang], refs, hyps, "asr" if lang in asr_langs else "st")
    result = {"decode_dir": str(decode_dir), "groups": groups, "unscored_hyps": unscored}
    if asr_utts:
        write_trn(decode_dir / "ref.trn", refs, asr_utts, utt2spk)
        write_trn(decode_dir / "hyp.trn", hyps, asr_utts, utt2spk)
        sys_file = run_sclite(decode_dir)
        if sys_file is not None:
            result["sclite"] = str(sys_file)
    atomic_write_text(decode_dir / "result.json", json.dumps(result, indent=2) + "\n")
    report = format_report(result)
    atomic_write_text(decode_dir / "result.txt", report)
    logger.info("scored %s\n%s", decode_dir, report)
    return result
