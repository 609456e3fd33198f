"""Offline batched evaluation of IAA checkpoints: MME and RefCOCO.

One module per concept: `mme` and `refcoco` (data layouts and official scoring),
`store` (the resumable answer file), `runner` (questions through one vLLM engine
or a Ray Data pool of engines), `synthetic` (small datasets with known answers for
tests), `command` (the `iaa-vllm eval` arguments).
"""
