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


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512):
    """Train and return a ``PreTrainedTokenizerFast`` with the ChatML template (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [_BASE_CORPUS] + list(corpus or [])
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.padding_side = "left"
    return fast
