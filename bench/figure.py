"""``python -m bench.figure results.json [out.png]``: draw throughput vs concurrency."""

from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m bench.figure results.json [docs/bench/throughput.png]")
        return 2
    source, target = args[0], (args[1] if len(args) > 1 else "docs/bench/throughput.png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(source) as fh:
        report = json.load(fh)
    sweep = report["probes"]["concurrency_sweep"]
    rates = {r["variant"]: r["tasks_per_s"] for r in report["throughput"]}
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for handler in sorted({row["handler"] for row in sweep}):
        rows = [row for row in sweep if row["handler"] == handler]
        ax.plot(
            [row["concurrency"] for row in rows],
            [row["tasks_per_s"] for row in rows],
            marker="o",
            label=f"stint async, handler={handler}",
        )
    for name, style in (("bare", "--"), ("aiojobs", ":")):
        if name in rates:
            ax.axhline(rates[name], linestyle=style, color="grey", label=f"{name} (N tasks)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concurrency per instance (one instance)")
    ax.set_ylabel("tasks / s")
    ax.set_title(f"stint throughput vs handler concurrency (Python {report['machine']['python']})")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(target)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
