"""What an edit did, and how to undo it: the one result every editing method returns.

`EditResult` holds the original value of every tensor an edit touched (and a live adapter, and the
float32 compute hooks of upcast modules, when there are any): ``revert()`` puts them back bitwise,
``save()`` writes the weight delta as safetensors, and `apply_delta` loads one onto a model with a
result that reverts it.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from .. import files
from ..config import EditConfig
from ..errors import FormatWarning, WorkbenchError
from .weights import remove_hooks, restore


@dataclass
class EditResult:
    """What an edit did, and how to undo it."""

    model: nn.Module
    cfg: EditConfig
    request_ids: list[str]
    originals: dict[str, torch.Tensor]  # parameter name -> its value before the edit (bitwise)
    log: pd.DataFrame  # one row per optimiser step: step, epoch, edit, loss, skipped, requests
    timings: dict  # encode_s, train_s, total_s, s_per_edit
    n_trainable: int  # trainable parameters (adapter parameters for lora/adalora)
    n_truncated: int = 0  # examples cut to max_length
    prefix_cache: str = ""  # whether the prefix-activation cache ran, and why not when it did not (prefix.py)
    adapter: object | None = None  # a live (unmerged) adapter (adapters.AdapterHandle), removed by revert()
    reverted: bool = False
    casts: list = field(default_factory=list, repr=False)  # float32 compute hooks on upcast modules, removed by revert()
    undo: list = field(default_factory=list, repr=False)  # callables revert() runs last (state a method keeps on the model)
    # `edit_each`: the trained weights (name -> float32 tensor) of an edit that is not in the model until
    # apply(); such a result starts reverted
    pending: dict | None = field(default=None, repr=False)
    _deltas: dict | None = field(default=None, repr=False)
    requests: list = field(default_factory=list, repr=False)  # the edited `Request`s (set by wb.edit)
    tok: object | None = field(default=None, repr=False)  # their tokenizer (set by wb.edit): generate, save_pretrained
    check: object | None = field(default=None, repr=False)  # wb.edit(..., check=True): before/after (checks.Check)

    @property
    def chat_template(self) -> bool:
        """Whether the edit trained its prompts in the tokenizer's chat template (else plain text):
        the format the edited facts answer in, and the one `generate` uses."""
        return bool(self.cfg.chat_template)

    def prompt_format(self, chat_template: bool | None, what: str = "generate") -> bool:
        """`chat_template` as a call asked it (None: the edit's), warning when it differs from the edit's."""
        if chat_template is None:
            return self.chat_template
        if bool(chat_template) != self.chat_template:
            warnings.warn(f"{what}(chat_template={bool(chat_template)}) asks in another format than this edit trained "
                          f"(chat_template={self.chat_template}): the edited facts may not show. Leave chat_template "
                          "out to use the edit's format.", FormatWarning, stacklevel=3)
        return bool(chat_template)

    def generate(self, prompts, tok=None, chat_template: bool | None = None, max_new_tokens: int = 64,
                 stop: tuple[str, ...] = (), batch_size: int = 32) -> list[str] | str:
        """Greedy answers of the edited model to `prompts` (one string or a list), in the prompt format
        the edit trained (`chat_template`; another one asked explicitly gets a `FormatWarning`)."""
        from ..generation import generate

        tok = tok if tok is not None else self.tok
        if tok is None:
            raise WorkbenchError("this result does not know its tokenizer: pass tok=")
        one = isinstance(prompts, str)
        out = generate(self.model, tok, [prompts] if one else list(prompts), self.prompt_format(chat_template),
                       max_new_tokens, stop, batch_size)
        return out[0] if one else out

    @property
    def steps(self) -> int:
        """Optimiser steps taken (skipped batches excluded; a method that logs one row per request or
        layer reports its steps in a ``steps`` column)."""
        if not len(self.log):
            return 0
        if "steps" in self.log:
            return int(self.log["steps"].sum())
        return int((~self.log["skipped"]).sum())

    def revert(self) -> nn.Module:
        """Restore the model exactly as it was before the edit (adapters unloaded)."""
        if self.reverted:
            return self.model
        if self.adapter is not None:
            self.adapter.unload()
            self.adapter = None
        restore(self.model, self.originals)
        remove_hooks(self.casts)
        for undo in reversed(self.undo):
            undo()
        self.reverted = True
        return self.model

    def apply(self) -> "EditResult":
        """Write a pending edit (`edit_each`'s results) into the model, exactly the weights it trained
        (a low-precision model's module then computes in float32, as during training); ``revert()``
        takes it out again. The touched weights must be at their originals (no other edit in)."""
        from .weights import float32_master

        if self.pending is None:
            raise WorkbenchError("only edit_each's results are applied later; this edit is already in the model")
        if not self.reverted:
            raise WorkbenchError("this edit is already applied")
        params = dict(self.model.named_parameters())
        moved = [n for n, o in self.originals.items() if not torch.equal(params[n].detach(), o)]
        if moved:
            raise WorkbenchError(f"{moved[0]} is not at its original value: revert the edit that is in the model first")
        self.casts = float32_master(self.model, {n: params[n] for n in self.pending})
        with torch.no_grad():
            for n, value in self.pending.items():
                params[n].copy_(value.to(params[n].device, params[n].dtype))
        self.reverted = False
        return self

    def deltas(self) -> dict[str, torch.Tensor]:
        """Edited minus original value of every touched weight (fp32, CPU)."""
        if self.pending is not None and self.reverted:
            return {n: v.float().cpu() - self.originals[n].float().cpu() for n, v in self.pending.items()}
        if self.adapter is not None:
            return self.adapter.delta_weights()
        params = dict(self.model.named_parameters())
        return {n: (params[n].detach().float().cpu() - o.float().cpu()) for n, o in self.originals.items()}

    def save(self, path) -> Path:
        """Write the weight delta as safetensors, with the config and request ids as metadata."""
        from safetensors.torch import save_file

        if self.reverted:
            raise WorkbenchError("this edit was reverted; there is no delta to save")
        path = Path(path)
        meta = {"workbench": "delta-v1", "config": json.dumps(self.cfg.to_dict()),
                "model": str(getattr(self.model, "name_or_path", "")), "requests": json.dumps(self.request_ids)}
        with files.atomic(path) as tmp:
            save_file({n: d.contiguous() for n, d in self.deltas().items()}, str(tmp), metadata=meta)
        return path


    def save_pretrained(self, folder, tok=None) -> Path:
        """Write the edited model as a normal Hugging Face folder (adapters merged, weights in the
        model's own dtype), with its tokenizer (`tok`, default the edit's) and a model card naming the
        facts and the prompt format they were trained in, so that vLLM, lm-evaluation-harness or
        ``from_pretrained`` load it like any other model, with transformers 5 or 4.x (`legacy_compatible`:
        the RoPE settings where 4.x reads them, a tokenizer class 4.x has). Written under a temporary
        name and renamed, so a failed save leaves no half folder."""
        from .. import __version__
        from ..placement import state_dict

        if self.reverted:
            raise WorkbenchError("this edit was reverted; load the model again or save before revert()")
        tok = tok if tok is not None else self.tok
        folder = Path(folder)
        if self.adapter is not None:  # base weights + the adapter's delta, under the base model's names
            base = self.adapter.peft_model.base_model.model
            sd = {n.replace(".base_layer.", "."): t for n, t in state_dict(base).items() if "lora_" not in n}
            for n, d in self.adapter.delta_weights().items():
                sd[n] = (sd[n].float() + d.to(sd[n].device)).to(sd[n].dtype)
            owner = base
        else:
            sd, owner = dict(state_dict(self.model)), self.model
            for n, o in self.originals.items():  # a weight upcast for training is saved in the model's dtype
                sd[n] = sd[n].to(o.dtype)
        with files.atomic(folder) as tmp:  # replaces an older folder
            owner.save_pretrained(tmp, state_dict={n: t.detach().cpu().contiguous() for n, t in sd.items()})
            if tok is not None:
                tok.save_pretrained(tmp)
            legacy_compatible(tmp)
            (tmp / "README.md").write_text(self._card(__version__))
        return folder

    def _card(self, version: str) -> str:
        cfg = json.dumps(self.cfg.to_dict(), indent=1)
        if self.chat_template:
            fmt = ("**the tokenizer's chat template**: each prompt was a user turn, each target the assistant's "
                   "answer closed by the end-of-turn token. Ask the edited facts the same way "
                   "(`tok.apply_chat_template([{\"role\": \"user\", \"content\": prompt}], add_generation_prompt=True)`).")
        else:
            fmt = ("**plain text, no chat template**: each target continued its prompt after a space and ended "
                   "with EOS. Ask the edited facts the same way (the raw prompt); through the chat template "
                   "they may not show.")
        if self.requests:
            pairs = "\n".join(f"- `{r.id}`: {_quote(r.prompt)} -> {_quote(r.target)}" for r in self.requests)
        else:
            pairs = "\n".join(f"- `{r}`" for r in self.request_ids) + "\n\n(request ids only: the texts were not kept)"
        check = ""
        if self.check is not None:
            check = f"\n\n## Check after the edit\n\n{self.check.summary()}."
        return (f"# {getattr(self.model, 'name_or_path', 'model')}, edited\n\n"
                f"Edited with FT-Edit Workbench {version} (method `{self.cfg.method}`, {len(self.request_ids)} "
                f"requests, {self.steps} optimiser steps). A knowledge-edited model: check locality before reuse.\n\n"
                f"## Prompt format\n\nTrained with {fmt}\n\n"
                f"## Facts (prompt -> target)\n\n{pairs}{check}\n\n## Edit config\n\n```json\n{cfg}\n```\n")


def _quote(text: str, width: int = 300) -> str:
    text = " ".join(str(text).split())
    return json.dumps(text if len(text) <= width else text[:width - 1] + "…", ensure_ascii=False)


def legacy_compatible(folder) -> None:
    """Make a folder transformers 5 wrote load the same with transformers 4.x.

    * config: 5 keeps RoPE's settings only in ``rope_parameters``; 4.x reads ``rope_theta`` (and
      ``rope_scaling`` for a scaled type) at the top level and otherwise silently takes its default
      (10000: SmolLM2's 100000 would change every answer). Both are written, equal.
    * tokenizer: 5 names its class ``TokenizersBackend``, which 4.x lacks; ``PreTrainedTokenizerFast``
      reads the same ``tokenizer.json`` in both (and the chat template file beside it)."""
    folder = Path(folder)
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for sub in [config, *(v for v in config.values() if isinstance(v, dict) and "model_type" in v)]:  # text_config...
        rope = sub.get("rope_parameters")
        if isinstance(rope, dict) and "rope_theta" in rope:
            sub.setdefault("rope_theta", rope["rope_theta"])
            if rope.get("rope_type", "default") != "default":
                sub.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
        if "dtype" in sub:
            sub.setdefault("torch_dtype", sub["dtype"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tok_path = folder / "tokenizer_config.json"
    if tok_path.exists() and (folder / "tokenizer.json").exists():
        tok_config = json.loads(tok_path.read_text())
        if tok_config.get("tokenizer_class") in (None, "TokenizersBackend"):
            tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
        tok_path.write_text(json.dumps(tok_config, indent=2, sort_keys=True) + "\n")


def apply_delta(model: nn.Module, path) -> EditResult:
    """Add a delta saved by `EditResult.save` to `model`; the returned result reverts it exactly."""
    from safetensors import safe_open

    params = dict(model.named_parameters())
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("workbench") != "delta-v1":
            raise WorkbenchError(f"{path} is not a workbench delta file")
        names = list(f.keys())
        missing = [n for n in names if n not in params]
        if missing:
            raise WorkbenchError(f"{path}: the model has no parameter(s) {missing[:3]}; was it saved for another model?")
        originals = {n: params[n].detach().clone() for n in names}
        with torch.no_grad():
            for n in names:
                d = f.get_tensor(n)
                if d.shape != params[n].shape:
                    raise WorkbenchError(f"{path}: {n} has shape {tuple(d.shape)}, the model's is {tuple(params[n].shape)}")
                params[n].add_(d.to(params[n].device, params[n].dtype))
    cfg = EditConfig.from_dict(json.loads(meta["config"]))
    return EditResult(model, cfg, json.loads(meta["requests"]), originals, pd.DataFrame(), {}, 0)


# ------------------------------------------------------------------------------ sequences of edits
CARRIED = "_workbench_"  # model attributes named so hold state a method keeps between edits (see `carried`)


def carried(model: nn.Module) -> dict:
    """State that methods keep on the model between the edits of a sequence: every attribute named
    ``_workbench_*`` (AlphaEdit's Σ k kᵀ of the keys edited so far, the context prefixes that
    locate-and-edit methods sample once). With the touched weights it is all a later edit depends on."""
    return {k: v for k, v in vars(model).items() if k.startswith(CARRIED)}


def snapshot(model: nn.Module, results: list[EditResult]) -> dict | None:
    """Where a sequence of edits stands: the current value of every weight `results` touched and the
    carried state, as CPU tensors (`resume` puts it into the unedited model). None when an edit holds
    something a weight snapshot cannot carry: a live adapter, or float32 compute hooks of a weight
    upcast from a low-precision model."""
    import copy

    if any(r.adapter is not None or r.casts or r.pending is not None for r in results):
        return None
    params = dict(model.named_parameters())
    names = dict.fromkeys(n for r in results for n in r.originals)
    return {"weights": {n: params[n].detach().cpu().clone() for n in names},
            "carried": copy.deepcopy({k: _to_cpu(v) for k, v in carried(model).items()})}


def resume(model: nn.Module, cfg: EditConfig, snap: dict, request_ids: list[str]) -> EditResult:
    """Put a `snapshot` into `model` (unedited: the sequence's start); the returned result reverts the
    weights and the carried state bitwise to how they were before."""
    params = dict(model.named_parameters())
    missing = [n for n in snap["weights"] if n not in params]
    if missing:
        raise WorkbenchError(f"the snapshot names parameter(s) the model lacks: {missing[:3]}")
    originals = {n: params[n].detach().clone() for n in snap["weights"]}
    before = carried(model)
    with torch.no_grad():
        for n, value in snap["weights"].items():
            params[n].copy_(value.to(params[n].device, params[n].dtype))
    for k, v in snap["carried"].items():
        setattr(model, k, v)

    def put_back():
        for k in carried(model):
            if k not in before:
                delattr(model, k)
        for k, v in before.items():
            setattr(model, k, v)

    return EditResult(model, cfg, list(request_ids), originals, pd.DataFrame(), {}, 0, undo=[put_back])


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value
