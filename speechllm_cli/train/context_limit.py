"""Speech-LLM training examples longer than the LLM's context: found before training, skipped and counted.

An example's sequence is prompt + audio positions + post-audio ids (separator / assistant header) + target + end
token, and must fit the LLM's ``max_position_embeddings``: beyond it a RoPE model runs on silently at positions it
never saw, a learned-position model fails. The audio positions are only known after running the front-end, so an
upper bound from the frame count stands in (``SpeechLLM.audio_positions_bound``: e.g. the CTC compressor's
subsampled length, as compression never lengthens it, through the adapter's output lengths). An example whose
bound exceeds the context is dropped from its dataset, and the count goes to the log (train.log).

Example::

    task.build_model()   # SpeechLLMTask calls it there:
    drop_over_context(model, [train_set, valid_set], lambda e: task.prompt_ids[task.task_of(e)], "text")
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from speechllm_cli.models.llm import llm_context_length

logger = logging.getLogger(__name__)


def sequence_bounds(model, dataset, prompt_ids_of: Callable[[dict], list[int]], target_key: str) -> list[int]:
    """Per example of ``dataset`` (a DumpDataset): an upper bound of its LLM sequence length in positions."""
    metas = [dataset.meta(i) for i in range(len(dataset))]
    audio = model.audio_positions_bound([m["num_frames"] for m in metas])
    texts = [m.get(target_key) or "" for m in metas]
    targets = model.tokenizer(texts, add_special_tokens=False).input_ids if texts else []
    tail = len(model.post_audio_ids) + 1  # + end token
    return [len(prompt_ids_of(m)) + a + len(t) + tail for m, a, t in zip(metas, audio, targets)]


def drop_over_context(model, datasets: Sequence, prompt_ids_of: Callable[[dict], list[int]], target_key: str) -> int:
    """Drop from each dataset (``None`` entries ignored) the examples that may not fit ``model``'s LLM context,
    logging how many and which; returns the number dropped in all."""
    context = llm_context_length(model.hf_llm)
    if context is None:
        return 0
    dropped = 0
    for dataset in datasets:
        if dataset is None:
            continue
        bounds = sequence_bounds(model, dataset, prompt_ids_of, target_key)
        over = {dataset.utt_ids[i]: n for i, n in enumerate(bounds) if n > context}
        if not over:
            continue
        examples = ", ".join(f"{u} ({n})" for u, n in list(over.items())[:5])
        logger.warning("%s: skipping %d of %d utterance(s) whose sequence may exceed the LLM's context of %d "
                       "positions (prompt + audio + target, at most): %s%s; drop them at data preparation (a lower "
                       "--max-dur) or use an LLM with a longer context", dataset.dump_dir, len(over), len(bounds),
                       context, examples, " ..." if len(over) > 5 else "")
        dataset.exclude(over)
        dropped += len(over)
    return dropped
