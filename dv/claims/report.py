"""Tables and the figure of the claims experiment, from its scored rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dv.claims.motion import MOTIONS, confusion_matrix

CHANCE = 1 / len(MOTIONS)


def _select(rows: list[dict], **where) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def per_seed(rows: list[dict], value) -> np.ndarray:
    """value(rows of one seed) for each seed, in seed order."""
    seeds = sorted({r["seed"] for r in rows})
    return np.array([value([r for r in rows if r["seed"] == s]) for s in seeds], dtype=np.float64)


def accuracy(rows: list[dict]) -> float:
    """Share of videos whose recovered motion is the caption's."""
    return float(np.mean([r["predicted"] == r["motion"] for r in rows]))


def spread(values: np.ndarray, digits: int = 2) -> str:
    """'mean ± std' over seeds (sample std; a single seed shows the mean only)."""
    if len(values) == 0:
        return "–"
    if np.isinf(values).any():
        return "∞ (identical)"  # TI2V-Zero's first frame is the reference itself
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def summary(rows: list[dict]) -> dict[str, np.ndarray]:
    """Per-seed PSNR, SSIM and motion accuracy of a set of rows."""
    return {
        "psnr": per_seed(rows, lambda rs: np.mean([r["psnr"] for r in rs])),
        "ssim": per_seed(rows, lambda rs: np.mean([r["ssim"] for r in rs])),
        "motion": per_seed(rows, accuracy),
    }


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


MODE_NAMES = {
    "t2v": "text only",
    "i2v": "image only",
    "ti2v": "text + image",
    "zero_shot": "text + image, zero-shot (TI2V-Zero)",
}


def comparison_table(rows: list[dict], main: tuple[float, float]) -> str:
    """Fidelity and motion accuracy of every model's main setting (T2V: text; others: text + image at `main` scales)."""
    body = []
    s_text, s_image = main
    for model in dict.fromkeys(r["model"] for r in rows if r["model"] != "ground truth"):
        for mode in ("t2v", "zero_shot", "ti2v"):
            chosen = _select(rows, model=model, mode=mode)
            if mode == "ti2v":
                chosen = _select(chosen, s_text=s_text, s_image=s_image)
            elif any(r["model"] == model and r["mode"] == "ti2v" for r in rows):
                continue  # image models appear in the comparison with both conditions; the ablation shows the rest
            if not chosen:
                continue
            s = summary(chosen)
            body.append([model, MODE_NAMES[mode], spread(s["psnr"]), spread(s["ssim"], 3), spread(s["motion"])])
    return _table(["model", "conditions", "first-frame PSNR (dB) ↑", "FFF_SSIM ↑", "motion accuracy ↑"], body)


def ablation_table(rows: list[dict], model: str, main: tuple[float, float]) -> str:
    """Paper Fig. 6: text only / image only / text + image, for one image-conditioned model."""
    body = []
    for mode in ("t2v", "i2v", "ti2v"):
        chosen = _select(rows, model=model, mode=mode)
        if mode == "ti2v":
            chosen = _select(chosen, s_text=main[0], s_image=main[1])
        if chosen:
            s = summary(chosen)
            body.append([MODE_NAMES[mode], spread(s["psnr"]), spread(s["ssim"], 3), spread(s["motion"])])
    return _table(["conditions", "first-frame PSNR (dB) ↑", "FFF_SSIM ↑", "motion accuracy ↑"], body)


def guidance_table(rows: list[dict], model: str) -> str:
    """Paper Fig. 3: FFF_SSIM and motion accuracy over the grid of s_i (rows) and s_t (columns)."""
    chosen = _select(rows, model=model, mode="ti2v")
    texts = sorted({r["s_text"] for r in chosen})
    images = sorted({r["s_image"] for r in chosen})
    body = []
    for si in images:
        cells = []
        for st in texts:
            cell = _select(chosen, s_text=st, s_image=si)
            if cell:
                s = summary(cell)
                cells.append(f"{spread(s['ssim'], 3)} / {spread(s['motion'])}")
            else:
                cells.append("–")
        body.append([f"s_i = {si:g}"] + cells)
    return _table(["FFF_SSIM / motion accuracy"] + [f"s_t = {st:g}" for st in texts], body)


def chained_table(rows: list[dict]) -> str:
    """Paper §5.5: motion accuracy per stage and the frame difference at the seam vs. within a stage."""
    body = []
    for model in dict.fromkeys(r["model"] for r in rows if r["mode"].startswith("chained")):
        one = _select(rows, model=model, mode="chained-stage1")
        two = _select(rows, model=model, mode="chained-stage2")
        seam = per_seed(one, lambda rs: np.mean([r["seam_diff"] for r in rs]))
        within = per_seed(one + two, lambda rs: np.mean([r["within_diff"] for r in rs]))
        body.append(
            [model, spread(per_seed(one, accuracy)), spread(per_seed(two, accuracy)), spread(seam), spread(within)]
        )
    header = [
        "model",
        "stage 1 motion accuracy",
        "stage 2 motion accuracy",
        "mean |Δ| at the seam (0–255)",
        "mean |Δ| within a stage (0–255)",
    ]
    return _table(header, body)


def confusion_table(rows: list[dict]) -> str:
    """Counts: row = the caption's motion, column = the motion recovered from the video."""
    matrix = confusion_matrix([r["motion"] for r in rows], [r["predicted"] for r in rows])
    body = [[truth] + [str(int(n)) for n in line] for truth, line in zip(MOTIONS, matrix)]
    return _table(["caption \\ recovered"] + list(MOTIONS), body)


def figure(
    videos: dict[tuple, np.ndarray],
    references: dict[str, np.ndarray],
    photo: str,
    path: Path,
    frames: tuple[int, ...] = (0, 2, 4, 7),
    scale: int = 3,
) -> Path:
    """PNG: for each kept (model, mode), one row per caption motion: reference | chosen frames of the video."""
    keys = list(dict.fromkeys((m, mode) for m, mode, _ in videos))  # in the order the models were sampled
    size = next(iter(videos.values())).shape[1] * scale
    label_w, gap, head = 210, 4, 18
    columns = 1 + len(frames)
    rows = [(m, mode, motion) for m, mode in keys for motion in MOTIONS if (m, mode, motion) in videos]
    width = label_w + columns * (size + gap)
    height = head + len(rows) * (size + gap)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((label_w, 2), "reference", fill="black")
    for j, f in enumerate(frames):
        draw.text((label_w + (j + 1) * (size + gap), 2), f"frame {f}", fill="black")
    ref = Image.fromarray(references[photo]).resize((size, size), Image.NEAREST)
    for i, (model, mode, motion) in enumerate(rows):
        y = head + i * (size + gap)
        draw.text((4, y + size // 2 - 12), f"{model} ({MODE_NAMES[mode]})", fill="black")
        draw.text((4, y + size // 2 + 2), f"caption: {motion}", fill="black")
        canvas.paste(ref, (label_w, y))
        video = videos[(model, mode, motion)]
        for j, f in enumerate(frames):
            tile = Image.fromarray(video[min(f, len(video) - 1)]).resize((size, size), Image.NEAREST)
            canvas.paste(tile, (label_w + (j + 1) * (size + gap), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
