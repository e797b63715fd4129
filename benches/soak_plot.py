#!/usr/bin/env python3
"""Draws the soak's samples (benches/soak.py's JSON) as one PNG: RSS, open fds, threads and
p99 over time, the warm-up shaded. Run by benches/soak.sh in a venv with matplotlib.

    soak_plot.py SOAK.json OUT.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

data = json.load(open(sys.argv[1]))
rows = data["samples"]
t = [r["t"] / 60 for r in rows]
fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
for ax, key, label in zip(axes, ("rss_mib", "fds", "threads", "p99_ms"),
                          ("RSS (MiB)", "open fds", "threads", "proxy p99 (ms)")):
    ax.plot(t, [r[key] for r in rows], marker=".", linewidth=1)
    ax.axvspan(0, data["warm_up_s"] / 60, color="0.9")
    ax.set_ylabel(label)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
axes[-1].set_xlabel("minutes (grey: warm-up, not judged)")
verdict = "OK" if not data["failures"] else "FAILED"
fig.suptitle(f"gatehouse soak, {data['seconds'] // 60} min: {verdict}; "
             f"{data['counts'].get('injected_5xx', 0)} injected upstream 500s, "
             f"{data['counts'].get('unexpected_5xx', 0)} other 5xx")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=80)
