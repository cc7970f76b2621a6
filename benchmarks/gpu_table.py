"""One table of the GPU script's runs: `dv bench --json` files in, markdown out (dv against the plain loop).

python benchmarks/gpu_table.py OUT_DIR [NAME ...]     # NAME.json under OUT_DIR, in order; none = all
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _pct(value) -> str:
    return "—" if not value else f"{100 * value:.1f}%"


def row(name: str, r: dict) -> str:
    """One table row of a dv bench JSON (train, sample or loader)."""
    if r.get("what") == "loader":
        beside = r.get("beside")
        note = f"beside `{beside}`" if beside else "alone"
        return f"| {name} | loader, latent shards, {note} | {r['batch_shape'][0]} | {r['dv']['seconds_per_step']:.4f} | — | — | {r['dv']['clips_per_s']:.2f} | — | — | — |"
    dv, plain = r.get("dv", {}), r.get("plain")
    unit = "s/video" if r.get("what") == "sample" else "s/step"
    ratio = r.get("ratio_dv_to_plain")
    return (
        f"| {name} | {r.get('what')}, {r.get('setting', '')} ({unit}) | {r.get('batch_size')} "
        f"| {_f(dv.get('seconds_per_step'), '.4f')} | {_f(plain and plain.get('seconds_per_step'), '.4f')} "
        f"| {_f(ratio, '.2f')}{'×' if ratio else ''} | {_f(dv.get('clips_per_s'), '.2f')} "
        f"| {_f(dv.get('peak_memory_gib'), '.1f')} / {_f(plain and plain.get('peak_memory_gib'), '.1f')} "
        f"| {_pct(dv.get('mfu'))} | {_pct(plain and plain.get('mfu'))} |"
    )


def table(out: Path, names: list[str]) -> str:
    """The markdown table of the named runs (a run without JSON: its status from NAME.status, else 'no result')."""
    lines = [
        "| run | what | batch | dv s | plain s | dv / plain | dv clips/s | peak GiB dv / plain | dv MFU | plain MFU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        path = out / f"{name}.json"
        if path.is_file():
            lines.append(row(name, json.loads(path.read_text(encoding="utf-8"))))
        else:
            status = out / f"{name}.status"
            why = status.read_text(encoding="utf-8").strip() if status.is_file() else "no result"
            lines.append(f"| {name} | {why} | | | | | | | | |")
    return "\n".join(lines)


def main() -> None:
    out = Path(sys.argv[1])
    names = sys.argv[2:] or sorted(p.stem for p in out.glob("*.json"))
    print(table(out, names))


if __name__ == "__main__":
    main()
