"""An in-process tokenizer with a Qwen-style (ChatML) chat template, built without the Hub.

Byte-level BPE trained in a second on a small corpus, digits split into single tokens (so that
copying a number is a per-digit decision, as in Qwen's tokenizer), special tokens ``<|im_start|>``,
``<|im_end|>`` and ``<|endoftext|>``. Used by the tests and the offline demo.
"""

from __future__ import annotations

from collections.abc import Iterable

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# another family's chat template (Llama 3 style): other special tokens, other glue around turns and tool outputs
HEADER_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- set role = 'ipython' if message['role'] == 'tool' else message['role'] %}"
    "{{- '<|start_header_id|>' + role + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)
HEADER_SPECIAL_TOKENS = ["<|finetune_pad|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

_BASE_CORPUS = """You are a helpful assistant. Solve the problem step by step. Use the Python tool to compute.
Write code in a ```python block; the output is returned in <tool_response>. Put the final answer in \\boxed{}.
```python
a = 1234 * 56
b = a + 789
print(b)
```
<tool_response>
69893
</tool_response>
Traceback (most recent call last):
  File "<string>", line 1, in <module>
NameError: name 'x' is not defined
SyntaxError: invalid syntax
ZeroDivisionError: division by zero
TypeError: unsupported operand type(s) for +: 'int' and 'str'
The answer is \\boxed{42}. First, compute the product. Next, add the remainder. Then subtract the total.
A farmer has apples and oranges. How many are left? What is the result? Each box holds items.
def total(x, y):
    return x + y
result = total(12, 30) // 4 % 7 - 3
print(result)
for i in range(10):
    if i > 5:
        print(i)
import math
math.sqrt(16)
"""


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512, *, family: str = "chatml",
                    kind: str = "byte_level"):
    """Train and return a ``PreTrainedTokenizerFast`` (deterministic).

    ``family``: ``"chatml"`` (Qwen-style template and special tokens) or ``"header"`` (Llama 3 style:
    ``<|start_header_id|>``/``<|eot_id|>``). ``kind``: ``"byte_level"`` BPE (Qwen, Llama 3), or ``"metaspace"``
    (SentencePiece style: ``▁`` for spaces, byte fallback; Llama 2, Gemma) for cross-tokenizer tests and demos.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [_BASE_CORPUS] + list(corpus or [])
    specials = SPECIAL_TOKENS if family == "chatml" else HEADER_SPECIAL_TOKENS
    if kind == "byte_level":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif kind == "metaspace":
        tokenizer = Tokenizer(models.BPE(byte_fallback=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.Metaspace(prepend_scheme="never")]
        )
        tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                               decoders.Fuse()])
        specials = specials + [f"<0x{byte:02X}>" for byte in range(256)]
        alphabet = sorted(set("".join(texts)) - {" "}) + ["\u2581"]
    else:
        raise ValueError(f"kind={kind!r}: use 'byte_level' or 'metaspace'.")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=specials[2] if family == "chatml" else "<|eot_id|>",
        pad_token=specials[0],
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE if family == "chatml" else HEADER_TEMPLATE
    fast.padding_side = "left"
    return fast
