"""The ``workbench`` command line: scripted runs of what the notebooks do.

    workbench prepare                      convert the embedded model once (offline)
    workbench notebook NOTEBOOK [-p k v]   execute a notebook headless with papermill
    workbench edit --data facts.json [--field prompt=question --field target=answer] [--save-pretrained DIR]
    workbench edit --preset ft-uke --benchmark unkebench -n 10 [--save delta.safetensors]
    workbench eval --benchmark zsre -n 50 [--eval locft] [--capability mmlu] [--model EDITED --base ORIGINAL]
    workbench sweep NOTEBOOK --grid grid.yaml  run a notebook once per grid point, resumable
          [--executor local:4 | submitit] [-o partition gpu -o gpus 1 ...]
    workbench reproduce [CLAIM ...]        the first edition's runs, docs/REPRODUCTION-1.md (docs/reproduction.yaml)
    workbench report [--check] [--plan [CLAIM ...]] [--run [CLAIM ...] [--arms LABEL ...]]  the third edition, docs/REPRODUCTION.md, from store/
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path

from .runs import run_notebook


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word is a string


DEFAULT_PRESET = "locft-bf-chat"  # several facts at once, asked as an instruct model is (README)


def fail(command: str, error) -> SystemExit:
    """One line on stderr (`error`'s lines joined), exit status 2."""
    text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    print(f"workbench {command}: error: {text}", file=sys.stderr)
    return SystemExit(2)


def parse_fields(pairs: list[str]) -> dict | None:
    """``["prompt=question", ...]`` -> ``{"prompt": "question"}``, every name checked (None: no mapping)."""
    from .data import FIELDS

    fields = {}
    for pair in pairs:
        name, eq, key = pair.partition("=")
        name, key = name.strip(), key.strip()
        if not eq or not name or not key:
            raise ValueError(f"--field {pair!r}: write FIELD=KEY (e.g. --field target=answer)")
        if name not in FIELDS:
            raise ValueError(f"--field {pair!r}: unknown request field {name!r}; choose one of: {', '.join(FIELDS)}")
        if name in fields:
            raise ValueError(f"--field {pair!r}: {name!r} is mapped twice")
        fields[name] = key
    return fields or None


def _writable(path: Path, what: str, folder: bool) -> None:
    """Refuse an output path that would fail (or overwrite something not ours) after the edit."""
    if path.exists() and path.is_dir() != folder:
        raise ValueError(f"{what} {path}: exists and is {'not ' if folder else ''}a folder")
    if folder and path.is_dir() and any(path.iterdir()):
        card = path / "README.md"
        if not (card.is_file() and "FT-Edit Workbench" in card.read_text(errors="replace")):
            raise ValueError(f"{what} {path}: exists, is not empty and holds no model we saved; choose a new folder")
    parent = next(p for p in [path.parent, *path.parent.parents] if p.exists())
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{what} {path}: {parent} is not writable")


def validate_edit(args):
    """Every argument of ``workbench edit`` checked, the data read and mapped, before any model loads:
    (config, requests, what the requests are called). Raises ValueError / WorkbenchError."""
    from . import data
    from .config import preset, presets

    if args.preset not in presets():
        raise ValueError(f"--preset {args.preset!r}: no such preset; choose one of: {', '.join(presets())}")
    cfg = preset(args.preset, **{k: _literal(v) for k, v in args.set})
    if args.n is not None and args.n < 1:
        raise ValueError(f"-n {args.n}: give a positive number of requests")
    fields = parse_fields(args.field)
    if args.data and args.benchmark:
        raise ValueError("give --data (your file) or --benchmark (a registered one), not both")
    if fields and not args.data:
        raise ValueError("--field maps the records of a --data file; give --data FILE")
    if args.save_pretrained:
        _writable(Path(args.save_pretrained), "--save-pretrained", folder=True)
    if args.save:
        if Path(args.save).suffix != ".safetensors":
            raise ValueError(f"--save {args.save}: the delta is a .safetensors file")
        _writable(Path(args.save), "--save", folder=False)
    if args.data:
        path = Path(args.data)
        if path.suffix not in (".json", ".jsonl"):
            raise data.DataError("expected a .json (a list of records) or .jsonl file", file=path)
        reqs = data.load_json(path, fields, n=args.n)
        return cfg, reqs, f"facts from {path}"
    name = args.benchmark or "facts-fixture"
    return cfg, data.load(name, n=args.n or 10), f"{name} requests"


def edit_command(args) -> int:
    """``workbench edit``: validate everything, edit, print the before/after answers, save."""
    import time
    import warnings

    from . import models
    from .errors import OverwriteWarning, WorkbenchError
    from .editing import edit

    try:
        cfg, reqs, what = validate_edit(args)
    except (ValueError, WorkbenchError, FileNotFoundError) as e:
        raise fail("edit", e) from None
    model, tok = models.load_for(cfg.replace(model_name=args.model or cfg.model_name))
    start = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("always", OverwriteWarning)
        warnings.showwarning = lambda message, *a, **k: print(f"warning: {message}", file=sys.stderr)
        result = edit(model, tok, reqs, cfg, check=not args.no_check, sequential=True if args.sequential else None)
    print(f"{args.preset} on {len(reqs)} {what}: {result.steps} optimiser steps, {time.time() - start:.1f} s "
          f"(check included), {result.n_trainable:,} trainable parameters; prompts "
          f"{'in the chat template' if result.chat_template else 'as plain text (no template)'}")
    if result.check is not None:
        print(result.check.to_text())
    wrote = []
    if args.save:
        wrote.append(f"weight delta: {result.save(args.save)} (wb.apply_delta)")
    if args.save_pretrained:
        wrote.append(f"model: {result.save_pretrained(args.save_pretrained, tok)} (AutoModelForCausalLM.from_pretrained; "
                     "README.md inside lists the facts and the prompt format)")
    print("written: " + "; ".join(wrote) if wrote else "nothing written (--save-pretrained DIR saves the edited model)")
    return 0


def eval_command(args) -> int:
    """``workbench eval``: score a model; with --base, against the original (locality, before/after)."""
    from . import models
    from .checks import Plan, compare
    from .evaluation import EvalConfig, evaluate, pre_edit
    from .runs import RunSpec, requests_for

    spec = RunSpec(benchmark=args.benchmark, n_edits=args.n)
    reqs = requests_for(spec)
    cfg = EvalConfig.preset(args.eval).replace(capability=tuple(args.capability))
    if args.chat_template:
        cfg = cfg.replace(chat_template=args.chat_template == "yes")
    base, tok = models.load(args.base or args.model)
    pre = pre_edit(base, tok, reqs, cfg)  # locality's reference: the base model's answers
    plan = Plan.of(tok, reqs[:10], cfg.chat_template)
    before = plan.ask(base, tok)
    if args.base:
        del base
        model, _ = models.load(args.model)
    else:
        model = base
        print("note: no --base: locality compares the model with itself (1 by construction); give --base ORIGINAL "
              "to compare an edited model with it", file=sys.stderr)
    report = evaluate(model, tok, reqs, cfg, pre=pre)
    print(report.summary[["split", "metric", "value", "n"]].to_string(index=False))
    for k, v in report.capability.items():
        print(f"{k}: {v:.4f}")
    if args.base:
        print(f"--base {args.base} (before) against --model {args.model} (after), the first {len(plan.facts)} requests:")
        print(compare(plan, before, plan.ask(model, tok)).to_text())
    return 0


def prepare_command(args) -> int:
    """``workbench prepare``: convert the embedded model into the cache."""
    from .models import prepare_default

    print(f"embedded model ready: {prepare_default()}")
    return 0


def notebook_command(args) -> int:
    """``workbench notebook``: execute a notebook headless with papermill."""
    executed = run_notebook(args.notebook, {k: _literal(v) for k, v in args.param}, args.out)
    print(f"executed notebook: {executed}\nfigures: {executed.parent}/*.html")
    return 0


def sweep_command(args) -> int:
    """``workbench sweep``: execute a notebook once per point of a grid, resumable."""
    import yaml

    from .runs import sweep_notebook

    grid = yaml.safe_load(open(args.grid))
    if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
        raise SystemExit(f"{args.grid}: expected a mapping of parameter name -> list of values")
    df = sweep_notebook(args.notebook, grid, args.experiment, executor=args.executor,
                        executor_options={k: _literal(v) for k, v in args.option})
    print(df.to_string(index=False))
    return 0


def reproduce_command(args) -> int:
    """``workbench reproduce``: the first edition's notebook runs (`runs.first_edition`)."""
    from .runs import first_edition

    if args.tables:
        first_edition.rewrite_tables(Path(args.docs))
    else:
        first_edition.reproduce(args.config, args.claims, Path(args.docs), {k: _literal(v) for k, v in args.param})
    return 0


def report_command(args) -> int:
    """``workbench report``: render the second edition from store/ (or check the committed one)."""
    from .runs import campaign, report

    claims, out = args.claims or report.CLAIMS, Path(args.out or report.REPORT)
    if args.plan is not None:  # price every owed run before anything runs
        from .runs import cost

        owed = cost.plan(report.read(claims), report.STORE, args.plan or None)
        if args.arms:  # the arms a `--run ... --arms` would run
            owed = owed[owed["arm"].isin(args.arms)]
        print(cost.plan_text(owed), end="")
        return 0
    if args.run is not None:
        campaign.run(args.run, args.executor, claims, arms=args.arms)
    if args.check:
        fresh = report.render(claims, out=out)
        if not out.exists() or out.read_text() != fresh:
            print(f"{out} differs from what {claims} and store/ render: run `workbench report`")
            return 1
        print(f"{out} is what {claims} and store/ render")
    else:
        print(f"report written: {report.write(claims, out)}")
    return 0


# subcommand -> (what runs it, its one-line help), in the order `workbench --help` lists them
COMMANDS = {
    "prepare": (prepare_command, "convert the embedded SmolLM2 model into the cache (once)"),
    "notebook": (notebook_command, "execute a notebook with papermill"),
    "edit": (edit_command, "edit a model on your own facts (--data) or benchmark requests, check and save"),
    "eval": (eval_command, "evaluate a model on benchmark requests (against --base: an edited one)"),
    "sweep": (sweep_command, "execute a notebook once per point of a grid (YAML: name -> list)"),
    "reproduce": (reproduce_command, "run the reproduction report's notebooks (docs/reproduction.yaml)"),
    "report": (report_command, "render the second edition of the reproduction report from store/ "
                               "(docs/claims.yaml -> docs/REPRODUCTION.md)"),
}


def parser() -> argparse.ArgumentParser:
    """The command line: a subparser per entry of `COMMANDS`, with its arguments."""
    from .runs.first_edition import CONFIG, DOCS

    parser = argparse.ArgumentParser(prog="workbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = {name: sub.add_parser(name, help=help) for name, (_, help) in COMMANDS.items()}
    nb = p["notebook"]
    nb.add_argument("notebook")
    nb.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    nb.add_argument("--out", default=None, help="output folder (default results/<notebook>/)")
    ed = p["edit"]
    ed.add_argument("--data", default=None, metavar="FILE", help="your facts: a .json list or .jsonl of records "
                    "(our field names or EasyEdit's: prompt, target_new, subject, rephrase_prompt, ...)")
    ed.add_argument("--field", action="append", default=[], metavar="FIELD=KEY",
                    help="read request FIELD from record KEY (repeat): --field prompt=question --field target=answer")
    ed.add_argument("--preset", default=DEFAULT_PRESET, help=f"configs/<preset>.yaml (default {DEFAULT_PRESET})")
    ed.add_argument("--benchmark", default=None, help="a registered benchmark instead of --data (default facts-fixture)")
    ed.add_argument("-n", type=int, default=None, help="first n requests (default: all of --data, 10 of a benchmark)")
    ed.add_argument("--model", default=None)
    ed.add_argument("--set", nargs=2, action="append", default=[], metavar=("FIELD", "VALUE"), help="override a config field")
    ed.add_argument("--save", default=None, help="write the weight delta here (.safetensors)")
    ed.add_argument("--save-pretrained", default=None, metavar="DIR",
                    help="write the edited model and tokenizer as a Hugging Face folder (transformers 4.x and 5 load it)")
    ed.add_argument("--no-check", action="store_true", help="skip the before/after answers of the facts and "
                    "unrelated questions")
    ed.add_argument("--sequential", action="store_true", help="a depth-first preset may train the facts one after "
                    "another (sequential editing: a later fact can overwrite an earlier one) without a warning")
    ev = p["eval"]
    ev.add_argument("--benchmark", default="zsre")
    ev.add_argument("-n", type=int, default=50)
    ev.add_argument("--model", default=None)
    ev.add_argument("--base", default=None, help="the original model: locality and the before/after answers "
                    "compare --model with it (default: --model itself, so locality is 1 by construction)")
    ev.add_argument("--chat-template", default=None, choices=["yes", "no"],
                    help="probe format (default: the eval preset's)")
    ev.add_argument("--eval", default="locft", choices=["uke", "locft"])
    ev.add_argument("--capability", nargs="*", default=[])
    sw = p["sweep"]
    sw.add_argument("notebook")
    sw.add_argument("--grid", required=True)
    sw.add_argument("--experiment", default=None)
    sw.add_argument("--executor", default="serial", help="serial (default), local:N (N worker processes: one GPU "
                    "or a share of the cores each) or submitit (a SLURM job array)")
    sw.add_argument("-o", "--option", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a submitit option: partition, gpus, cpus, time_min, parallelism, jobs, mem_gb, cluster, folder")
    rp = p["reproduce"]
    rp.add_argument("claims", nargs="*", help="names in the file (default: all, in order)")
    rp.add_argument("--config", default=str(CONFIG))
    rp.add_argument("--docs", default=str(DOCS))
    rp.add_argument("--tables", action="store_true", help="only rewrite the Markdown tables from the recorded metrics")
    rp.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override a parameter of the claims run (e.g. -p only_finished True)")
    rr = p["report"]
    rr.add_argument("--claims", default=None, help="claims file (default docs/claims.yaml)")
    rr.add_argument("--out", default=None, help="Markdown file (default docs/REPRODUCTION.md)")
    rr.add_argument("--check", action="store_true", help="render and compare with --out; exit 1 when they differ")
    rr.add_argument("--run", nargs="*", default=None, metavar="CLAIM",
                    help="first execute the runs these claims (none named: all) still lack, into store/")
    rr.add_argument("--executor", default="serial", help="for --run: serial, local:N or submitit")
    rr.add_argument("--plan", nargs="*", default=None, metavar="CLAIM",
                    help="price the runs these claims and calibrations (none named: all) still owe, and exit")
    rr.add_argument("--arms", nargs="+", default=None, metavar="LABEL",
                    help="for --run and --plan: only these arms of the named claims (e.g. --arms unedited)")
    return parser


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return COMMANDS[args.command][0](args)


if __name__ == "__main__":
    sys.exit(main())
