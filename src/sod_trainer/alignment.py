"""Aligning two tokenizations of one text on its UTF-8 bytes (cross-tokenizer teachers, issue 19).

Each side's tokens are turned into the exact bytes they stand for (:class:`TokenBytes`); a token boundary is
a byte position. :func:`align_pieces` walks both sides like TRL GOLD's ``_align_by_byte_offsets``: a group
closes where both tokenizations have a boundary at the same place of the same text, so a group is the
smallest run of student tokens and the smallest run of teacher tokens that cover the same bytes (one-to-one,
one-to-many, many-to-one, many-to-many). Unlike GOLD, the two byte strings need not be equal: when the
teacher's tokenizer cannot reproduce the student's text (a byte it has no token for, Unicode normalization),
only boundaries inside the stretches both strings share (``difflib``'s matching blocks) are used, and a
group whose bytes differ between the sides is marked unaligned: it is counted and left out, never guessed.

Why bytes and not the fast tokenizers' character offsets: the student's tokens were sampled, not produced
by encoding a text, so they have no offsets; byte-level BPE pieces (Qwen, Llama 3, GPT-2, ...) map to bytes
exactly, which also places boundaries inside a multi-byte character where both sides split it there. Other
tokenizers (SentencePiece, character level, WordPiece) go through an incremental ``decode``.
"""

from __future__ import annotations

import difflib
from bisect import bisect_left
from dataclasses import dataclass

import torch

__all__ = ["AlignedGroup", "TokenBytes", "align_pieces", "equal_text_cuts"]


def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


class TokenBytes:
    """The bytes each token id of ``tokenizer`` stands for, in context (``pieces(ids)``)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.byte_level = backend is not None and "ByteLevel" in repr(backend.decoder)
        self.added = {int(i): str(getattr(t, "content", t)) for i, t in
                      getattr(tokenizer, "added_tokens_decoder", {}).items()}
        self._table: list[bytes | None] | None = None  # byte-level: the bytes of every id, built on first use

    def _byte_table(self) -> list[bytes | None]:
        if self._table is None:
            decoder = _byte_decoder()
            table: list[bytes | None] = []
            for token_id, piece in enumerate(self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))):
                if token_id in self.added:
                    table.append(self.added[token_id].encode("utf-8"))
                    continue
                try:
                    table.append(bytes(decoder[char] for char in piece) if piece is not None else None)
                except KeyError:  # not a byte-level piece: let decode() say what it is
                    table.append(None)
            self._table = table
        return self._table

    def pieces(self, ids: list[int]) -> list[bytes] | None:
        """One ``bytes`` per id (possibly empty: a token that only completes a character with the next one
        gets nothing, the completing token the whole character); None when they cannot be told apart."""
        if self.byte_level:
            table = self._byte_table()
            try:
                pieces = [table[i] for i in ids]
            except IndexError:  # an id past the tokenizer (a padded model vocabulary)
                return None
            if None not in pieces:
                return pieces
        return self._decoded_pieces(ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _decoded_pieces(self, ids: list[int], window: int = 6) -> list[bytes] | None:
        """Incremental detokenization (as vLLM streams text): token k's text is what decoding up to k adds to
        decoding up to the last emitted token, both from a few tokens back (so context-dependent decoders, e.g.
        SentencePiece's leading space, agree); an incomplete character waits for the token that completes it."""
        pieces: list[bytes] = []
        emitted = 0  # tokens before this have had their text
        for k in range(len(ids)):
            start = max(0, emitted - window)
            before = self._decode(ids[start:emitted])
            after = self._decode(ids[start:k + 1])
            if after.endswith("\ufffd") and k + 1 < len(ids):
                pieces.append(b"")  # waits for the rest of its character
                continue
            if not after.startswith(before):
                return None
            pieces.append(after[len(before):].encode("utf-8"))
            emitted = k + 1
        if b"".join(pieces) != self._decode(ids).encode("utf-8"):
            return None
        return pieces


@dataclass(frozen=True)
class AlignedGroup:
    """Student tokens ``[s_start, s_end)`` and teacher tokens ``[t_start, t_end)`` that cover the same text
    (``aligned``), or a stretch where the two texts differ or one side has no token (not ``aligned``)."""

    s_start: int
    s_end: int
    t_start: int
    t_end: int
    aligned: bool


def _starts(pieces: list[bytes]) -> list[int]:
    starts, position = [], 0
    for piece in pieces:
        starts.append(position)
        position += len(piece)
    return starts


def _common_boundaries(student: bytes, teacher: bytes, s_bounds: list[int], t_bounds: list[int]):
    """``(student position, teacher position)`` pairs where both sides have a boundary at the same place."""
    if student == teacher:
        return sorted((p, p) for p in set(s_bounds).intersection(t_bounds))
    t_set = set(t_bounds)
    pairs = []
    matcher = difflib.SequenceMatcher(None, student, teacher, autojunk=False)
    for i, j, n in matcher.get_matching_blocks():
        for p in s_bounds[bisect_left(s_bounds, i):bisect_left(s_bounds, i + n + 1)]:
            if p - i + j in t_set:
                pairs.append((p, p - i + j))
    return sorted(set(pairs))


def _monotone(pairs: list[tuple[int, int]], end: tuple[int, int]) -> list[tuple[int, int]]:
    """Keep pairs strictly increasing on both sides, from ``(0, 0)`` to ``end``."""
    kept = [(0, 0)]
    for pair in pairs:
        if pair[0] > kept[-1][0] and pair[1] > kept[-1][1] and pair[0] < end[0] and pair[1] < end[1]:
            kept.append(pair)
    if end != (0, 0):
        kept.append(end)
    return kept


def equal_text_cuts(student: list[bytes], teacher: list[bytes]) -> tuple[list[int], list[int]]:
    """For two tokenizations of the same bytes: the token indices where groups start and end, on each side
    (``cuts[g]:cuts[g + 1]`` is group ``g``). GOLD's walk, vectorized: groups close where both sides have a token
    ending at the same byte; a token without bytes falls into the group after it (the last one at the end)."""
    s_ends = torch.tensor([len(piece) for piece in student], dtype=torch.long).cumsum(0)
    t_ends = torch.tensor([len(piece) for piece in teacher], dtype=torch.long).cumsum(0)
    common = s_ends[torch.isin(s_ends, t_ends) & (s_ends > 0) & (s_ends < s_ends[-1])].unique()
    s_cuts = [0] + (torch.searchsorted(s_ends, common) + 1).tolist() + [len(student)]
    t_cuts = [0] + (torch.searchsorted(t_ends, common) + 1).tolist() + [len(teacher)]
    return s_cuts, t_cuts


def align_pieces(student: list[bytes], teacher: list[bytes]) -> list[AlignedGroup]:
    """Groups of student and teacher tokens between the boundaries both tokenizations share (see module doc)."""
    s_text, t_text = b"".join(student), b"".join(teacher)
    if s_text == t_text and s_text:
        s_cuts, t_cuts = equal_text_cuts(student, teacher)
        return [AlignedGroup(s_cuts[g], s_cuts[g + 1], t_cuts[g], t_cuts[g + 1], True)
                for g in range(len(s_cuts) - 1)]
    s_starts, t_starts = _starts(student), _starts(teacher)
    s_bounds = sorted(set(s_starts) | {len(s_text)})
    t_bounds = sorted(set(t_starts) | {len(t_text)})
    pairs = _monotone(_common_boundaries(s_text, t_text, s_bounds, t_bounds), (len(s_text), len(t_text)))

    def cut(starts: list[int], count: int, position: int, last: bool) -> int:
        # a token that adds no bytes belongs with the token after it (the one completing its character)
        return count if last else bisect_left(starts, position)

    groups = []
    for index in range(len(pairs) - 1):
        (a_s, a_t), (b_s, b_t) = pairs[index], pairs[index + 1]
        last = index == len(pairs) - 2
        s_range = (cut(s_starts, len(student), a_s, False), cut(s_starts, len(student), b_s, last))
        t_range = (cut(t_starts, len(teacher), a_t, False), cut(t_starts, len(teacher), b_t, last))
        if s_range[0] == s_range[1] and t_range[0] == t_range[1]:
            continue
        aligned = (s_range[0] < s_range[1] and t_range[0] < t_range[1]
                   and s_text[a_s:b_s] == t_text[a_t:b_t])
        groups.append(AlignedGroup(s_range[0], s_range[1], t_range[0], t_range[1], aligned))
    return groups
