"""The one home of a request's workflow: `text`, `mm` or `grounding`.

A request's workflow travels, in one direction, through four stops:

1. Admission (`admission.py`, frontend) resolves it once, with `resolve_workflow`,
   and writes the name into the request's `extra_args`.
2. A runner adapter records slot -> workflow in the model's `WorkflowState`:
   `runner_v1.WorkflowSlots` on the V1 model runner, `runner_v2.IAAModelState`
   on Model Runner V2. Both read the name admission wrote (`admitted_workflow`).
3. The forward expands slots to tokens (`WorkflowState.begin_step`): a `Step`
   holds the rows of each image workflow. The insertion layers and the final
   norm (`frozen.py`) read it; a step without image rows is `None`.
4. The forward's output carries each row's workflow id in one extra column
   (`tag_rows`), so `compute_logits` knows the workflow of whatever rows the
   runner hands it, sampled or prompt-logprob slices alike (`untag_rows`).

vLLM hands a model one flat batch of tokens: the slot -> token ranges come from
the batch layout (`query_start_loc`), set by the V2 adapter or read from the
attention metadata on V1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.forward_context import get_forward_context, is_forward_context_available

from iaa_vllm.engine.names import EXTRA_ARGS_KEY

WORKFLOWS = ("text", "mm", "grounding")
IMAGE_WORKFLOWS = ("mm", "grounding")
TEXT, MM, GROUNDING = range(3)


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


# vLLM's own requests, built in the worker with no frontend: Model Runner V2's kernel
# warm-up (`_warmup_{i}_`) and its mixed prefill+decode warm-ups
# (`_v2_mixed_warmup_decode_`, `_sparse_mla_v2_warmup_prefill_`), in
# vllm/v1/worker/gpu/warmup.py from 0.26 to 0.32. Text prompts of made-up tokens.
# A frontend's request id never matches: vLLM appends "-" and a random suffix.
SYNTHETIC_REQUEST_ID = re.compile(r"_\w*warmup\w*_")


def admitted_workflow(params: SamplingParams | None, req_id: str | None = None) -> int:
    """The workflow id admission resolved for a request reaching the worker; `text`
    for one of vLLM's synthetic warm-up requests (`req_id`), which admission never sees."""
    name = requested_workflow(params)
    if name is None:
        if req_id is not None and SYNTHETIC_REQUEST_ID.fullmatch(req_id):
            return TEXT
        # Admission runs in every frontend of an IAA engine (the plugin wraps
        # vLLM's input processor), so this is a request built around it.
        raise RuntimeError(
            f"request {req_id or ''!r} reached the IAA model without {EXTRA_ARGS_KEY} in extra_args; "
            "IAA requests must go through vLLM's input processor with iaa_vllm installed"
        )
    return WORKFLOWS.index(name)


@dataclass
class Step:
    """The image-workflow rows of one forward; only built when there are some.

    token_workflow: [T] workflow id per token (padding rows are `text`).
    rows: image workflow -> its token rows [n_wf], only workflows with rows.
    image_rows: [T] bool, the image placeholders of image requests' prompts.
    """

    token_workflow: torch.Tensor
    rows: dict[str, torch.Tensor]
    image_rows: torch.Tensor


class WorkflowState:
    """Slot -> workflow and prompt length of the requests in the batch, and the current step.

    Owned by the model; fed by a runner adapter. Slots are the runner's request
    indices: the persistent batch's rows on V1, request-state rows on V2.
    """

    def __init__(self, max_slots: int, image_token: int):
        self.workflow = np.zeros(max_slots, dtype=np.int64)
        self.prompt_len = np.zeros(max_slots, dtype=np.int64)
        self.image_token = image_token
        # Batch layout set by the adapter before a forward (V2): slot of each batch
        # row and query_start_loc. None: read it from the attention metadata (V1).
        self._batch: tuple[np.ndarray, np.ndarray] | None = None
        self.step: Step | None = None

    # ---- fed by the adapters ------------------------------------------------
    def add(self, slot: int, params: SamplingParams | None, prompt_len: int, req_id: str | None = None) -> None:
        self.workflow[slot] = admitted_workflow(params, req_id)
        self.prompt_len[slot] = prompt_len

    def move(self, src: int, dst: int, swap: bool) -> None:
        for column in (self.workflow, self.prompt_len):
            if swap:
                column[[src, dst]] = column[[dst, src]]
            else:
                column[dst] = column[src]

    def set_batch(self, slots: np.ndarray, query_start_loc: np.ndarray) -> None:
        """The next forward's rows: batch row i is slot slots[i] (empty: no request)."""
        self._batch = (np.asarray(slots), np.asarray(query_start_loc))

    # ---- read by the forward ------------------------------------------------
    def begin_step(self, input_ids: torch.Tensor, positions: torch.Tensor) -> Step | None:
        """Expand slots to tokens for this forward; None when no row is an image workflow.

        input_ids, positions: [T] (T may include padding past the last request).
        """
        self.step = None
        slots, query_start_loc = self._layout()
        if not len(slots) or not self.workflow[slots].any():
            return None  # decided before touching query_start_loc: a text step never syncs
        starts = torch.as_tensor(query_start_loc).cpu()
        counts = (starts[1:] - starts[:-1]).long()
        num_tokens, used = positions.shape[-1], int(starts[-1])
        workflow = torch.zeros(num_tokens, dtype=torch.long)
        prompt_len = torch.zeros(num_tokens, dtype=torch.long)
        workflow[:used] = torch.from_numpy(self.workflow[slots]).repeat_interleave(counts)
        prompt_len[:used] = torch.from_numpy(self.prompt_len[slots]).repeat_interleave(counts)
        rows = {
            wf: torch.from_numpy(np.flatnonzero(workflow.numpy() == WORKFLOWS.index(wf))).to(input_ids.device)
            for wf in IMAGE_WORKFLOWS
        }
        workflow, prompt_len = workflow.to(input_ids.device), prompt_len.to(input_ids.device)
        image_rows = (workflow != TEXT) & (input_ids == self.image_token) & (positions < prompt_len)
        self.step = Step(workflow, {wf: r for wf, r in rows.items() if r.numel()}, image_rows)
        return self.step

    def _layout(self):
        """(slot of each batch row [R], query_start_loc [R + 1])."""
        if self._batch is not None:
            return self._batch
        metadata = get_forward_context().attn_metadata if is_forward_context_available() else None
        if isinstance(metadata, list):  # micro-batching; refused at config time (config_hook.py)
            raise NotImplementedError("IAA does not support micro-batching (DBO)")
        if not metadata:  # profiling and dummy runs carry no requests
            return np.zeros(0, dtype=np.int64), None
        query_start_loc = next(iter(metadata.values())).query_start_loc
        # V1: batch row i is slot i (the persistent batch the logits processor sees).
        return np.arange(query_start_loc.numel() - 1), query_start_loc


def tag_rows(hidden: torch.Tensor, step: Step | None) -> torch.Tensor:
    """[T, H] -> [T, H + 1]: the last column is each row's workflow id.

    The runner gathers sampled rows and slices prompt-logprob rows out of the
    forward's output before `compute_logits`; the tag travels with every row.
    """
    tag = hidden.new_zeros(hidden.shape[0], 1)
    if step is not None:
        tag[:, 0] = step.token_workflow[: hidden.shape[0]].to(hidden.dtype)
    return torch.cat([hidden, tag], dim=1)


def untag_rows(tagged: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, H + 1] -> (hidden [n, H], contiguous like the stock model's rows; workflow id [n])."""
    return tagged[:, :-1].contiguous(), tagged[:, -1].long()
