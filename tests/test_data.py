"""Dataset adapters: local files and Hub ids, the prompt templates, verl rows, row-level errors."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, DatasetDict

from sod_trainer.data import (
    PROMPT_TEMPLATES,
    TOOL_SYSTEM_PROMPT,
    DatasetRowError,
    infer_prompt_template,
    load_prompt_dataset,
    prepare_dataset,
    render_prompt,
    row_to_messages,
)

ROWS = [
    {"id": "a", "problem": "What is 6 * 7?", "answer": "42"},
    {"id": "b", "problem": "Compute 2 ** 10.", "answer": "1024"},
    {"id": "c", "problem": "What is 17 + 25?", "answer": "42"},
]


# ------------------------------------------------------------------------------------- local files


def _write(path, rows, kind):
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows))
    elif kind == "parquet":
        Dataset.from_list(rows).to_parquet(str(path))
    elif kind == "csv":
        Dataset.from_list(rows).to_csv(str(path), index=False)


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv"])
def test_local_files_load_and_render(tmp_path, kind):
    path = tmp_path / f"prompts.{kind}"
    _write(path, ROWS, kind)
    dataset = prepare_dataset(load_prompt_dataset(str(path)))
    assert len(dataset) == 3
    assert dataset["id"] == ["a", "b", "c"]  # extra columns survive (they reach rewards and reset(**row))
    first = dataset[0]["prompt"]
    assert first[0] == {"role": "system", "content": TOOL_SYSTEM_PROMPT}
    assert first[1]["role"] == "user"
    assert first[1]["content"] == PROMPT_TEMPLATES["math"].format(problem="What is 6 * 7?")
    assert "\\boxed{}" in first[1]["content"]
    assert str(dataset[1]["answer"]) == "1024"


def test_folder_of_split_files_and_saved_dataset(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _write(folder / "train.jsonl", ROWS, "jsonl")
    _write(folder / "test.jsonl", ROWS[:1], "jsonl")
    assert len(load_prompt_dataset(str(folder), split="train")) == 3
    assert len(load_prompt_dataset(str(folder), split="test")) == 1

    saved = tmp_path / "saved"
    DatasetDict({"train": Dataset.from_list(ROWS), "validation": Dataset.from_list(ROWS[:2])}).save_to_disk(str(saved))
    assert len(load_prompt_dataset(str(saved), split="validation")) == 2
    with pytest.raises(ValueError, match="splits .*'test'"):
        load_prompt_dataset(str(saved), split="test")


def test_unsupported_file_and_missing_dataset(tmp_path):
    bad = tmp_path / "prompts.txt"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="Unsupported data file"):
        load_prompt_dataset(str(bad))
    # conftest sets HF_HUB_OFFLINE=1: a Hub id that is not a local path fails with a message naming it
    with pytest.raises(FileNotFoundError, match="nobody-here/no-such-dataset"):
        load_prompt_dataset("nobody-here/no-such-dataset")


def test_hub_ids_go_to_load_dataset_with_config_split_revision(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config, kwargs))
        return Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dataset = load_prompt_dataset("org/math-prompts", config="default", split="train[:2]", revision="abc123")
    assert len(dataset) == 3
    name, config, kwargs = calls[0]
    assert (name, config) == ("org/math-prompts", "default")
    assert kwargs["split"] == "train[:2]" and kwargs["revision"] == "abc123" and kwargs["streaming"] is False


# ------------------------------------------------------------------------------------- templates


def test_template_inference():
    assert infer_prompt_template({"problem": "x", "answer": "1"}) == "math"
    assert infer_prompt_template({"question": "x", "choices": ["a", "b"]}) == "multiple_choice"
    assert infer_prompt_template({"problem": "x", "tests": [{"input": "1", "output": "1"}]}) == "code"
    assert infer_prompt_template({"problem": "x", "tests": None, "choices": None}) == "math"


def test_multiple_choice_renders_letters_and_normalizes_answers():
    messages, updates = render_prompt({"question": "Which is a noble gas?", "choices": ["N2", "Ar", "O2"],
                                       "answer": 1}, system_prompt=None)
    assert [m["role"] for m in messages] == ["user"]
    text = messages[0]["content"]
    assert "A) N2\nB) Ar\nC) O2" in text and "(A, B or C)" in text
    assert updates == {"answer": "B", "choices": ["N2", "Ar", "O2"]}
    _, updates = render_prompt({"question": "q", "choices": ["red", "blue"], "answer": "blue"})
    assert updates["answer"] == "B"
    _, updates = render_prompt({"question": "q", "choices": {"A": "x", "B": "y"}, "answer": "A"})
    assert updates == {"choices": ["x", "y"]}  # a letter answer stays as it is


def test_code_template_with_and_without_starter_code():
    messages, _ = render_prompt({"problem": "Sum two ints.", "tests": "[]"}, template="code")
    assert messages[-1]["content"] == PROMPT_TEMPLATES["code"].format(problem="Sum two ints.")
    messages, _ = render_prompt({"problem": "Sum.", "starter_code": "def add(a, b):\n    pass", "tests": "[]"})
    assert "def add(a, b):" in messages[-1]["content"] and "```python" in messages[-1]["content"]


def test_mixed_dataset_gets_one_template_per_row():
    rows = [
        {"problem": "1+1?", "answer": "2", "choices": None, "tests": None},
        {"problem": "Pick one.", "answer": "2", "choices": ["a", "b", "c"], "tests": None},
        {"problem": "Echo stdin.", "answer": None, "choices": None, "tests": '[{"input": "1", "output": "1"}]'},
    ]
    dataset = prepare_dataset(Dataset.from_list(rows), system_prompt="Be brief.")
    contents = [row["prompt"][-1]["content"] for row in dataset]
    assert "\\boxed{}" in contents[0] and "letter of the correct option" not in contents[0]
    assert "A) a\nB) b\nC) c" in contents[1]
    assert "standard input" in contents[2]
    assert all(row["prompt"][0] == {"role": "system", "content": "Be brief."} for row in dataset)
    assert dataset["answer"] == ["2", "2", None]  # "2" on a multiple-choice row is neither index nor option text


def test_prompt_and_messages_rows_are_kept_as_they_are():
    conversational = [{"prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}],
                       "answer": "1"}]
    dataset = prepare_dataset(Dataset.from_list(conversational))
    assert dataset[0]["prompt"] == conversational[0]["prompt"]
    chat = [{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}]
    dataset = prepare_dataset(Dataset.from_list(chat))
    assert row_to_messages(dataset[0], 0) == [{"role": "user", "content": "2+2?"}]  # the reference is dropped


def test_template_none_sends_the_text_as_is_and_max_samples():
    dataset = prepare_dataset(Dataset.from_list(ROWS), template="none", system_prompt=None, max_samples=2)
    assert len(dataset) == 2
    assert dataset[0]["prompt"] == [{"role": "user", "content": "What is 6 * 7?"}]


def test_verl_rows_get_answer_from_ground_truth():
    rows = [{"prompt": [{"role": "user", "content": "q1"}], "reward_model": {"ground_truth": "7", "style": "rule"},
             "data_source": "math"},
            {"prompt": [{"role": "user", "content": "q2"}], "reward_model": {"ground_truth": "9", "style": "rule"},
             "data_source": "math"}]
    dataset = prepare_dataset(Dataset.from_list(rows))
    assert dataset["answer"] == ["7", "9"]
    assert dataset["data_source"] == ["math", "math"]


# ------------------------------------------------------------------------------------- bad rows


@pytest.mark.parametrize(
    ("rows", "template", "row_index", "column"),
    [
        ([*ROWS[:2], {"id": "x", "problem": "   ", "answer": "1"}], "auto", 2, "problem"),
        ([{"question": "q", "choices": ["only one"], "answer": "A"}], "multiple_choice", 0, "choices"),
        ([{"question": "q", "choices": ["a", "b"], "answer": 5}] * 2, "multiple_choice", 0, "answer"),
        ([{"prompt": [{"role": "user", "content": "ok"}]}, {"prompt": [{"role": "user"}]}], "auto", 1, "prompt"),
        ([{"messages": [{"role": "user", "content": "ok"}]}, {"messages": []}], "auto", 1, "messages"),
        ([{"prompt": [{"role": "user", "content": "q"}], "reward_model": {"style": "rule"}}], "auto", 0,
         "reward_model"),
    ],
    ids=["empty-problem", "one-choice", "answer-index-out-of-range", "message-without-content", "empty-messages",
         "verl-without-ground-truth"],
)
def test_bad_row_error_names_row_and_column(rows, template, row_index, column):
    with pytest.raises(DatasetRowError) as error:
        prepare_dataset(Dataset.from_list(rows), template=template)
    message = str(error.value)
    assert f"row {row_index}" in message
    assert repr(column) in message


def test_row_without_any_prompt_column_lists_what_it_has():
    with pytest.raises(DatasetRowError, match=r"row 0 has none of the prompt columns.*\['answer', 'text'\]"):
        prepare_dataset(Dataset.from_list([{"text": "hello", "answer": "1"}]))


def test_unknown_template_and_streaming_are_refused():
    with pytest.raises(ValueError, match="Unknown prompt template"):
        prepare_dataset(Dataset.from_list(ROWS), template="poetry")
    streaming = Dataset.from_list(ROWS).to_iterable_dataset()
    with pytest.raises(TypeError, match="map-style"):
        prepare_dataset(streaming)
