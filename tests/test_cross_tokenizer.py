"""A teacher with another tokenizer (issue 19): byte alignment, rendering in the teacher's template, span spreading,
and the same numbers as the shared path when both tokenizers are one."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_tiny_model
from scripted import SCRIPTS, ScriptedBackend, dataset, reward
from sod_trainer import SODConfig, SODTrainer
from sod_trainer.alignment import TokenBytes, align_pieces
from sod_trainer.objective import spread_span_logps
from sod_trainer.rollout.types import Trajectory, Turn
from sod_trainer.teacher import LocalTeacher
from sod_trainer.teacher_cross import CrossTokenizerTeacher
from sod_trainer.toy.tokenizer import build_tokenizer


def groups(student, teacher):
    return [(g.s_start, g.s_end, g.t_start, g.t_end, g.aligned) for g in align_pieces(student, teacher)]


# ---------------------------------------------------------------------- alignment on hand-built pieces
def test_coinciding_boundaries_pair_tokens_one_to_one():
    assert groups([b"Let", b" me", b" see"], [b"Let", b" me", b" see"]) == [
        (0, 1, 0, 1, True), (1, 2, 1, 2, True), (2, 3, 2, 3, True)]


def test_one_to_many_and_many_to_one_splits_merge_until_boundaries_coincide():
    # student "print" is one token, the teacher's "pr"+"int"; the teacher's "(7" is the student's "("+"7"
    assert groups([b"print", b"(", b"7", b")"], [b"pr", b"int", b"(7", b")"]) == [
        (0, 1, 0, 2, True), (1, 3, 2, 3, True), (3, 4, 3, 4, True)]
    # crossing splits: "ab|c" against "a|bc" have no inner boundary in common
    assert groups([b"ab", b"c"], [b"a", b"bc"]) == [(0, 2, 0, 2, True)]


def test_unicode_split_inside_a_character_and_whitespace_runs():
    e_acute, smile = "é".encode(), "😀".encode()
    # byte-level student splits é into its two bytes, the teacher has it whole; both split the spaces differently
    student = [b"caf", e_acute[:1], e_acute[1:], b"  ", b"\n", smile[:2], smile[2:]]
    teacher = [b"ca", b"f" + e_acute, b" ", b" \n", smile]
    assert groups(student, teacher) == [(0, 3, 0, 2, True), (3, 5, 2, 4, True), (5, 7, 4, 5, True)]
    # a token that only starts a character (decoded text: empty) goes with the token that completes it
    assert groups([b"", e_acute + b"x"], [e_acute, b"x"]) == [(0, 2, 0, 2, True)]


def test_text_the_teacher_cannot_reproduce_is_unaligned_not_guessed():
    # the teacher normalizes é (e + combining accent, NFD) to one code point (NFC): only that stretch is unaligned
    nfd, nfc = "e\u0301".encode(), "é".encode()
    assert groups([b"caf", nfd, b" ok", b"!"], [b"caf", nfc, b" ok", b"!"]) == [
        (0, 1, 0, 1, True), (1, 2, 1, 2, False), (2, 3, 2, 3, True), (3, 4, 3, 4, True)]
    # a byte the teacher has no token for (it produced its unknown token's text instead)
    assert groups([b"a", b"\x00", b"b"], [b"a", b"<unk>", b"b"]) == [
        (0, 1, 0, 1, True), (1, 2, 1, 2, False), (2, 3, 2, 3, True)]


def test_token_bytes_agree_across_byte_level_and_sentencepiece_style_tokenizers():
    text = "héllo  wörld 😀\n\n x = 1234 <tool_response>"
    byte_level = build_tokenizer()
    metaspace = build_tokenizer(vocab_size=600, family="header", kind="metaspace")
    pieces = {}
    for name, tokenizer in (("byte_level", byte_level), ("metaspace", metaspace)):
        reader = TokenBytes(tokenizer)
        assert reader.byte_level == (name == "byte_level")
        ids = tokenizer.encode(text, add_special_tokens=False)
        pieces[name] = reader.pieces(ids)
        assert b"".join(pieces[name]) == text.encode()
    aligned = align_pieces(pieces["byte_level"], pieces["metaspace"])
    assert all(g.aligned for g in aligned)
    assert aligned[-1].s_end == len(pieces["byte_level"]) and aligned[-1].t_end == len(pieces["metaspace"])


# ---------------------------------------------------------------------- spreading span log-probs
def test_spread_conserves_each_span_gap_and_keeps_one_token_spans_exact():
    s = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -0.7]])
    span_ids = torch.tensor([[0, 1, 1, -1, 2]])
    span_logps = torch.tensor([[-1.25, 0.0, -4.0, 0.0, -0.2]])  # span 1's Q = -4 on its last token
    q = spread_span_logps(s, span_logps, span_ids)
    assert q[0, 0] == -1.25 and q[0, 4] == -0.2  # one-token spans: q is the teacher's value exactly
    assert (q[0, 1] - s[0, 1]).item() == pytest.approx((q[0, 2] - s[0, 2]).item())  # shared evenly
    assert (q[0, 1:3] - s[0, 1:3]).sum().item() == pytest.approx(-4.0 - (-2.5))  # span's Q - S conserved
    assert q[0, 3] == s[0, 3]  # no span: no signal


# ---------------------------------------------------------------------- rendering in the teacher's template
def scripted_trajectory(tokenizer, turns: list[str], observations: list[str]) -> Trajectory:
    from sod_trainer.rollout.glue import ToolResponseFormatter

    formatter = ToolResponseFormatter(tokenizer)
    trajectory = Trajectory(prompt_ids=[])
    for index, text in enumerate(turns):
        start = trajectory.completion_length
        trajectory.append(tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id], sampled=True)
        trajectory.turns.append(Turn(start, trajectory.completion_length, text, "eos"))
        if index < len(observations):
            trajectory.turns[-1].observation = observations[index]
            trajectory.append(formatter(observations[index], True), sampled=False)
    return trajectory


@pytest.mark.parametrize("kind", ["byte_level", "metaspace"])
def test_teacher_reads_the_conversation_in_its_own_template_with_other_glue(kind):
    student = build_tokenizer()
    teacher = build_tokenizer(vocab_size=400 if kind == "byte_level" else 600, family="header", kind=kind)
    cross = CrossTokenizerTeacher(None, student, teacher)
    messages = [{"role": "user", "content": "7*6 with the tool?"}]
    turns = ["```python\nprint(7 * 6)\n```", "So \\boxed{42}. Ça va 😀"]
    trajectory = scripted_trajectory(student, turns, ["42"])
    plan = cross.plan(trajectory, messages)
    expected = teacher.apply_chat_template(
        messages + [{"role": "assistant", "content": turns[0]}, {"role": "tool", "content": "42"},
                    {"role": "assistant", "content": turns[1]}], tokenize=False)
    assert teacher.decode(plan.ids) == expected
    # every model token of the student is in exactly one span; observation glue is in none
    covered = sorted(i for s0, s1, _, _ in plan.groups for i in range(s0, s1))
    model_tokens = [i for i, m in enumerate(trajectory.assistant_mask) if m]
    assert covered == model_tokens and not plan.unaligned
    # each student end-of-turn token is scored by the teacher's end-of-turn token, and texts match span by span
    for s0, s1, t0, t1 in plan.groups:
        s_text = student.decode(trajectory.completion_ids[s0:s1])
        t_text = teacher.decode(plan.ids[plan.prompt_length + t0:plan.prompt_length + t1])
        assert (s_text, t_text) == ("<|im_end|>", "<|eot_id|>") or s_text == t_text
    assert sorted(j for _, _, t0, t1 in plan.groups for j in range(t0, t1)) == plan.scored


# ---------------------------------------------------------------------- the trainer, same and other tokenizers
def make_trainer(tokenizer, tmp_path, teacher=None, teacher_tokenizer=None, served=False, **overrides):
    config = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                  max_completion_length=160, max_steps=1, learning_rate=5e-3, report_to=[], use_cpu=True,
                  save_strategy="no", seed=0, max_tool_calling_iterations=4, logging_steps=1)
    config.update(overrides)
    if teacher is None and not served:
        teacher = make_tiny_model(tokenizer, hidden=96, seed=1)
    trainer = SODTrainer(model=make_tiny_model(tokenizer, seed=0), teacher_model=teacher,
                         args=SODConfig(**config), train_dataset=dataset(), processing_class=tokenizer,
                         reward_funcs=[reward], teacher_processing_class=teacher_tokenizer)
    trainer.rollout_engine.backend = ScriptedBackend(tokenizer, SCRIPTS)
    return trainer


@pytest.mark.parametrize("on_policy", [False, True])
def test_identical_tokenizers_give_the_shared_path_numbers(tokenizer, tmp_path, on_policy):
    """Same tokenizer through the cross path: same teacher log-probs, weights, advantages and loss."""
    trainer = make_trainer(tokenizer, tmp_path, **({} if on_policy else {"num_iterations": 2}))
    assert trainer.scorer.teacher.__class__ is LocalTeacher  # the default fast path
    rows = [row for row in dataset() for _ in range(2)]
    built = {}
    for name in ("shared", "cross"):
        if name == "cross":
            trainer.scorer.teacher = CrossTokenizerTeacher(trainer.scorer.teacher, tokenizer, tokenizer)
        torch.manual_seed(0)
        batch = trainer.scorer.build(rows, trainer.rollout_engine, student_logprobs=trainer._student_logprobs,
                                     on_policy=on_policy)
        part = batch.slices(1)[0]
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, part).item()
        built[name] = (batch, loss)
    (shared, shared_loss), (cross, cross_loss) = built["shared"], built["cross"]
    assert cross.metrics["teacher/unaligned_tokens"] == 0
    assert cross.metrics["teacher/student_tokens_per_span"] == 1.0
    assert torch.equal(shared.tensors["loss_mask"], cross.tensors["loss_mask"])
    if on_policy:
        mask = shared.tensors["assistant_mask"].bool()
        assert torch.equal(shared.tensors["teacher_logps"][mask], cross.tensors["teacher_logps"][mask])
    else:
        assert torch.allclose(shared.tensors["advantages"], cross.tensors["advantages"], atol=1e-6)
        for key in ("divergence/step_1", "divergence/step_2", "weights/step_2", "weights/mean", "opd/reverse_kl"):
            assert cross.metrics[key] == pytest.approx(shared.metrics[key], rel=1e-6), key
    assert cross_loss == pytest.approx(shared_loss, rel=1e-6, abs=1e-7)


def test_teacher_with_another_tokenizer_and_template_trains_the_student(tokenizer, tmp_path):
    teacher_tokenizer = build_tokenizer(vocab_size=400, family="header")
    teacher = make_tiny_model(teacher_tokenizer, hidden=96, seed=1)
    trainer = make_trainer(tokenizer, tmp_path, teacher=teacher, teacher_tokenizer=teacher_tokenizer)
    assert isinstance(trainer.scorer.teacher, CrossTokenizerTeacher)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[n], p.detach()) for n, p in trainer.model.named_parameters())
    last = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert math.isfinite(last["loss"]) and math.isfinite(last["divergence/step_1"])
    assert last["teacher/unaligned_tokens"] == 0
    assert last["teacher/teacher_tokens_per_span"] > 1.0  # the 400-token teacher splits the student's tokens


def test_other_vocabulary_without_its_tokenizer_is_refused_with_the_fix(tokenizer, tmp_path):
    teacher = make_tiny_model(build_tokenizer(vocab_size=400, family="header"), hidden=96, seed=1)
    with pytest.raises(ValueError, match="teacher_tokenizer_name_or_path"):
        make_trainer(tokenizer, tmp_path, teacher=teacher)


# ---------------------------------------------------------------------- a served teacher with another tokenizer
class ModelServer:
    """A fake vLLM server whose prompt log-probs come from a real (tiny) teacher model."""

    def __new__(cls, tokenizer, model):
        from fake_server import FakeVLLMServer

        class Served(FakeVLLMServer):
            def _answer(self, path, payload):
                if path != "/v1/completions":
                    return super()._answer(path, payload)
                choices = []
                for index, sequence in enumerate(payload["prompt"]):
                    ids = torch.tensor([sequence])
                    with torch.no_grad():
                        logits = model(input_ids=ids).logits.float()
                    logps = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0].tolist()
                    entries = [None] + [{str(t): {"logprob": v, "rank": 1}} for t, v in zip(sequence[1:], logps)]
                    choices.append({"index": index, "text": "", "prompt_logprobs": entries})
                return {"choices": choices}

        return Served(tokenizer)


def test_served_teacher_with_another_tokenizer_scores_like_the_local_one(tokenizer, tmp_path):
    from sod_trainer.teacher_server import ServerTeacher

    teacher_tokenizer = build_tokenizer(vocab_size=400, family="header")
    teacher = make_tiny_model(teacher_tokenizer, hidden=96, seed=1).eval()
    turns = ["```python\nprint(7 * 6)\n```", "So \\boxed{42}. Ça va 😀"]
    trajectories = [scripted_trajectory(tokenizer, turns, ["42"]), scripted_trajectory(tokenizer, turns[1:], [])]
    messages = [[{"role": "user", "content": "7*6 with the tool?"}]] * 2
    width = max(t.completion_length for t in trajectories)
    local = CrossTokenizerTeacher(LocalTeacher(teacher), tokenizer, teacher_tokenizer)
    expected = local.score_trajectories(trajectories, messages, width, rows_per_call=1)
    with ModelServer(teacher_tokenizer, teacher) as server:
        served = CrossTokenizerTeacher(ServerTeacher(server.url, teacher_tokenizer), tokenizer, teacher_tokenizer)
        got = served.score_trajectories(trajectories, messages, width, rows_per_call=2)
        assert torch.equal(got.span_ids, expected.span_ids) and torch.equal(got.aligned, expected.aligned)
        assert torch.allclose(got.logps, expected.logps, atol=1e-4)
        assert (expected.logps[expected.aligned] != 0).any()
        # the trainer wires the served teacher through the cross path when given the teacher's tokenizer
        trainer = make_trainer(tokenizer, tmp_path, teacher=None, teacher_tokenizer=teacher_tokenizer,
                               teacher_server_url=server.url, served=True)
        assert isinstance(trainer.scorer.teacher, CrossTokenizerTeacher)
        assert isinstance(trainer.scorer.teacher.scorer, ServerTeacher)
        trainer.train()
        last = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
        assert math.isfinite(last["loss"]) and last["teacher/unaligned_tokens"] == 0


def test_text_the_teacher_normalizes_away_is_left_out_of_the_loss_and_counted(tokenizer, tmp_path):
    from tokenizers import normalizers

    teacher_tokenizer = build_tokenizer(vocab_size=400, family="header")
    teacher_tokenizer.backend_tokenizer.normalizer = normalizers.NFKC()  # "①" becomes "1", "ﬁ" becomes "fi"
    teacher = make_tiny_model(teacher_tokenizer, hidden=96, seed=1)
    trainer = make_trainer(tokenizer, tmp_path, teacher=teacher, teacher_tokenizer=teacher_tokenizer,
                           num_iterations=2)
    scripts = {"alpha": ["Step ① ﬁrst.\n```python\n1234 * 56\n```", "So \\boxed{69104}."],
               "beta": ["```python\nprint(7 * 6)\n```", "\\boxed{42}"]}
    trainer.rollout_engine.backend = ScriptedBackend(tokenizer, scripts)
    batch = trainer.scorer.build([row for row in dataset() for _ in range(2)], trainer.rollout_engine,
                                 student_logprobs=trainer._student_logprobs)
    left_out_total = 0
    for row, trajectory in enumerate(batch.trajectories):
        ids = trajectory.completion_ids
        left_out = [j for j, m in enumerate(trajectory.assistant_mask) if m and not batch.tensors["loss_mask"][row, j]]
        left_out_total += len(left_out)
        # alpha: the two characters and the space the teacher merges with "f" into " f"; beta: nothing
        expected = "① ﬁ" if "alpha" in tokenizer.decode(trajectory.prompt_ids) else ""
        assert tokenizer.decode([ids[j] for j in left_out]) == expected
    assert batch.metrics["teacher/unaligned_tokens"] == left_out_total > 0
    assert torch.isfinite(batch.tensors["advantages"]).all()


def test_a_teacher_vocabulary_with_more_merges_takes_the_cross_path(tokenizer, tmp_path):
    """The same corpus with more merges: every student token has its id in the teacher's vocabulary, but the
    teacher tokenizes text differently (and its model has more outputs): cross path, not a size error."""
    from sod_trainer.toy.tasks import tokenizer_corpus

    student_tokenizer = build_tokenizer(corpus=tokenizer_corpus(40), vocab_size=512)
    teacher_tokenizer = build_tokenizer(corpus=tokenizer_corpus(40), vocab_size=640)
    student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    assert all(teacher_vocab[token] == index for token, index in student_vocab.items())  # a prefix of it
    teacher = make_tiny_model(teacher_tokenizer, hidden=96, seed=1)
    trainer = make_trainer(student_tokenizer, tmp_path, teacher=teacher, teacher_tokenizer=teacher_tokenizer)
    assert isinstance(trainer.scorer.teacher, CrossTokenizerTeacher)
