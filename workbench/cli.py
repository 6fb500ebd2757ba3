"""The ``workbench`` command line: scripted runs of what the notebooks do.

    workbench prepare                      convert the embedded model once (offline)
    workbench notebook NOTEBOOK [-p k v]   execute a notebook headless with papermill
    workbench edit --preset ft-uke --benchmark unkebench -n 10 [--save delta.safetensors]
    workbench eval --benchmark zsre -n 50 [--eval locft] [--capability mmlu]
    workbench sweep NOTEBOOK --grid grid.yaml  run a notebook once per grid point, resumable
          [--executor local:4 | submitit] [-o partition gpu -o gpus 1 ...]
    workbench reproduce [CLAIM ...]        the first edition's runs, docs/REPRODUCTION-1.md (docs/reproduction.yaml)
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from .data import PROJECT_ROOT
from .placement import is_random
from .runs import markdown_table, read, results_root, run_notebook


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word is a string


def reproduce(config, claims: list[str], docs: Path, overrides: dict | None = None) -> None:
    """Execute each claim's notebook with its parameters into ``results/reproduction/<claim>/`` and
    copy what the report cites into `docs`: ``<claim>.ipynb`` (executed, with its tables),
    ``<claim>.png`` (the figure) and ``<claim>.json`` (the recorded metrics)."""
    import json
    import shutil
    import time

    import yaml

    table = yaml.safe_load(Path(config).read_text())
    unknown = sorted(set(claims) - set(table))
    if unknown:
        raise SystemExit(f"{config}: no claim {unknown}; valid: {sorted(table)}")
    docs.mkdir(parents=True, exist_ok=True)
    for name in claims or list(table):
        entry = table[name]
        model = {**entry.get("params", {}), **(overrides or {})}.get("model_name", "")
        if is_random(model):
            raise SystemExit(f"{config}: claim {name!r} would run on {model!r}, a shape with random weights: "
                             "its numbers measure speed and memory, never editing, and the report refuses them")
        notebook = PROJECT_ROOT / entry["notebook"]
        out = results_root() / "reproduction" / name
        start = time.time()
        executed = run_notebook(notebook, {**entry.get("params", {}), **(overrides or {})}, out)
        shutil.copy(executed, docs / f"{name}.ipynb")
        for png in out.glob("*.png"):
            shutil.copy(png, docs / f"{name}.png")
        recorded = read(executed)
        (docs / f"{name}.json").write_text(json.dumps(recorded, indent=1, sort_keys=True))
        (docs / f"{name}.md").write_text(markdown_table(recorded))
        print(f"{name}: {notebook.name} in {time.time() - start:.0f} s -> {docs}/{name}.*", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="convert the embedded SmolLM2 model into the cache (once)")
    nb = sub.add_parser("notebook", help="execute a notebook with papermill")
    nb.add_argument("notebook")
    nb.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    nb.add_argument("--out", default=None, help="output folder (default results/<notebook>/)")
    ed = sub.add_parser("edit", help="edit a model on benchmark requests and report")
    ed.add_argument("--preset", default="ft-uke")
    ed.add_argument("--benchmark", default="facts-fixture")
    ed.add_argument("-n", type=int, default=10)
    ed.add_argument("--model", default=None)
    ed.add_argument("--set", nargs=2, action="append", default=[], metavar=("FIELD", "VALUE"), help="override a config field")
    ed.add_argument("--save", default=None, help="write the weight delta here (.safetensors)")
    ev = sub.add_parser("eval", help="evaluate an (unedited) model on benchmark requests")
    ev.add_argument("--benchmark", default="zsre")
    ev.add_argument("-n", type=int, default=50)
    ev.add_argument("--model", default=None)
    ev.add_argument("--eval", default="locft", choices=["uke", "locft"])
    ev.add_argument("--capability", nargs="*", default=[])
    sw = sub.add_parser("sweep", help="execute a notebook once per point of a grid (YAML: name -> list)")
    sw.add_argument("notebook")
    sw.add_argument("--grid", required=True)
    sw.add_argument("--experiment", default=None)
    sw.add_argument("--executor", default="serial", help="serial (default), local:N (N worker processes: one GPU "
                    "or a share of the cores each) or submitit (a SLURM job array)")
    sw.add_argument("-o", "--option", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a submitit option: partition, gpus, cpus, time_min, parallelism, jobs, mem_gb, cluster, folder")
    rp = sub.add_parser("reproduce", help="run the reproduction report's notebooks (docs/reproduction.yaml)")
    rp.add_argument("claims", nargs="*", help="names in the file (default: all, in order)")
    rp.add_argument("--config", default=str(PROJECT_ROOT / "docs" / "reproduction.yaml"))
    rp.add_argument("--docs", default=str(PROJECT_ROOT / "docs" / "reproduction"))
    rp.add_argument("--tables", action="store_true", help="only rewrite the Markdown tables from the recorded metrics")
    rp.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override a parameter of the claims run (e.g. -p only_finished True)")
    rr = sub.add_parser("report", help="render the second edition of the reproduction report from store/ "
                        "(docs/claims.yaml -> docs/REPRODUCTION.md)")
    rr.add_argument("--claims", default=None, help="claims file (default docs/claims.yaml)")
    rr.add_argument("--out", default=None, help="Markdown file (default docs/REPRODUCTION.md)")
    rr.add_argument("--check", action="store_true", help="render and compare with --out; exit 1 when they differ")
    rr.add_argument("--run", nargs="*", default=None, metavar="CLAIM",
                    help="first execute the runs these claims (none named: all) still lack, into store/")
    rr.add_argument("--executor", default="serial", help="for --run: serial, local:N or submitit")
    args = parser.parse_args(argv)

    if args.command == "prepare":
        from .models import prepare_default

        print(f"embedded model ready: {prepare_default()}")
    elif args.command == "notebook":
        executed = run_notebook(args.notebook, {k: _literal(v) for k, v in args.param}, args.out)
        print(f"executed notebook: {executed}\nfigures: {executed.parent}/*.html")
    elif args.command == "edit":
        from . import data, models
        from .config import preset
        from .scoring import token_accuracy
        from .train import edit

        cfg = preset(args.preset, **{k: _literal(v) for k, v in args.set})
        model, tok = models.load_for(cfg.replace(model_name=args.model or cfg.model_name))
        reqs = data.load(args.benchmark, n=args.n)
        prompts, targets = [r.prompt for r in reqs], [r.target for r in reqs]
        before = token_accuracy(model, tok, prompts, targets, cfg.chat_template)
        result = edit(model, tok, reqs, cfg)
        after = token_accuracy(model, tok, prompts, targets, cfg.chat_template)
        print(f"{args.preset} on {len(reqs)} {args.benchmark} requests: teacher-forced token accuracy "
              f"{sum(before) / len(before):.3f} -> {sum(after) / len(after):.3f}; {result.steps} steps, "
              f"{result.timings['total_s']:.1f} s ({result.timings['s_per_edit']:.2f} s/edit), "
              f"{result.n_trainable:,} trainable parameters")
        if args.save:
            print(f"delta written to {result.save(args.save)}")
    elif args.command == "eval":
        from . import models
        from .evaluation import EvalConfig, evaluate, pre_edit
        from .runs import RunSpec, requests_for

        spec = RunSpec(benchmark=args.benchmark, n_edits=args.n)
        model, tok = models.load(args.model)
        reqs = requests_for(spec)
        cfg = EvalConfig.preset(args.eval).replace(capability=tuple(args.capability))
        report = evaluate(model, tok, reqs, cfg, pre=pre_edit(model, tok, reqs, cfg))
        print(report.summary[["split", "metric", "value", "n"]].to_string(index=False))
        for k, v in report.capability.items():
            print(f"{k}: {v:.4f}")
    elif args.command == "sweep":
        import yaml

        from .runs import sweep_notebook

        grid = yaml.safe_load(open(args.grid))
        if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
            raise SystemExit(f"{args.grid}: expected a mapping of parameter name -> list of values")
        df = sweep_notebook(args.notebook, grid, args.experiment, executor=args.executor,
                            executor_options={k: _literal(v) for k, v in args.option})
        print(df.to_string(index=False))
    elif args.command == "reproduce" and args.tables:
        import json

        for recorded in sorted(Path(args.docs).glob("*.json")):
            recorded.with_suffix(".md").write_text(markdown_table(json.loads(recorded.read_text())))
    elif args.command == "report":
        from .runs import report

        claims, out = args.claims or report.CLAIMS, Path(args.out or report.REPORT)
        if args.run is not None:
            report.run(args.run, args.executor, claims)
        if args.check:
            fresh = report.render(claims, out=out)
            if not out.exists() or out.read_text() != fresh:
                print(f"{out} differs from what {claims} and store/ render: run `workbench report`")
                return 1
            print(f"{out} is what {claims} and store/ render")
        else:
            print(f"report written: {report.write(claims, out)}")
    elif args.command == "reproduce":
        reproduce(args.config, args.claims, Path(args.docs), {k: _literal(v) for k, v in args.param})
    return 0


if __name__ == "__main__":
    sys.exit(main())
