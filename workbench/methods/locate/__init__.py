"""Locate-and-edit: the pieces ROME, MEMIT, AlphaEdit, UnKE and AnyEdit share, written once.

These methods edit a *located* weight so that a key (the hidden state at one token) maps to a new
value. Notation: at decoder layer l the MLP's output matrix W (``down_proj``; GPT-2's ``c_proj``) maps
its input k (the key, size d_ff) to the MLP output W k (size d). Everything below is shared:

* **sites** (`site`): W at layer l, with GPT-2's Conv1D layout ([in, out]) hidden behind `Site.add`;
* **key positions** (`key_position`): the subject's last token of the rendered prompt (ROME, MEMIT,
  AlphaEdit) or the last prompt token (UnKE's "cause-driven" key; AnyEdit; and the documented
  fallback for requests without a subject, which is how AnyEdit runs MEMIT on UnKEBench);
* **context prefixes** (`context_prefixes`): short texts the model itself generates, prepended to
  the prompt so that keys and values do not depend on one phrasing (ROME Eq. 3 averages the key over
  them); the bare prompt is the first "prefix";
* **keys** (`keys`): W's input at given (row, position) pairs, one forward pass that stops at l;
* **values** (`optimize_deltas`): a vector δ added to a module's output (the MLP's for ROME, the
  decoder layer's for the others) at the key positions, optimised with Adam so that the model
  produces the target: the mean NLL of the target tokens over all prefixed prompts, plus
  ``kl_factor`` x KL(p_δ || p_0) of the next-token distribution at the subject of "{subject} is a"
  (ROME's essence term, off for UnKE/AnyEdit), plus ``v_weight_decay`` x ||δ|| / ||h||², with ||δ||
  clamped to ``clamp_norm`` x ||h|| after every step (ROME/MEMIT `compute_v`/`compute_z`);
* **second moments** (`second_moment`): C = E[k kᵀ] (uncentred) of W's input over a text corpus,
  batched, cached on disk, guarded for memory;
* **the closed-form solve** (`solve`): Δ = R Kᵀ (λ C + K Kᵀ + extra)⁻¹, MEMIT's least-squares update,
  which with one key and λ → 0 is ROME's rank-one update (Sherman-Morrison);
* **null-space projection** (`null_space`): P = Û Ûᵀ over the eigenvectors of C with eigenvalues
  below a threshold (AlphaEdit).

Sources: Meng et al. 2022 (ROME, §3), Meng et al. 2023 (MEMIT, §4), Fang et al. 2025 (AlphaEdit),
Deng et al. 2024 (UnKE), Jiang et al. 2025 (AnyEdit), and our reading of kmeng01/rome, kmeng01/memit,
jianghoucheng/AlphaEdit, TrustedLLM/UnKE and zjunlp/EasyEdit; no code was copied.

Statistics: the originals compute C from 100,000 Wikipedia documents. Offline we use text that
ships with the benchmarks: by default the MMLU test and dev questions with their choices (14,327
passages, 1,242,345 tokens on SmolLM2's tokenizer cut at 256 each; ``mom2_tokens`` caps what is
used, 100,000 by default, drawn in a seeded order), or a
user's corpus (a .txt file, one passage per line, or a .jsonl with a "text" field). Exam questions
are shorter and more formal than encyclopaedia text, so C (and AlphaEdit's null space) describes
a narrower distribution of keys than the papers' (the corpus is read by `data.corpus`).

The package, by job (every name above is importable from here, ``locate.keys`` as before):

* `sites`: sites, the capture hooks (a forward pass that stops once it has what it needs), the frozen frame;
* `rows`: key positions, context prefixes, a request's rows, keys and mean keys;
* `deltas`: the value optimisation (`optimize_deltas`, batched, with the prefix cache and `Before`);
* `statistics`: second moments, cached in memory (`STATS`) and on disk (`stats_key`);
* `solves`: the closed-form solve and the null-space projector;
* `params`: the methods' parameters.

``rows`` and ``deltas`` are not called ``keys`` and ``values``: those are functions of this package.
"""
from __future__ import annotations

from .deltas import Before, Values, optimize_deltas, value, values
from .rows import (Rows, bare_outputs, context_prefixes, key_position, keys, mean_keys, padded_positions, rows_for,
                   stacked)
from .sites import (Site, capture, capture_inputs, decoder_layer, frozen, frozen_eval, layer_index, layer_of,
                    layer_outputs, layers_of, outputs, site, timings)
from .solves import beside, null_space, solve
from .statistics import STATS, second_moment, second_moments, stats_key
