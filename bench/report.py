"""Markdown tables of bench/results/gateway*.json, for the README.

    .venv/bin/python bench/report.py bench/results/gateway.json
"""

import json
import sys


def table(path: str) -> str:
    data = json.load(open(path))
    lines = [f"Machine: {data['machine']}; {data['sessions']} sessions; workers = {data.get('workers', 1)}.", ""]
    lines.append("| size | scenario | msg/s | MB/s | CPU ms/msg | peak RSS MB | vs baseline |")
    lines.append("|---|---|---:|---:|---:|---:|---:|")
    for label, size in data["sizes"].items():
        rows = size["scenarios"]
        base = rows["baseline"]["msgs_per_s"]
        for name, r in rows.items():
            ratio = "—" if name == "ceiling" else f"{r['msgs_per_s'] / base:.2f}x"
            if name.startswith("open") and "seal-N" in rows:
                ratio += f" ({r['msgs_per_s'] / rows['seal-N']['msgs_per_s']:.2f}x seal-N)"
            cpu = "—" if name == "ceiling" else f"{r['cpu_ms_per_msg']:.2f}"
            peak = "—" if name == "ceiling" else f"{r['peak_rss_mb']:.0f}"
            lines.append(f"| {label} | {name} | {r['msgs_per_s']:.0f} | {r['mb_per_s']:.1f} | {cpu} | {peak} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(table(path))
        print()
