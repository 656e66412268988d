"""Prints a markdown table of the results.json files of several runs.

    python scripts/collect_results.py runs/quickstart_resnet18 runs/r18_nm24 ... \
        [--out docs/results/pruning.md]
"""

import argparse
import json
import os
import sys

from jaxsparse.markdown import table


def row(workdir: str) -> list[str]:
    """One table row from a run's results.json."""
    with open(os.path.join(workdir, "results.json")) as f:
        r = json.load(f)
    sp = r.get("sparsity", {})
    return [os.path.basename(workdir.rstrip("/")), sp.get("method", "none"),
            sp.get("pattern", "dense"), f"{sp.get('achieved', 0.0):.3f}", f"{r['accuracy']:.4f}",
            f"{r['epochs']:.2f}", r["device_kind"], r["precision"], r["jax"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    missing = [w for w in args.workdirs if not os.path.isfile(os.path.join(w, "results.json"))]
    if missing:
        sys.exit(f"error: no results.json in {', '.join(missing)}")
    text = table(["run", "method", "pattern", "sparsity", "test accuracy", "epochs", "device",
                  "precision", "jax"], [row(w) for w in args.workdirs]) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
