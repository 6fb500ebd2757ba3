"""The parameters every locate-and-edit method shares: where the key is read and how the value is optimised.

ROME, MEMIT, AlphaEdit (rome.py, memit.py) extend them with their keys' prefixes and solves, UnKE and AnyEdit
(unke.py) with their layer training; each registers its own dataclass (config.register_method).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...config import MethodParams


@dataclass(frozen=True)
class ValueParams(MethodParams):
    # the key token: the subject's last (ROME, MEMIT, AlphaEdit) or the prompt's last (UnKE, AnyEdit, and the
    # fallback for requests without a subject)
    key_position: Literal["subject_last", "prompt_last"] = "subject_last"
    v_lr: float = 0.5  # lr of the value optimisation (the vector δ added at the key token)
    v_steps: int = 25  # its most steps (it stops below v_stop_loss)
    # a request's value loop stops once its loss is below this (checked before a step, as the originals do); 0:
    # never early. Official: ROME/MEMIT/AlphaEdit 5e-2, UnKE none, AnyEdit 5e-3 (its MEMIT base 1e-2)
    v_stop_loss: float = 5e-2
    # the value's target ends with the end-of-turn (chat template) / EOS (plain), as fine-tuning's does. ROME's,
    # MEMIT's and AlphaEdit's code trains the target alone (false in their presets); UnKE and AnyEdit append it
    target_eot: bool = True
    v_weight_decay: float = 1e-3  # penalty weight on ||δ|| / ||h||²
    clamp_norm: float = 4.0  # ||δ|| is kept below clamp_norm x ||h||
    kl_factor: float = 0.0625  # ROME's KL term at "{subject} is a" (0: off)
    mom2_tokens: int = 100_000  # tokens of text behind C = E[kkᵀ] (0: no statistics; ROME then uses C = I)
    mom2_corpus: str = "mmlu"  # "mmlu" (the MMLU CSVs of the data folder) or a .txt / .jsonl file of passages

    AT_LEAST_ONE = ("v_steps",)
    NON_NEGATIVE = ("v_lr", "v_weight_decay", "v_stop_loss", "clamp_norm", "kl_factor", "mom2_tokens")
    SMOKE = {"v_steps": 5, "mom2_tokens": 2000}


@dataclass(frozen=True)
class KeyParams(ValueParams):
    """ROME's, MEMIT's and AlphaEdit's keys: averaged over model-generated prefixes besides the bare prompt."""

    n_prefixes: int = 10  # model-generated prefixes the key and value average over, besides the bare prompt
    prefix_tokens: int = 10  # tokens per prefix
    # the key over the bare prompt and the prefixes: "flat" (one mean over all rows: ROME's compute_u) or
    # "two_group" (the mean of the bare-prompt key and the prefixes' mean key: MEMIT's compute_ks, AlphaEdit)
    key_mean: Literal["flat", "two_group"] = "flat"

    AT_LEAST_ONE = ValueParams.AT_LEAST_ONE + ("prefix_tokens",)
    NON_NEGATIVE = ValueParams.NON_NEGATIVE + ("n_prefixes",)
    SMOKE = {**ValueParams.SMOKE, "n_prefixes": 2, "prefix_tokens": 4}
