"""Does a speech LLM use its audio? Losses with the true, another utterance's and no audio, and the shape of the
audio embeddings against the LLM's token embeddings.

A model that ignores its audio (it learned one constant soft prompt that tunes the LLM to the corpus) has about
the same loss with another utterance's audio as with its own, audio embeddings that point the same way for every
utterance, and decodes a few fluent sentences for many inputs. These functions measure each; training reports
them every validation (``SpeechLLMTask.validate_batch``) and ``speechllm diagnose`` prints them for a saved model.

Example::

    from speechllm_cli.models.audio_use import audio_dependence, embedding_stats, relative_gap
    stats = audio_dependence(model, feats, feat_lens, prompt_ids, target_ids)   # (sum, count) pairs
    # {"loss": ..., "acc": ..., "loss_rolled": ..., "acc_rolled": ..., "loss_noaudio": ..., "acc_noaudio": ...,
    #  "audio_norm": ..., "audio_cosine": ...}
    audio_embeds, audio_lens = model.encode_audio(feats, feat_lens)
    print(embedding_stats(utterance_means(audio_embeds, audio_lens), model.hf_llm.get_input_embeddings().weight))

"Rolled" gives utterance b the audio of utterance b+1 of the same batch (a batch of one has no other audio, and
its rolled figures are left out); "noaudio" removes the audio span, so the LLM sees the prompt and the target.
``relative_gap = 1 - loss / loss_rolled``: 0 for a model that ignores its audio, near 1 for one that needs it.
"""

from __future__ import annotations

import torch

Stats = dict[str, tuple[float, float]]  # metric -> (sum, count), as the training loop accumulates them


def utterance_means(audio_embeds: torch.Tensor, audio_lens: torch.Tensor) -> torch.Tensor:
    """(B, A, H) audio embeddings and (B,) lengths -> (B, H) mean vector of each utterance's valid rows."""
    valid = torch.arange(audio_embeds.shape[1], device=audio_embeds.device)[None, :] < audio_lens[:, None]  # (B, A)
    sums = (audio_embeds.float() * valid[..., None]).sum(1)  # (B, H)
    return sums / valid.sum(1, keepdim=True).clamp(min=1)


def row_norms(audio_embeds: torch.Tensor, audio_lens: torch.Tensor) -> torch.Tensor:
    """L2 norm of every valid audio row, flattened: (sum of audio_lens,)."""
    valid = torch.arange(audio_embeds.shape[1], device=audio_embeds.device)[None, :] < audio_lens[:, None]
    return audio_embeds.float()[valid].norm(dim=-1)


def mean_pairwise_cosine(vectors: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of rows of (N, H); nan for fewer than two rows."""
    n = vectors.shape[0]
    if n < 2:
        return float("nan")
    unit = torch.nn.functional.normalize(vectors.float(), dim=-1)
    sims = unit @ unit.T  # (N, N)
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def shared_energy(vectors: torch.Tensor) -> float:
    """Share of the rows' energy in their common mean: ||mean||^2 / mean ||row||^2 (1 = every row identical)."""
    mean = vectors.float().mean(0)
    return float(mean.pow(2).sum() / vectors.float().pow(2).sum(-1).mean().clamp(min=1e-12))


def embedding_stats(utt_means: torch.Tensor, token_embeddings: torch.Tensor, audio_norms: torch.Tensor | None = None
                    ) -> dict[str, float]:
    """Audio embeddings against the LLM's token embeddings (V, H): row norms, and how alike utterances are."""
    stats = {
        "token_embedding_norm": float(token_embeddings.float().norm(dim=-1).mean()),
        "audio_utterance_cosine": mean_pairwise_cosine(utt_means),
        "audio_shared_energy": shared_energy(utt_means),
    }
    if audio_norms is not None:
        stats["audio_embedding_norm"] = float(audio_norms.mean())
    return stats


def relative_gap(loss: float, loss_rolled: float) -> float:
    """1 - loss / loss_rolled: how much of the loss with another utterance's audio the true audio removes."""
    return 1.0 - loss / loss_rolled if loss_rolled > 0 else float("nan")


def _loss_stats(model, audio_embeds, audio_lens, prompt_ids, target_ids, suffix: str) -> Stats:
    _, s = model.loss_given_audio(audio_embeds, audio_lens, prompt_ids, target_ids)
    n, tokens = s["num_utts"], s["num_tokens"]
    return {f"loss{suffix}": (s["loss"] * n, n), f"acc{suffix}": (s["acc"] * tokens, tokens)}


@torch.no_grad()
def audio_dependence(model, feats, feat_lens, prompt_ids, target_ids) -> Stats:
    """Loss and accuracy of a batch with its true audio, rolled audio and no audio, plus the audio embeddings'
    mean row norm and the mean pairwise cosine of the utterances' mean vectors; (sum, count) per metric."""
    audio_embeds, audio_lens = model.encode_audio(feats, feat_lens)  # (B, A, H), (B,)
    return embeddings_dependence(model, audio_embeds, audio_lens, prompt_ids, target_ids)


@torch.no_grad()
def embeddings_dependence(model, audio_embeds, audio_lens, prompt_ids, target_ids) -> Stats:
    """``audio_dependence`` of audio embeddings (B, A, H) and lengths (B,) the model has encoded already."""
    stats = _loss_stats(model, audio_embeds, audio_lens, prompt_ids, target_ids, "")
    batch = audio_embeds.shape[0]
    if batch > 1:
        rolled = (audio_embeds.roll(-1, 0), audio_lens.roll(-1, 0))
        stats.update(_loss_stats(model, *rolled, prompt_ids, target_ids, "_rolled"))
        pairs = batch * (batch - 1)
        stats["audio_cosine"] = (mean_pairwise_cosine(utterance_means(audio_embeds, audio_lens)) * pairs, pairs)
    no_audio = torch.zeros_like(audio_lens)  # build_inputs places no audio row (one column kept for its gather)
    stats.update(_loss_stats(model, audio_embeds[:, :1], no_audio, prompt_ids, target_ids, "_noaudio"))
    norms = row_norms(audio_embeds, audio_lens)
    stats["audio_norm"] = (float(norms.sum()), float(norms.numel()))
    return stats


NOT_LISTENING_GAP = 0.02  # a dev audio gap below this: the model predicts (almost) as well without its audio


SPEECH_LISTENING_HINT = ("Seen with a learning rate too high for augmented training (try --set train.lr=5e-4) and "
                         "with front-ends that give too few positions; `speechllm diagnose` measures it on a decode.")


def listening_warnings(metrics: dict[str, float], input_name: str = "audio",
                       hint: str = SPEECH_LISTENING_HINT) -> list[str]:
    """A warning when the validation ``audio_gap`` says the model barely uses its input (none without the metric);
    ``input_name`` names that input and ``hint`` its likely causes (a text LLM's differ from a speech LLM's)."""
    gap = metrics.get("audio_gap")
    if gap is None or gap >= NOT_LISTENING_GAP:
        return []
    cosine = metrics.get("audio_cosine")
    shape = f", audio_cosine {cosine:.4f}" if cosine is not None else ""
    return [f"valid audio_gap {gap:.4f} < {NOT_LISTENING_GAP}{shape}: the model barely uses its {input_name} "
            f"(it predicts from the prompt alone; decoding will repeat a few sentences). {hint}"]


def derived_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` with ``audio_gap`` (relative_gap of loss and loss_rolled) added when both are there."""
    if "loss" in metrics and "loss_rolled" in metrics:
        metrics = {**metrics, "audio_gap": relative_gap(metrics["loss"], metrics["loss_rolled"])}
    return metrics
