"""Built-in step segmenters (SOD_SPEC §2) and text-only SOD [ours]."""

from __future__ import annotations

import pytest
import torch

from sod_trainer.segmenters import BlankLineSegmenter, FixedLengthSegmenter, StepSegmenter, TurnSegmenter, get_segmenter


def test_turn_segmenter_is_mask_runs():
    mask = torch.tensor([[1, 1, 0, 1, 0, 0]])
    assert TurnSegmenter()(torch.zeros_like(mask), mask).tolist() == [[0, 0, -1, 1, -1, -1]]


def test_fixed_length_splits_each_run():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 1, 1, 1]])
    ids = FixedLengthSegmenter(2)(torch.zeros_like(mask), mask)
    assert ids.tolist() == [[0, 0, 1, 1, 2, -1, 3, 3, 4]]


def test_blank_line_segmenter_splits_text_only_reasoning(tokenizer):
    text = "First idea.\n\nSecond idea.\n\nThird."
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    mask = torch.ones_like(ids)
    steps = BlankLineSegmenter(tokenizer)(ids, mask)
    assert int(steps.max()) == 2  # three paragraphs
    # the paragraph break belongs to the step it ends
    decoded = [tokenizer.decode(ids[0][steps[0] == k]) for k in range(3)]
    assert decoded[0].startswith("First") and decoded[1].strip().startswith("Second") and decoded[2].strip() == "Third."


def test_custom_segmenter_satisfies_protocol_and_unknown_name_errors(tokenizer):
    assert isinstance(TurnSegmenter(), StepSegmenter)
    with pytest.raises(ValueError, match="Unknown step_segmenter 'nope'"):
        get_segmenter("nope")
