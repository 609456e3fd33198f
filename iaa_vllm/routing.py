"""Per-request workflow routing: which rows of a batch are `text`, `mm`, `grounding`.

vLLM hands a model one flat batch of tokens with no per-request fields. The V1
model runner does, however, tell every logits processor about each request's
`SamplingParams` and batch slot (`update_state`) before each forward, and the
forward context's attention metadata has `query_start_loc` (slot -> token
range). `WorkflowRouter` keeps slot -> workflow; `token_workflows` turns it
into one workflow id per token inside the forward (design.md §3).
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.v1.sample.logits_processor import (
    BatchUpdate,
    LogitsProcessor,
    MoveDirectionality,
)

WORKFLOWS = ("text", "mm", "grounding")
IMAGE_WORKFLOWS = ("mm", "grounding")
TEXT, MM, GROUNDING = range(3)
EXTRA_ARGS_KEY = "iaa_workflow"


class WorkflowError(VLLMValidationError, ValueError):
    """A request the IAA engine refuses: HTTP 400 on the server, ValueError offline."""


def requested_workflow(params: SamplingParams | None) -> str | None:
    """The workflow named in `extra_args`, checked; None when not given."""
    extra = (params.extra_args if params is not None else None) or {}
    name = extra.get(EXTRA_ARGS_KEY)
    if name is not None and name not in WORKFLOWS:
        raise WorkflowError(
            f"{EXTRA_ARGS_KEY}={name!r} is not a workflow; valid: {list(WORKFLOWS)}",
            parameter=EXTRA_ARGS_KEY,
        )
    return name


def resolve_workflow(params: SamplingParams | None, has_image: bool) -> str:
    """The request's workflow: as asked, else `mm` with an image, else `text`."""
    name = requested_workflow(params)
    if name is None:
        return "mm" if has_image else "text"
    if name == "text" and has_image:
        raise WorkflowError(
            f"{EXTRA_ARGS_KEY}='text' cannot take an image; use one of "
            f"{list(IMAGE_WORKFLOWS)} for image requests",
            parameter=EXTRA_ARGS_KEY,
        )
    if name in IMAGE_WORKFLOWS and not has_image:
        raise WorkflowError(
            f"{EXTRA_ARGS_KEY}={name!r} needs an image; none was given",
            parameter=EXTRA_ARGS_KEY,
        )
    return name


# The router of each engine, found by the model through its vllm_config.
_ROUTERS: "weakref.WeakValueDictionary[int, WorkflowRouter]" = (
    weakref.WeakValueDictionary()
)


class WorkflowRouter(LogitsProcessor):
    """Tracks slot -> (workflow, prompt length); never changes logits.

    Installed for every engine through the `vllm.logits_processors` entry point;
    for non-IAA models it only keeps a small array up to date.
    """

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        max_reqs = vllm_config.scheduler_config.max_num_seqs
        self.workflow = np.zeros(max_reqs, dtype=np.int64)
        self.prompt_len = np.zeros(max_reqs, dtype=np.int64)
        self.image_token = getattr(
            vllm_config.model_config.hf_config, "image_token_index", None
        )
        _ROUTERS[id(vllm_config)] = self

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        requested_workflow(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return True

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index, params, prompt_ids, _ in batch_update.added:
            prompt_ids = prompt_ids or []
            # Admission already wrote the resolved name into extra_args; the
            # fallback keeps requests that bypassed admission routable.
            has_image = self.image_token is not None and self.image_token in prompt_ids
            name = requested_workflow(params) or ("mm" if has_image else "text")
            self.workflow[index] = WORKFLOWS.index(name)
            self.prompt_len[index] = len(prompt_ids)
        for a, b, direction in batch_update.moved:
            for arr in (self.workflow, self.prompt_len):
                if direction == MoveDirectionality.SWAP:
                    arr[[a, b]] = arr[[b, a]]
                else:
                    arr[b] = arr[a]


def router_for(vllm_config) -> WorkflowRouter:
    router = _ROUTERS.get(id(vllm_config))
    if router is None:
        raise RuntimeError(
            "IAA needs the iaa_vllm WorkflowRouter logits processor, which was not "
            "loaded: install iaa_vllm (its `vllm.logits_processors` entry point) and "
            "use the V1 model runner (VLLM_USE_V2_MODEL_RUNNER=0)"
        )
    return router


def token_workflows(
    router: WorkflowRouter, query_start_loc: torch.Tensor, num_tokens: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-token workflow ids and prompt lengths, or None if the batch is all text.

    Returns (workflow [num_tokens], prompt_len [num_tokens]) on the CPU; padding
    tokens past the last request are `text` so they never reach an insertion layer.
    """
    num_reqs = query_start_loc.numel() - 1
    slot_workflow = router.workflow[:num_reqs]
    if not slot_workflow.any():
        return None  # decided before the copy below: a text batch never syncs with the GPU
    starts = query_start_loc.cpu()
    counts = (starts[1:] - starts[:-1]).long()
    workflow = torch.zeros(num_tokens, dtype=torch.long)
    prompt_len = torch.zeros(num_tokens, dtype=torch.long)
    used = int(starts[-1])
    workflow[:used] = torch.from_numpy(slot_workflow).repeat_interleave(counts)
    prompt_len[:used] = torch.from_numpy(router.prompt_len[:num_reqs]).repeat_interleave(
        counts
    )
    return workflow, prompt_len
