"""Benchmark loaders on small local files written here; the Hub path only for its offline error."""

from __future__ import annotations

import base64
import json
import pickle
import zlib

import pytest

from sod_trainer.benchmarks_data import (
    BenchmarkUnavailableError,
    decode_livecodebench_tests,
    load_benchmark,
    read_records,
    resolve_benchmark,
)
from sod_trainer.rewards import default_reward_funcs, make_code_reward, make_multiple_choice_reward


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_resolve_benchmark_names_and_aliases():
    assert resolve_benchmark("AIME24").name == "aime2024"
    assert resolve_benchmark("aime-2025").name == "aime2025"
    assert resolve_benchmark("GPQA-Diamond").name == "gpqa_diamond"
    assert resolve_benchmark("lcb").name == "livecodebench_v6"
    assert resolve_benchmark("MATH-500").name == "math500"
    with pytest.raises(ValueError, match="Known: aime2024"):
        resolve_benchmark("mmlu")


def test_read_records_json_jsonl_parquet_csv_and_folders(tmp_path):
    rows = [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "4"}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    _write_jsonl(tmp_path / "b.jsonl", rows)
    (tmp_path / "c.json").write_text(json.dumps({"data": rows}))
    (tmp_path / "d.csv").write_text("problem,answer\n1+1?,2\n2+2?,4\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "e.parquet")
    for name in ("a.json", "b.jsonl", "c.json", "d.csv", "e.parquet"):
        assert read_records(tmp_path / name) == rows, name
    assert len(read_records(tmp_path)) == 10
    with pytest.raises(BenchmarkUnavailableError, match="does not exist"):
        read_records(tmp_path / "missing.jsonl")


def test_aime_from_a_local_jsonl_file(tmp_path):
    # AIME 2024 as on the Hub (HuggingFaceH4/aime_2024): integer-like answers, an id column.
    path = _write_jsonl(tmp_path / "aime.jsonl", [
        {"id": 60, "problem": "Find $x$.", "answer": "204", "year": 2024},
        {"id": 61, "problem": "Find $y$.", "answer": 25, "year": 2024},
    ])
    dataset = load_benchmark("aime2024", path=path)
    assert len(dataset) == 2
    row = dataset[1]
    assert row["answer"] == "25" and row["problem_id"] == "61" and row["benchmark"] == "aime2024"
    assert row["prompt"][-1]["role"] == "user"
    assert row["prompt"][-1]["content"].startswith("Find $y$.")
    assert "\\boxed{}" in row["prompt"][-1]["content"]
    assert [f.__name__ for f in default_reward_funcs(dataset)] == ["math_reward"]


def test_aime2025_and_math500_column_variants_limit_and_system_prompt(tmp_path):
    path = _write_jsonl(tmp_path / "aime25.jsonl", [
        {"problem_idx": 1, "Problem": "P1", "Answer": 70}, {"problem_idx": 2, "Problem": "P2", "Answer": 588},
        {"problem_idx": 3, "Problem": "P3", "Answer": 16},
    ])
    dataset = load_benchmark("aime25", path=path, limit=2, system_prompt="Use the python tool.")
    assert dataset["answer"] == ["70", "588"]
    assert dataset[0]["prompt"][0] == {"role": "system", "content": "Use the python tool."}
    math500 = _write_jsonl(tmp_path / "math500.jsonl", [
        {"problem": "Simplify $\\frac{2}{4}$.", "answer": "\\frac{1}{2}", "subject": "Algebra", "level": 1,
         "unique_id": "test/algebra/1.json"},
    ])
    dataset = load_benchmark("math500", path=math500, prompt_template="Q: {problem}\nA:")
    assert dataset[0]["prompt"][-1]["content"] == "Q: Simplify $\\frac{2}{4}$.\nA:"
    assert dataset[0]["problem_id"] == "test/algebra/1.json"


def test_missing_columns_name_what_was_expected(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "x", "label": "1"}])
    with pytest.raises(BenchmarkUnavailableError, match="no problem column.*text"):
        load_benchmark("math500", path=path)


GPQA_ROWS = [
    {"Record ID": "rec1", "Question": "Which is heaviest?", "Correct Answer": "lead",
     "Incorrect Answer 1": "air", "Incorrect Answer 2": "water", "Incorrect Answer 3": "wood"},
    {"Record ID": "rec2", "Question": "Which is a noble gas?", "Correct Answer": "argon",
     "Incorrect Answer 1": "nitrogen", "Incorrect Answer 2": "oxygen", "Incorrect Answer 3": "chlorine"},
]


def test_gpqa_shuffles_choices_reproducibly_and_keeps_the_right_letter(tmp_path):
    path = tmp_path / "gpqa_diamond.csv"
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(GPQA_ROWS[0]))
        writer.writeheader()
        writer.writerows(GPQA_ROWS)
    first = load_benchmark("gpqa", path=path, seed=0)
    again = load_benchmark("gpqa", path=path, seed=0)
    assert first.to_list() == again.to_list()
    letters_by_seed = set()
    for seed in range(8):
        dataset = load_benchmark("gpqa", path=path, seed=seed)
        for row, source in zip(dataset, GPQA_ROWS):
            assert sorted(row["choices"]) == sorted([source["Correct Answer"], source["Incorrect Answer 1"],
                                                     source["Incorrect Answer 2"], source["Incorrect Answer 3"]])
            assert row["choices"][ord(row["answer"]) - ord("A")] == source["Correct Answer"]
            content = row["prompt"][-1]["content"]
            assert f"{row['answer']}) {source['Correct Answer']}" in content
            assert "A, B, C or D" in content
        letters_by_seed.add(tuple(dataset["answer"]))
    assert len(letters_by_seed) > 1  # the right answer is not always in the same place
    # The loaded rows work with the multiple-choice reward.
    row = first[0]
    reward = make_multiple_choice_reward()
    assert reward(prompts=None, completions=[f"\\boxed{{{row['answer']}}}"], answer=[row["answer"]],
                  choices=[row["choices"]]) == [1.0]


def test_gpqa_rows_with_choices_and_letter_answer_are_kept(tmp_path):
    path = _write_jsonl(tmp_path / "gpqa.jsonl", [{"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": "C"},
                                                  {"question": "R?", "choices": ["a", "b", "c", "d"], "answer": 1}])
    dataset = load_benchmark("gpqa_diamond", path=path)
    assert dataset["answer"] == ["C", "B"]
    assert dataset[0]["choices"] == ["a", "b", "c", "d"]


def _encode_private(tests):
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def _lcb_row(question_id, date, starter="", private=None, metadata="{}"):
    public = [{"input": "3 4\n", "output": "7\n", "testtype": "stdin"}]
    return {
        "question_title": "Sum", "question_content": "Print the sum of two integers.", "platform": "atcoder",
        "question_id": question_id, "contest_id": "abc", "contest_date": date, "starter_code": starter,
        "difficulty": "easy", "public_test_cases": json.dumps(public),
        "private_test_cases": _encode_private(private or [{"input": "10 -2\n", "output": "8\n", "testtype": "stdin"}]),
        "metadata": metadata,
    }


def test_livecodebench_decodes_private_tests_filters_dates_and_scores(tmp_path):
    path = _write_jsonl(tmp_path / "lcb.jsonl", [
        _lcb_row("abc001_a", "2025-01-20T00:00:00"),
        _lcb_row("abc002_a", "2025-03-01T00:00:00"),
        _lcb_row("lc1", "2025-04-02T00:00:00", starter="class Solution:\n    def add(self, a: int, b: int) -> int:",
                 private=[{"input": "10\n-2", "output": "8", "testtype": "functional"}],
                 metadata=json.dumps({"func_name": "add"})),
    ])
    dataset = load_benchmark("livecodebench_v6", path=path, start_date="2025-02-01", end_date="2025-05-31")
    assert dataset["problem_id"] == ["abc002_a", "lc1"]
    stdin_tests = json.loads(dataset[0]["tests"])
    assert [t["input"] for t in stdin_tests] == ["3 4\n", "10 -2\n"]
    assert "standard input" in dataset[0]["prompt"][-1]["content"]
    functional = json.loads(dataset[1]["tests"])
    assert functional[-1] == {"input": "10\n-2", "output": "8", "testtype": "functional", "fn_name": "add"}
    assert "def add(self" in dataset[1]["prompt"][-1]["content"]
    assert [f.__name__ for f in default_reward_funcs(dataset)] == ["code_reward"]
    solution = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    reward = make_code_reward(timeout_s=5, max_workers=1)
    assert reward(prompts=None, completions=[solution], tests=[dataset[0]["tests"]]) == [1.0]


def test_livecodebench_refuses_pickled_objects_other_than_plain_data():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    payload = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        decode_livecodebench_tests(payload)


def test_offline_hub_load_raises_a_clear_error_with_the_local_file_recipe(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'HuggingFaceH4/aime_2024' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(BenchmarkUnavailableError) as error:
        load_benchmark("aime2024")
    message = str(error.value)
    assert "HuggingFaceH4/aime_2024" in message
    assert "HF_HUB_OFFLINE" in message
    assert "hf download HuggingFaceH4/aime_2024 --repo-type dataset" in message
    assert "load_benchmark('aime2024', path=" in message
    assert "--benchmark-path" in message


def test_real_offline_hub_load_fails_fast_with_the_same_error(monkeypatch, tmp_path):
    # conftest sets HF_HUB_OFFLINE=1 for the session; the real datasets.load_dataset must fail, not hang.
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(BenchmarkUnavailableError, match="gated on the Hub"):
        load_benchmark("gpqa_diamond")
