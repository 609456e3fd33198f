"""Admission (engine/admission.py, called by patches/input_processor.py): each request's
workflow is resolved, written and checked before it is scheduled; a bad one fails
alone, with a clear error, and the engine keeps serving."""

from __future__ import annotations

import pytest
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError

from iaa_vllm.engine.admission import SALT_PREFIX, admit, resolve_workflow
from iaa_vllm.tokenizer import IMAGE_TOKEN, IMAGE_TOKEN_ID, build_prompt
from tests import engines
from tests.engines import image_request, text_request


class _Request:
    """The EngineCoreRequest fields admission reads and writes."""

    def __init__(self, prompt_token_ids, mm_features=None, workflow=None, cache_salt=None):
        extra = {"iaa_workflow": workflow} if workflow else None
        self.sampling_params = SamplingParams(extra_args=extra)
        self.prompt_token_ids, self.mm_features, self.cache_salt = prompt_token_ids, mm_features, cache_salt


def params(workflow=None) -> SamplingParams:
    return SamplingParams(extra_args={"iaa_workflow": workflow} if workflow else None)


def test_resolve_defaults_to_mm_with_an_image_and_text_without():
    assert resolve_workflow(params(), has_image=True) == "mm"
    assert resolve_workflow(params(), has_image=False) == "text"
    assert resolve_workflow(params("grounding"), has_image=True) == "grounding"


@pytest.mark.parametrize(
    "workflow, has_image, message",
    [
        ("ocr", True, r"valid: \['text', 'mm', 'grounding'\]"),
        ("text", True, r"cannot take an image; use one of \['mm', 'grounding'\]"),
        ("mm", False, "needs an image"),
    ],
)
def test_resolve_refuses_with_the_choices(workflow, has_image, message):
    with pytest.raises(ValueError, match=message):
        resolve_workflow(params(workflow), has_image)


def test_admit_writes_the_default_workflow_and_salts_image_workflows():
    text = _Request([1, 2, 3], cache_salt="user")
    admit(text, IMAGE_TOKEN_ID)
    assert text.sampling_params.extra_args["iaa_workflow"] == "text"
    assert text.cache_salt == "user"  # text keeps stock prefix caching
    image = _Request([1, IMAGE_TOKEN_ID], mm_features=["feature"])
    admit(image, IMAGE_TOKEN_ID)
    assert image.sampling_params.extra_args["iaa_workflow"] == "mm"
    grounding = _Request([1, IMAGE_TOKEN_ID], mm_features=["feature"], workflow="grounding")
    admit(grounding, IMAGE_TOKEN_ID)
    assert image.cache_salt.startswith(SALT_PREFIX)
    assert image.cache_salt != grounding.cache_salt


@pytest.mark.parametrize(
    "request_kind, workflow, message",
    [
        ("text", "video", r"iaa_workflow='video' is not a workflow; valid: \['text', 'mm', 'grounding'\]"),
        ("image", "text", r"iaa_workflow='text' cannot take an image"),
        ("text", "grounding", r"iaa_workflow='grounding' needs an image"),
        ("token_without_image", None, r"image token \(id 128049\) but the request carries no image"),
        ("two_images", "mm", r"(?i)at most 1 image"),
    ],
)
def test_bad_request_fails_alone_and_engine_keeps_serving(
    iaa_engine, images, request_kind, workflow, message
):
    good = [text_request("Hello there"), image_request("What is it?", images[0])]
    good_params = [engines.greedy("text", 5), engines.greedy("grounding", 5)]
    before = [engines.tokens_and_logprobs(o) for o in engines.generate_together(iaa_engine, good, good_params)]

    bad = {
        "text": text_request("Hello there"),
        "image": image_request("What is it?", images[0]),
        "token_without_image": {"prompt": build_prompt("What is it?", with_image=False) + IMAGE_TOKEN},
        "two_images": {
            "prompt": build_prompt(IMAGE_TOKEN + "\nand this?", with_image=True),
            "multi_modal_data": {"image": images[:2]},
        },
    }[request_kind]
    # vLLM re-raises validation errors as VLLMValidationError (HTTP 400 online).
    with pytest.raises((ValueError, VLLMValidationError), match=message):
        iaa_engine.generate([bad], engines.greedy(workflow, 5))

    after = [engines.tokens_and_logprobs(o) for o in engines.generate_together(iaa_engine, good, good_params)]
    assert after == before
