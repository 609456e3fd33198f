"""What tests expect: the prompt ids vLLM should build, chat answers.

Images come from `iaa_vllm.local_server.noise_image`, as in the benchmarks.
"""

from __future__ import annotations

IMAGE_TOKENS = 576  # 336 px / 14 px patches, squared


def reference_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids as vLLM should build them: tokenize, expand the image token to 576."""
    from iaa_vllm.tokenizer import IMAGE_TOKEN_ID

    ids = tokenizer(prompt)["input_ids"]
    expanded = []
    for token in ids:
        expanded.extend([token] * IMAGE_TOKENS if token == IMAGE_TOKEN_ID else [token])
    return expanded


def chat_answer(server, body: dict) -> str:
    """The text of a chat completion that must succeed (a raw HTTP request, no client)."""
    from iaa_vllm.local_server import post

    status, reply = post(server.base, body)
    assert status == 200, reply
    return reply["choices"][0]["message"]["content"]
