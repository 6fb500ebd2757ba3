"""Does a locate-and-edit method's value stage converge? UnKE and AnyEdit, edited on a few requests.

    python benchmarks/value_convergence.py unke --benchmark unkebench --offset 900 --n 2 --v-steps 25 100

UnKE (and AnyEdit on UnKE) first optimise a vector δ per chunk of the answer until its NLL falls
under the stop loss (``v_stop_loss``: UnKE none, AnyEdit 5e-3) or ``v_steps`` run out, then train the layer to write it.
For each request and step budget this prints the Adam steps its values took against the most they
can (chunks x (v_steps - 1): the last pass only measures; all of them: the value never reached the
stop loss) and the layer fit's last loss. The pilot behind the claims
file's calibrations C6 and C7 (docs/claims.yaml) is this script on requests 900-901, the held-apart
ones the calibrations edit. Each edit is reverted before the next; nothing is cached.
"""
import argparse

import workbench as wb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("preset", choices=["unke", "anyedit"])
    ap.add_argument("--benchmark", default="unkebench")
    ap.add_argument("--offset", type=int, default=900)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--v-steps", type=int, nargs="+", default=[25, 100])
    args = ap.parse_args()
    model, tok = wb.load(dtype="float32")
    requests = wb.data.load(args.benchmark)[args.offset:args.offset + args.n]
    print(f"{args.preset} on {args.benchmark} requests {args.offset}..{args.offset + args.n - 1}, "
          "SmolLM2-135M-Instruct fp32")
    for budget in args.v_steps:
        cfg = wb.preset(args.preset, dtype="float32", v_steps=budget)
        res = wb.edit(model, tok, requests, cfg, progress=False)
        for row in res.log.itertuples():
            most = row.chunks * (budget - 1)
            print(f"v_steps={budget}: request {row.request}: value steps {row.value_steps} of at most {most} "
                  f"({row.chunks} chunk(s){', never converged' if row.value_steps == most else ''}), "
                  f"layer fit's last loss {row.loss:.4f}")
        res.revert()


if __name__ == "__main__":
    main()
