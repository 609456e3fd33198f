"""The offline Llama-3 tokenizer and the IAA chat template (no vLLM engine)."""

import pytest
from transformers import AutoTokenizer

from iaa_vllm import tokenizer as T


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    T.save_tokenizer(path)
    return AutoTokenizer.from_pretrained(path)


def test_special_token_ids(tok):
    assert len(tok) == T.VOCAB_SIZE == 128256
    expected = {
        "<|begin_of_text|>": 128000, "<|end_of_text|>": 128001,
        "<|reserved_special_token_0|>": 128002, "<|reserved_special_token_3|>": 128005,
        "<|start_header_id|>": 128006, "<|end_header_id|>": 128007,
        "<|reserved_special_token_4|>": 128008, "<|eot_id|>": 128009,
        "<|reserved_special_token_5|>": 128010, "<|reserved_special_token_44|>": 128049,
        "<|reserved_special_token_250|>": 128255,
    }
    assert {t: tok.convert_tokens_to_ids(t) for t in expected} == expected
    assert T.IMAGE_TOKEN_ID == tok.convert_tokens_to_ids(T.IMAGE_TOKEN) == 128049
    assert T.EOT_TOKEN_ID == tok.convert_tokens_to_ids(T.EOT_TOKEN) == 128009
    assert (tok.bos_token_id, tok.eos_token_id) == (T.BOS_TOKEN_ID, T.EOT_TOKEN_ID)


def test_known_ids_and_round_trip(tok):
    ids = tok.encode("Hello world", add_special_tokens=False)
    assert ids == [9906, 1917]  # Llama-3's ids for these words
    assert tok.decode(ids) == "Hello world"
    # Like Meta's HF export, plain encoding prepends BOS.
    assert tok.encode("Hello world") == [T.BOS_TOKEN_ID, 9906, 1917]
    text = "Ünïcode, digits 12345 and  spaces\n\ttabs."
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_image_token_is_one_id_in_prompt(tok):
    # As vLLM's completion path tokenizes: the tokenizer adds the one BOS.
    ids = tok.encode(T.build_prompt("What is shown?", with_image=True))
    assert ids.count(T.IMAGE_TOKEN_ID) == 1
    assert ids[0] == T.BOS_TOKEN_ID and ids.count(T.BOS_TOKEN_ID) == 1
    image_at = ids.index(T.IMAGE_TOKEN_ID)
    assert tok.decode(ids[image_at + 1:image_at + 2]) == "\n"


def test_build_prompt_format():
    prompt = T.build_prompt("What is shown?", with_image=True)
    assert prompt == (
        "<|start_header_id|>system<|end_header_id|>\n\n" + T.SYSTEM_PROMPT + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<|reserved_special_token_44|>\nWhat is shown?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert T.IMAGE_TOKEN not in T.build_prompt("Hi", with_image=False)


@pytest.mark.parametrize("with_image", [True, False])
def test_chat_template_string_content(tok, with_image):
    question = "Is there a dog?\nAnswer the question using a single word or phrase."
    content = (T.IMAGE_TOKEN + "\n" + question) if with_image else question
    messages = [{"role": "system", "content": T.SYSTEM_PROMPT}, {"role": "user", "content": content}]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == T.BOS_TOKEN + T.build_prompt(question, with_image)


@pytest.mark.parametrize("parts", [
    [{"type": "image"}, {"type": "text", "text": "Is there a dog?"}],
    [{"type": "text", "text": "Is there a dog?"}, {"type": "image_url"}],  # image goes first anyway
])
def test_chat_template_content_parts(tok, parts):
    messages = [{"role": "user", "content": parts}]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == T.BOS_TOKEN + T.build_prompt("Is there a dog?", with_image=True)


def test_chat_template_inserts_default_system_prompt(tok):
    rendered = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert rendered == T.BOS_TOKEN + T.build_prompt("Hi", with_image=False)
    custom = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = tok.apply_chat_template(custom, tokenize=False)
    assert T.SYSTEM_PROMPT not in rendered and rendered.count("system") == 1
    assert not rendered.endswith("assistant<|end_header_id|>\n\n")


def test_multi_turn(tok):
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]},
        {"role": "assistant", "content": "  A cat.  "},
        {"role": "user", "content": "Its colour?"},
    ]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered.count(T.IMAGE_TOKEN) == 1
    assert "<|start_header_id|>assistant<|end_header_id|>\n\nA cat.<|eot_id|>" in rendered


def test_vllm_sees_openai_content_format():
    # vLLM passes content as a list of parts only if it detects a loop over them.
    pytest.importorskip("vllm")
    # The detector moved between vLLM releases; check wherever it lives.
    for module in ("vllm.renderers.hf", "vllm.entrypoints.chat_utils"):
        detect = _find(module, "_detect_content_format")
        if detect is not None:
            assert detect(T.CHAT_TEMPLATE, default="string") == "openai"
            return
    pytest.skip("this vLLM has no _detect_content_format")


def _find(module: str, name: str):
    import importlib

    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
