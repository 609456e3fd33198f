"""The worker's side of a request's workflow (`text`, `mm` or `grounding`): per-step rows.

A request's workflow travels, in one direction, through four stops:

1. Admission (`admission.py`, frontend) resolves it once, with `resolve_workflow`,
   and writes the name into the request's `extra_args`; everything below runs in
   the worker.
2. A runner adapter records slot -> workflow in the model's `WorkflowState`:
   `runner_v1.WorkflowSlots` on the V1 model runner, `runner_v2.IAAModelState`
   on Model Runner V2. Both read the name admission wrote (`admitted_workflow`).
3. The forward expands slots to tokens (`WorkflowState.begin_step`): a `Step`
   holds the rows of each image workflow. The insertion layers and the final
   norm (`custom_ops.py`) read it; a step without image rows is `None`.
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
from vllm.forward_context import get_forward_context, is_forward_context_available

from iaa_vllm.engine.admission import requested_workflow
from iaa_vllm.engine.names import EXTRA_ARGS_KEY, IMAGE_WORKFLOWS, WORKFLOWS

TEXT, MM, GROUNDING = range(3)  # ids: indices into WORKFLOWS


# vLLM's own requests, built in the worker with no frontend: Model Runner V2's kernel
# warm-up (`_warmup_{i}_`) and its mixed prefill+decode warm-ups
# (`_v2_mixed_warmup_decode_`, `_sparse_mla_v2_warmup_prefill_`), in
# vllm/v1/worker/gpu/warmup.py from 0.26 to 0.33 (0.33 adds `_step5_dsa_warmup_decode_`
# and `_prefill_`). Text prompts of made-up tokens.
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

    Built on the host from what the scheduler already decided (each slot's workflow,
    each request's token count) and copied to the device in one non-blocking copy,
    so that routing never reads a device tensor back (`to_device`).

    token_workflow: [T] workflow id per token (padding rows are `text`).
    rows: image workflow -> its token rows [n_wf], only workflows with rows.
    image_rows: [T] bool, the image placeholders of image requests' prompts.
    has_features: the runner handed CLIP features to this step (`embed_input_ids`);
        without them no row is a placeholder and the projectors are skipped.
    sampled_rows: workflow id -> its rows among the step's sampled rows (one per
        request, in batch order), only workflows with rows: how `compute_logits`
        routes the rows sampling gathers without reading their tags.
    """

    token_workflow: torch.Tensor
    rows: dict[str, torch.Tensor]
    image_rows: torch.Tensor
    has_features: bool = True
    sampled_rows: dict[int, torch.Tensor] | None = None


def to_device(host: np.ndarray, device: torch.device) -> torch.Tensor:
    """One host -> device copy that never waits: pinned, non-blocking on CUDA.

    The pinned staging tensor is fresh each step: PyTorch's pinned-memory cache does
    not hand its block out again before the copy that reads it has run.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(host))
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


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
        # Set by the model's `embed_input_ids` when the runner hands it CLIP features
        # for the coming forward; read and cleared by `begin_step`.
        self.features_pending = False
        self._sampled_pending = False  # the step's first compute_logits is its sampling

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
        Everything but the placeholder mask is computed on the host; the mask is
        computed on the device from the tensors the forward already has.
        """
        self.step, self._sampled_pending = None, False
        has_features, self.features_pending = self.features_pending, False
        slots, query_start_loc = self._layout()
        if not self.workflow[slots].any():
            return None  # decided before reading query_start_loc: a text step never syncs
        if isinstance(query_start_loc, torch.Tensor):  # V1 on a backend with no host copy
            query_start_loc = query_start_loc.cpu().numpy()
        counts = np.diff(np.asarray(query_start_loc, dtype=np.int64))
        # Rows with no tokens are padding requests (V1 pads query_start_loc for graphs).
        slots, counts = slots[counts > 0], counts[counts > 0]
        slot_workflow = self.workflow[slots]
        if not slot_workflow.any():
            return None  # decided on the host: a text step builds nothing
        num_tokens, used = positions.shape[-1], int(counts.sum())
        token_workflow = np.zeros(num_tokens, dtype=np.int64)
        prompt_len = np.zeros(num_tokens, dtype=np.int64)
        token_workflow[:used] = np.repeat(slot_workflow, counts)
        prompt_len[:used] = np.repeat(self.prompt_len[slots], counts)
        rows = {wf: np.flatnonzero(token_workflow == WORKFLOWS.index(wf)) for wf in IMAGE_WORKFLOWS}
        rows = {wf: r for wf, r in rows.items() if len(r)}
        sampled = {wf_id: np.flatnonzero(slot_workflow == wf_id) for wf_id in range(len(WORKFLOWS))}
        sampled = {wf_id: r for wf_id, r in sampled.items() if len(r)}

        # One copy for all of it; the views below are slices of one device tensor.
        parts = [token_workflow, prompt_len, *rows.values(), *sampled.values()]
        packed = to_device(np.concatenate(parts), input_ids.device)
        views = iter(packed.split([len(p) for p in parts]))
        workflow, prompt_len_dev = next(views), next(views)
        rows_dev = {wf: next(views) for wf in rows}
        sampled_dev = {wf_id: next(views) for wf_id in sampled}
        image_rows = (workflow != TEXT) & (input_ids == self.image_token) & (positions < prompt_len_dev)
        self.step = Step(workflow, rows_dev, image_rows, has_features, sampled_dev)
        self._sampled_pending = True
        return self.step

    def take_sampled_rows(self, num_rows: int) -> dict[int, torch.Tensor] | None:
        """Workflow id -> rows, for the step's sampling `compute_logits` call; None otherwise.

        The runner samples one row per request, in batch order, and calls
        `compute_logits` on them first after the forward (V1 `execute_model`, V2
        `sample`); later calls (prompt logprobs' slices) route by the rows' tags.
        """
        step, first = self.step, self._sampled_pending
        self._sampled_pending = False
        if step is None or not first or sum(r.numel() for r in step.sampled_rows.values()) != num_rows:
            return None
        return step.sampled_rows

    def _layout(self) -> tuple[np.ndarray, np.ndarray | torch.Tensor]:
        """(slot of each batch row [R], query_start_loc [R + 1]): a host array, or on V1
        the backend's device tensor where it keeps no host copy (`begin_step` reads it
        back only for a step with image rows)."""
        if self._batch is not None:
            return self._batch
        metadata = get_forward_context().attn_metadata if is_forward_context_available() else None
        if isinstance(metadata, list):  # micro-batching; refused at config time (config_hook.py)
            raise NotImplementedError("IAA does not support micro-batching (DBO)")
        if not metadata:  # profiling and dummy runs carry no requests
            return np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
        # V1 hands a model its batch layout only inside the attention metadata. A host
        # copy where the backend keeps one; else the device tensor, read back once per
        # image step (a host sync on a GPU: Model Runner V2, the GPU default, has none).
        first = next(iter(metadata.values()))
        query_start_loc = getattr(first, "query_start_loc_cpu", None)
        if query_start_loc is None:
            query_start_loc = getattr(first, "query_start_loc", None)
        if query_start_loc is None:
            raise RuntimeError(
                f"IAA on vLLM's V1 model runner reads the batch layout (query_start_loc) from "
                f"the attention metadata, and {type(first).__name__} has none; use Model Runner "
                "V2 (vLLM's default on GPUs) or an attention backend whose metadata carries it "
                "(FLASH_ATTN, TRITON_ATTN, FLEX_ATTENTION, CPU_ATTN)"
            )
        # V1: batch row i is slot i (the persistent batch the logits processor sees).
        return np.arange(len(query_start_loc) - 1), query_start_loc


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
