"""The results table of `dv validate`: the paper's columns, one row per mode, Markdown and CSV."""

from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = [("fvd", "FVD"), ("is", "IS"), ("fff_clip", "FFF_CLIP"), ("fff_ssim", "FFF_SSIM"), ("clip_sim", "CLIP-SIM")]
"""(metric key, column title), in the order of the paper's Tables 1 and 2."""

PAPER_ROWS = {
    # DreamVideo (arXiv 2312.03018) Table 1 (TI2V, zero-shot I2V) and Table 2 (T2V vs TI2V).
    "ucf101": [
        ("paper: DreamVideo (Table 1)", {"fvd": 197.66, "is": 54.39, "fff_clip": 0.76, "fff_ssim": 0.37}),
        ("paper: T2V (Table 2)", {"fvd": 463.76, "is": 22.82}),
        ("paper: TI2V (Table 2)", {"fvd": 214.52, "is": 46.31}),
    ],
    "msrvtt": [
        ("paper: DreamVideo (Table 1)", {"fvd": 149.18, "is": 15.25, "fff_clip": 0.74, "fff_ssim": 0.36}),
        ("paper: T2V (Table 2)", {"fvd": 250.80, "is": 10.90, "clip_sim": 20.97}),
        ("paper: TI2V (Table 2)", {"fvd": 167.80, "is": 13.43, "clip_sim": 20.55}),
    ],
}


def table_rows(results: dict[str, dict[str, float]], videos: int, paper: str | None) -> list[list[str]]:
    """Header plus one row per mode (measured) and the paper's rows for the dataset, labelled as such."""
    header = ["mode", "videos"] + [title for _, title in COLUMNS]
    rows = [header]
    for mode, row in results.items():
        rows.append([mode, str(videos)] + [f"{row[key]:.4g}" if key in row else "–" for key, _ in COLUMNS])
    for label, row in PAPER_ROWS.get(paper or "", []):
        rows.append([label, "–"] + [f"{row[key]:.4g}" if key in row else "–" for key, _ in COLUMNS])
    return rows


def write_results(
    results: dict[str, dict[str, float]],
    videos: int,
    out_dir: str | Path,
    paper: str | None = None,
    detectors: dict[str, str] | None = None,
) -> list[Path]:
    """Write results.md and results.csv under out_dir (with the detector file of each metric); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(results, videos, paper)
    md = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    titles = dict(COLUMNS)
    md += [
        "",
        "Detectors: "
        + (
            "; ".join(f"{titles.get(k, k)}: {v}" for k, v in sorted((detectors or {}).items()))
            or "none configured (FVD, IS, CLIP-SIM and FFF_CLIP skipped)"
        ),
    ]
    (out / "results.md").write_text("\n".join(md) + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return [out / "results.md", out / "results.csv"]
