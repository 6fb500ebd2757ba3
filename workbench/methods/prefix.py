"""Prefix-activation cache: run the frozen bottom of the network once, not once per step.

When every edited weight sits at layer L or above, the hidden states *entering* layer L depend only
on frozen weights and on the example's tokens. A fine-tuning run that visits each example many times
(LocFT-BF's 25 epochs, FT-UKE's 50 steps per edit) recomputes them at every visit. This cache computes
them once per example (no grad), and during training replays them: the decoder layers below L are
short-circuited for the duration of the edit (their ``forward`` becomes the identity, the last one
returns the cached states), so each step runs only layers L..N, the final norm and the head.

Why short-circuit the layers rather than call layers L..N ourselves: the model's own forward still
builds the attention masks (causal, padding, sliding-window), the rotary or absolute position
inputs and the final soft-capping for its family. The cached path therefore differs from the plain
one only in what enters layer L, and that is the same value (computed in another batch shape, so
equal to float rounding; tests/test_prefix.py holds losses and gradients to 1e-5 for Llama, Qwen2
and GPT-2). Every decoder layer in transformers >= 5 takes the hidden states first and returns them
as a tensor, which is what makes the trick family-agnostic.

States are kept per example without padding ([T_i, d]) and left-padded with zeros per batch, as
`prompts.collate` pads the tokens: positions are taken from the attention mask (`prompts.position_ids`),
and padded keys are masked, so what a padded position holds never reaches a real one.

Storage is one flat [tokens, d] tensor with an offset per example (no per-tensor overhead at 100K
edits): on the device when it fits ``DEVICE_BUDGET_BYTES``, else in host memory, and past
``HOST_SHARE`` of the free host memory in a memory-mapped file under ``$WORKBENCH_CACHE/prefix/``
(deleted when the edit ends), so the host memory an edit holds stays flat in the number of edits: the
page cache keeps what fits and the disk holds the rest. ``EditConfig.prefix_cache_dtype="bfloat16"``
halves it; the states are then rounded to bf16 (8 bits of mantissa, a relative error of at most
2^-9 per entry) before they enter layer L, so the loss is no longer equal to the plain path's, only
close (tests/test_prefix.py bounds the difference; benchmarks/README.md measures the effect on quality).

It does not apply, and the edit runs the plain path and says why in ``EditResult.prefix_cache``, when
the lowest edited layer is 0, when the schedule visits each example only once, or when it is turned
off (``EditConfig.prefix_cache``). It costs ``tokens x hidden x bytes``: about 46 KB per ZsRE edit
on SmolLM2 in fp32.
"""
from __future__ import annotations

import os
import tempfile

import torch
import torch.nn as nn

from .. import files, prompts
from ..components import family_table
from ..models import input_device, model_dtype
from ..resources import available_bytes

# States larger than this stay in host memory and move to the device a batch at a time.
DEVICE_BUDGET_BYTES = 2 * 1024**3
# A cache larger than this share of the free host memory is not built (the plain path runs).
HOST_SHARE = 0.25


class _Stop(Exception):
    """Raised by the capture hook: nothing above layer L is needed while filling the cache."""


class PrefixCache:
    """The hidden states entering layer ``layer`` for each example of one edit."""

    def __init__(self, model: nn.Module, layer: int, examples: list, pad_id: int, chunk: int = 16,
                 dtype: str = "auto"):
        self.model, self.layer, self.pad_id = model, layer, pad_id
        self.layers = model.get_submodule(family_table(model)["layers"])
        self.device = input_device(model)
        self.compute_dtype = model_dtype(model)
        self.store_dtype = torch.bfloat16 if dtype == "bfloat16" else self.compute_dtype
        lengths = [len(e.input_ids) for e in examples]
        self.offsets = [0]
        for n in lengths:
            self.offsets.append(self.offsets[-1] + n)
        self.where, self.path = "", None
        self.flat = self._allocate(self.offsets[-1], model.config.get_text_config().hidden_size)
        self._replay: torch.Tensor | None = None
        self._fill(examples, chunk)

    def _allocate(self, tokens: int, d: int) -> torch.Tensor:
        need = tokens * d * self.store_dtype.itemsize
        if need <= DEVICE_BUDGET_BYTES:
            self.where = str(self.device)
            return torch.empty(tokens, d, dtype=self.store_dtype, device=self.device)
        if need <= HOST_SHARE * available_bytes("cpu"):
            self.where = "cpu"
            return torch.empty(tokens, d, dtype=self.store_dtype)
        folder = files.cache_root() / "prefix"
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(suffix=".bin", dir=folder)
        os.close(fd)
        self.path, self.where = name, f"disk ({name})"
        return torch.from_file(name, shared=True, size=tokens * d, dtype=self.store_dtype).view(tokens, d)

    def note(self, seconds: float) -> str:
        """What `EditResult.prefix_cache` says when the cache ran."""
        kind = "" if self.store_dtype == self.compute_dtype else f", stored as {str(self.store_dtype)[6:]}"
        return (f"on: layers 0..{self.layer - 1} run once for {len(self.offsets) - 1} examples "
                f"({self.nbytes / 2**20:.1f} MiB on {self.where}{kind}, {seconds:.2f} s)")

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()

    @torch.no_grad()
    def _fill(self, examples: list, chunk: int) -> None:
        captured = {}

        def capture(module, args, kwargs):
            captured["h"] = args[0] if args else kwargs["hidden_states"]
            raise _Stop

        # Sorting by length keeps the padding in each chunk small.
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
        handle = self.layers[self.layer].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            for s in range(0, len(order), chunk):
                idx = order[s:s + chunk]
                b = {k: v.to(self.device) for k, v in prompts.collate([examples[i] for i in idx], self.pad_id).items()}
                try:
                    prompts.forward(self.model, b, use_cache=False)
                except _Stop:
                    pass
                h, width = captured.pop("h"), b["input_ids"].shape[1]
                for j, i in enumerate(idx):
                    a, z = self.offsets[i], self.offsets[i + 1]
                    self.flat[a:z] = h[j, width - (z - a):].to(self.flat.device, self.store_dtype)
        finally:
            handle.remove()

    def batch(self, idx: list[int]) -> torch.Tensor:
        """Left-padded states [B, T, d] for examples `idx`, aligned with `prompts.collate` of the same."""
        spans = [(self.offsets[i], self.offsets[i + 1]) for i in idx]
        width = max(z - a for a, z in spans)
        out = torch.zeros((len(idx), width, self.flat.shape[1]), dtype=self.compute_dtype, device=self.device)
        for j, (a, z) in enumerate(spans):
            out[j, width - (z - a):] = self.flat[a:z].to(self.device, self.compute_dtype, non_blocking=True)
        return out

    def replay(self, idx: list[int], start: int = 0, stop: int | None = None) -> None:
        """Make the next forward pass start at layer L from the states of examples `idx` (positions
        `start`..`stop` of their left-padded batch)."""
        self._replay = self.batch(idx)[:, start:stop]

    def install(self) -> None:
        """Short-circuit layers 0..L-1 (undone by `remove`). A forward already set on the instance
        (accelerate's device hook on a dispatched model) is kept and put back."""
        self._own = {i: self.layers[i].__dict__.get("forward") for i in range(self.layer)}
        for i in range(self.layer - 1):
            self.layers[i].forward = _identity
        self.layers[self.layer - 1].forward = self._replayed

    def remove(self) -> None:
        if self.path is not None:  # the memory-mapped states: the edit is over, the file goes
            self.flat = self.flat[:0]
            os.unlink(self.path)
            self.path = None
        for i, own in getattr(self, "_own", {}).items():
            if own is None:
                self.layers[i].__dict__.pop("forward", None)
            else:
                self.layers[i].forward = own
        self._own, self._replay = {}, None

    def _replayed(self, hidden_states, *args, **kwargs):
        out, self._replay = self._replay, None
        if out is None or out.shape[:2] != hidden_states.shape[:2]:
            raise RuntimeError("prefix cache: a forward pass ran without matching cached states (a workbench bug)")
        return out


def _identity(hidden_states, *args, **kwargs):
    return hidden_states


def nbytes_for(model: nn.Module, examples: list, dtype: str = "auto") -> int:
    """Bytes the cache would hold for `examples` (`dtype`: ``EditConfig.prefix_cache_dtype``)."""
    d = model.config.get_text_config().hidden_size  # GPT-2: n_embd; Gemma 3: its text_config
    size = 2 if dtype == "bfloat16" else model_dtype(model).itemsize
    return sum(len(e.input_ids) for e in examples) * d * size


def host_bytes(model: nn.Module, examples: list, cfg) -> int:
    """Host (or device) memory the cache will hold for this edit: nothing beyond the page cache when
    it goes to a memory-mapped file."""
    need = nbytes_for(model, examples, cfg.prefix_cache_dtype)
    return need if need <= max(DEVICE_BUDGET_BYTES, HOST_SHARE * available_bytes("cpu")) else 0


def why_off(cfg, lowest_layer: int, model: nn.Module, examples: list) -> str | None:
    """Why the cache does not apply to this edit (what `EditResult.prefix_cache` says), or None when it does."""
    if not cfg.prefix_cache:
        return "off (prefix_cache=False)"
    if lowest_layer == 0:
        return "off: layer 0 is edited, there is no frozen prefix"
    passes = cfg.steps_per_edit if cfg.schedule == "depth_first" else cfg.epochs
    if passes <= 1:
        return "off: each example is visited once, so caching would not save a pass"
    return None
