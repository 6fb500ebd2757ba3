"""A run's protocol: how its requests are edited and scored.

* ``"batch"`` (`batch`): every request edited at once, with the config's schedule (a depth-first one
  trains its batches one after another on purpose), then all scored, then the edit reverted;
* ``"single"`` (`single`): each request edited alone on the unedited model, scored and reverted, so
  no edit sees another. With ``parallel_edits=k`` (method ft on matrices, `methods.parallel`) k single
  edits are trained at once (`editing.edit_each`) and scored at once (`score_each`), each request under
  its own edit's weights.

Sequential editing in chunks, the third way a run edits, is `sweep.lifelong`: it scores after every
chunk and checkpoints between chunks, which makes it a store matter as much as a protocol.
Each function returns the `EvalReport` and the `EditResult`s (reverted) the run's metrics add up.
"""
from __future__ import annotations

import pandas as pd
from tqdm.auto import tqdm

from .. import editing
from ..errors import WorkbenchError
from ..evaluation import UKE, EvalConfig, EvalReport, PreEdit, evaluate, protocols_for, summarize
from ..methods.parallel import batchable, routed


def score_each(model, tok, requests, results, eval_cfg: EvalConfig = UKE, pre: PreEdit | None = None) -> EvalReport:
    """Score `edit_each`'s pending results at once: request k's probes run with edit k's weights.

    The K edits' probes share the generation and teacher-forced batches that K rounds of
    ``apply(); evaluate(); revert()`` would run one by one (`parallel.routed` computes each row with
    its own edit's weights), and the report is those rounds' reports concatenated: per-probe scores
    to float rounding, since a batch now mixes other prompts and so its padding differs
    (tests/test_parallel.py). The model is left as it was and every result stays pending.
    Capability is per model: score it after ``apply()``.
    """
    if len(results) != len(requests):
        raise WorkbenchError(f"score_each: {len(results)} results for {len(requests)} requests (one each)")
    with routed(model, results) as route:
        return evaluate(model, tok, requests, eval_cfg, pre=pre, route=route)


def batch(model, tok, reqs, cfg, ecfg: EvalConfig, pre: PreEdit, progress: bool = False,
          checkpoint=None) -> tuple[EvalReport, list]:
    """Edit every request at once (`checkpoint`: where a long edit keeps its epoch checkpoint), score
    them all, revert."""
    result = editing.edit(model, tok, reqs, cfg, progress=progress, checkpoint=checkpoint, sequential=True)
    try:
        report = evaluate(model, tok, reqs, ecfg, pre=pre)
    finally:
        result.revert()
    return report, [result]


def single(model, tok, reqs, cfg, ecfg: EvalConfig, pre: PreEdit, progress: bool = False) -> tuple[EvalReport, list]:
    """Edit, score and revert each request alone (k at once with ``cfg.parallel_edits=k`` where the
    model and method allow it: `methods.parallel.batchable`). Capability is not scored: it belongs
    to one edited model, and here there are as many as requests."""
    tables, results = [], []
    each = ecfg.replace(capability=())
    k = cfg.parallel_edits if cfg.parallel_edits > 1 and batchable(model, cfg) else 1
    with tqdm(total=len(reqs), desc="single edits", disable=not progress, leave=False) as bar:
        for start in range(0, len(reqs), k):
            group = reqs[start:start + k]
            if k > 1:  # trained at once and scored at once, each request with its own edit
                done = editing.edit_each(model, tok, group, cfg, progress=False)
                tables.append(score_each(model, tok, group, done, each, pre).per_probe)
                results += done
                bar.update(len(group))
                continue
            for r in group:
                res = editing.edit(model, tok, [r], cfg, progress=False)
                try:
                    tables.append(evaluate(model, tok, [r], each, pre=pre).per_probe)
                finally:
                    res.revert()
                results.append(res)
                bar.update(1)
    report = evaluate(model, tok, reqs[:0], ecfg.replace(splits=()), pre=pre)  # provenance only
    report.per_probe = pd.concat(tables, ignore_index=True)
    report.summary = summarize(report.per_probe, protocols_for(ecfg))
    return report, results
