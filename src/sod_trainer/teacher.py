"""Teacher scoring: log-probs of the student's sampled tokens under the frozen teacher (SOD_SPEC §3)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import torch

from .logprobs import sampled_token_logprobs

__all__ = ["TeacherScorer", "LocalTeacher", "check_vocabularies", "compare_tokenizers", "resolve_teacher_tokenizer"]

logger = logging.getLogger(__name__)


class TeacherScorer(Protocol):
    """Returns ``(B, C)`` teacher log-probs of the completion tokens (0 where ``token_mask`` is unset)."""

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_start: torch.Tensor,
              token_mask: torch.Tensor) -> torch.Tensor: ...


class LocalTeacher:
    """A teacher model in the trainer's process (replicated, or sharded under DeepSpeed ZeRO-3)."""

    def __init__(self, model: torch.nn.Module, temperature: float = 1.0, chunk_size: int = 1024):
        self.model = model
        self.temperature = temperature
        self.chunk_size = chunk_size
        # ZeRO-3 gathers the teacher's shards in forward hooks: those stay under no_grad
        self.sharded = any(hasattr(p, "ds_id") for p in model.parameters())

    def score(self, input_ids, attention_mask, completion_start, token_mask) -> torch.Tensor:
        with torch.no_grad() if self.sharded else torch.inference_mode():
            logps, _ = sampled_token_logprobs(
                self.model, input_ids, attention_mask, completion_start, token_mask,
                temperature=self.temperature, chunk_size=self.chunk_size,
            )
        return logps.clone()  # a normal tensor: an inference-mode tensor cannot enter autograd later


def check_vocabularies(student: torch.nn.Module, teacher: torch.nn.Module, tokenizer,
                       teacher_tokenizer=None) -> None:
    """Reject a teacher whose vocabulary or tokenizer differs from the student's (SOD needs the same tokens).

    The output vocabulary sizes must be equal. The teacher's own tokenizer (``teacher_tokenizer``, else the one
    saved next to the teacher's weights, read from disk or the Hub cache; never downloaded) must give every
    token the id ``tokenizer`` gives it. When no teacher tokenizer can be found (a model built in memory, a Hub
    teacher whose tokenizer files are not cached), only the sizes are compared.
    """
    from .logprobs import unwrap_causal_lm

    def vocab_size(model):
        weight = unwrap_causal_lm(model).get_output_embeddings().weight
        return int(getattr(weight, "ds_shape", weight.shape)[0])  # ZeRO-3 keeps the full shape in ds_shape

    student_size, teacher_size = vocab_size(student), vocab_size(teacher)
    if student_size != teacher_size:
        raise ValueError(
            f"The teacher's vocabulary has {teacher_size} tokens but the student's has {student_size}, and the "
            "teacher's tokenizer was not found. To distill across tokenizers, pass SODTrainer("
            "teacher_processing_class=...) or set SODConfig.teacher_tokenizer_name_or_path; or use a teacher from "
            "the same model family (e.g. Qwen3-4B for a Qwen3-0.6B student)."
        )
    if len(tokenizer) > student_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary only {student_size}; "
            "resize the model's embeddings or use the model's own tokenizer."
        )
    source = "teacher_tokenizer"
    if teacher_tokenizer is None:
        source = getattr(getattr(unwrap_causal_lm(teacher), "config", None), "_name_or_path", "") or ""
        teacher_tokenizer = _saved_tokenizer(source, tokenizer)
    if teacher_tokenizer is not None:
        compare_tokenizers(tokenizer, teacher_tokenizer, source)


def resolve_teacher_tokenizer(student: torch.nn.Module | None, teacher: torch.nn.Module | None, tokenizer,
                              teacher_tokenizer=None):
    """The teacher's tokenizer when it differs from the student's (the cross-tokenizer path), else None (the
    shared-tokenizer fast path, checked with :func:`check_vocabularies` for a local teacher).

    ``teacher_tokenizer`` defaults to the tokenizer saved next to a local teacher's weights (never downloaded).
    """
    from .logprobs import unwrap_causal_lm

    source = "teacher_processing_class"
    if teacher_tokenizer is None and teacher is not None:
        source = getattr(getattr(unwrap_causal_lm(teacher), "config", None), "_name_or_path", "") or ""
        teacher_tokenizer = _saved_tokenizer(source, tokenizer)
    def vocab_size(model) -> int:
        weight = unwrap_causal_lm(model).get_output_embeddings().weight
        return int(getattr(weight, "ds_shape", weight.shape)[0])

    sizes_differ = student is not None and teacher is not None and vocab_size(student) != vocab_size(teacher)
    if teacher_tokenizer is not None and (sizes_differ or not same_tokenizer(tokenizer, teacher_tokenizer)):
        if teacher is not None:
            size = vocab_size(teacher)
            if len(teacher_tokenizer) > size:
                raise ValueError(
                    f"The teacher's tokenizer ({source}) has {len(teacher_tokenizer)} tokens but the teacher model's "
                    f"vocabulary only {size}: it is not the teacher's tokenizer. Pass the one saved with the teacher.")
        logger.info("The teacher's tokenizer (%s) differs from the student's: teacher log-probs are computed on "
                    "the teacher's own tokenization and aligned with the student's tokens on the text "
                    "(cross-tokenizer path).", source)
        return teacher_tokenizer
    if student is not None and teacher is not None:
        check_vocabularies(student, teacher, tokenizer, teacher_tokenizer)
    return None


_PROBE_TEXTS = ("Compute 1234 * 56 with the tool.\n```python\nprint(1234 * 56)\n```\nThe answer is \\boxed{69104}.",
                "Let me think step by step: the remainder is 7, so the total is 42. Ça va, naïve café → 3.5 €.")


def same_tokenizer(tokenizer, other) -> bool:
    """Whether ``other`` gives the student's tokens the same ids (what :func:`compare_tokenizers` accepts) and
    tokenizes text the same way (a vocabulary with more merges gives the same ids to shared tokens, but
    tokenizes differently: the teacher would then score token sequences it never produces)."""
    if other is tokenizer:
        return True
    try:
        compare_tokenizers(tokenizer, other)
    except ValueError:
        return False
    return all(tokenizer.encode(text, add_special_tokens=False) == other.encode(text, add_special_tokens=False)
               for text in _PROBE_TEXTS)


def _saved_tokenizer(path: str, tokenizer):
    """The tokenizer saved with a model at ``path`` (a folder, or a Hub id already in the cache), else None."""
    if not path or path == getattr(tokenizer, "name_or_path", None) or not _has_tokenizer_files(path):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:  # no tokenizer files there: nothing to compare (documented limit)
        return None


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")


def _has_tokenizer_files(path: str) -> bool:
    """Whether tokenizer files were saved with the model (a folder, or a Hub id's cache): without them,
    ``AutoTokenizer`` may build an empty tokenizer from the model's config instead of failing."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return any((folder / name).is_file() for name in _TOKENIZER_FILES)
    try:
        from huggingface_hub import try_to_load_from_cache

        return any(isinstance(try_to_load_from_cache(path, name), str) for name in _TOKENIZER_FILES)
    except Exception:  # not a Hub id, or no cache
        return False


def compare_tokenizers(tokenizer, teacher_tokenizer, source: str = "the teacher") -> None:
    """Raise ``ValueError`` when ``teacher_tokenizer`` gives any of ``tokenizer``'s tokens another id, or lacks
    more than 1% of them; warn when it lacks a few (added special tokens, e.g. Qwen3's ``<think>``)."""
    student_vocab, teacher_vocab = tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    moved = [(token, index, teacher_vocab[token]) for token, index in sorted(student_vocab.items(), key=lambda x: x[1])
             if token in teacher_vocab and teacher_vocab[token] != index]
    missing = [token for token in student_vocab if token not in teacher_vocab]
    if moved or len(missing) > 0.01 * len(student_vocab):
        examples = ", ".join(f"{token!r} is {index} for the student and {other} for the teacher"
                             for token, index, other in moved[:3])
        raise ValueError(
            f"The teacher's tokenizer ({source}) is not the student's: {len(moved)} of {len(student_vocab)} tokens "
            f"have other ids{' (' + examples + ')' if examples else ''} and {len(missing)} are missing. The "
            "vocabulary sizes match, but SOD scores the student's token ids with the teacher, so both must use one "
            "tokenizer. Use a teacher from the student's model family."
        )
    if missing:
        logger.warning("The teacher's tokenizer (%s) lacks %d of the student's tokens (%s); the teacher scores them "
                       "as unseen ids.", source, len(missing), ", ".join(repr(t) for t in missing[:5]))
