"""The Llama-3-8B-Instruct tokenizer and the IAA prompt format, built offline.

The BPE ranks come from the `llama3/tokenizer.model` file that the PyPI package
`llama-models` ships, so nothing is downloaded. The special tokens are the
*original* Llama-3 ones (llama-models' own list is the 3.1 one and puts
different names on the same ids), which makes the IAA image token
`<|reserved_special_token_44|>` id 128049.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os

from iaa_vllm.engine.config import IMAGE_TOKEN, IMAGE_TOKEN_ID

BOS_TOKEN = "<|begin_of_text|>"
BOS_TOKEN_ID = 128000
EOT_TOKEN = "<|eot_id|>"
EOT_TOKEN_ID = 128009
NUM_BASE_TOKENS = 128000
VOCAB_SIZE = 128256
MODEL_MAX_LENGTH = 8192

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# Llama-3's pre-tokenizer split (the `pat_str` of Meta's reference tokenizer).
PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def special_tokens() -> list[str]:
    """The 256 special tokens of Llama-3 (original release), in id order from 128000."""
    names = [
        BOS_TOKEN,
        "<|end_of_text|>",
        *(f"<|reserved_special_token_{i}|>" for i in range(4)),
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|reserved_special_token_4|>",
        EOT_TOKEN,
    ]
    names += [f"<|reserved_special_token_{i}|>" for i in range(5, 251)]  # ids 128010..128255
    return names


# Llama-3 Instruct template plus two IAA additions: the release's system prompt
# when the conversation has none, and OpenAI-style content parts. vLLM hands the
# template a list of parts (`{"type": "image"}`, `{"type": "text", ...}`) when it
# sees a loop over `message['content']`, so that loop must exist. Image parts are
# emitted before text parts because the release only ever trained on
# "<image token>\n" + question, whatever order a client sends the parts in.
# Constants are inlined rather than passed as template variables so the template
# renders the same in HF's and vLLM's renderers without extra kwargs.
CHAT_TEMPLATE = (
    "{%- set default_system = " + json.dumps(SYSTEM_PROMPT) + " %}"
    "{%- set image_token = " + json.dumps(IMAGE_TOKEN) + " %}"
    "{{- '" + BOS_TOKEN + "' }}"
    "{%- if not messages or messages[0]['role'] != 'system' %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + default_system + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}"
    "{%- set text = message['content'] %}"
    "{%- else %}"
    "{%- set ns = namespace(images='', texts=[]) %}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] in ['image', 'image_url'] %}"
    "{%- set ns.images = ns.images + image_token + '\\n' %}"
    "{%- elif part['type'] == 'text' %}"
    "{%- set ns.texts = ns.texts + [part['text']] %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- set text = ns.images + ns.texts | join('\\n') %}"
    "{%- endif %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- text | trim }}{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


def build_prompt(question: str, with_image: bool) -> str:
    """The release's eval prompt: system prompt, user turn, assistant header.

    Without `<|begin_of_text|>`: the tokenizer adds it, as vLLM's completion path
    (`LLM.generate(prompt)`) does; the chat template's output is BOS + this.
    """
    user = (IMAGE_TOKEN + "\n" + question) if with_image else question
    return (
        _turn("system", SYSTEM_PROMPT)
        + _turn("user", user.strip())
        + "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def _turn(role: str, content: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}{EOT_TOKEN}"


def bpe_ranks_path() -> str:
    """Path of the Llama-3 BPE ranks file shipped inside `llama-models`."""
    path = importlib.resources.files("llama_models") / "llama3" / "tokenizer.model"
    if not path.is_file():
        raise FileNotFoundError(
            f"Llama-3 BPE ranks not found at {path}; the `llama-models` package is expected to ship it."
        )
    return str(path)


@functools.lru_cache(maxsize=1)
def _backend_json() -> str:
    """The `tokenizers` JSON of the full tokenizer (conversion takes seconds: cached)."""
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    specials = special_tokens()
    tok = TikTokenConverter(
        vocab_file=bpe_ranks_path(), pattern=PATTERN, extra_special_tokens=specials
    ).converted()
    if tok.get_vocab_size() != VOCAB_SIZE or tok.token_to_id(IMAGE_TOKEN) != IMAGE_TOKEN_ID:
        raise RuntimeError(
            f"converted tokenizer has {tok.get_vocab_size()} tokens and image token id "
            f"{tok.token_to_id(IMAGE_TOKEN)}; expected {VOCAB_SIZE} and {IMAGE_TOKEN_ID}"
        )
    # Same as Meta's HF export of Llama-3: plain `encode` prepends BOS.
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS_TOKEN}:0 $A:0",
                pair=f"{BOS_TOKEN}:0 $A:0 {BOS_TOKEN}:1 $B:1",
                special_tokens=[(BOS_TOKEN, BOS_TOKEN_ID)],
            ),
        ]
    )
    return tok.to_str()


def tokenizer_config() -> dict:
    """Contents of `tokenizer_config.json`."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOT_TOKEN,
        # Meta ships True, but transformers >= 5 ignores it for BPE (with a warning),
        # and cleaning would drop spaces before punctuation anyway.
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": MODEL_MAX_LENGTH,
        "chat_template": CHAT_TEMPLATE,
    }


def save_tokenizer(dirpath: str | os.PathLike) -> list[str]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json.

    The result loads offline with `AutoTokenizer.from_pretrained(dirpath)` and in
    vLLM. Returns the written paths.
    """
    os.makedirs(dirpath, exist_ok=True)
    files = {
        "tokenizer.json": _backend_json(),
        "tokenizer_config.json": json.dumps(tokenizer_config(), indent=2),
        "special_tokens_map.json": json.dumps({"bos_token": BOS_TOKEN, "eos_token": EOT_TOKEN}, indent=2),
    }
    paths = []
    for name, text in files.items():
        path = os.path.join(dirpath, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        paths.append(path)
    return paths
