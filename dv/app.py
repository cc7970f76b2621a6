"""`dv app`: a Gradio page over a trained checkpoint; every request runs `dv sample` on the model loaded once.

The page builds the exact `dv sample` command line for each request, parses it with `dv sample`'s own parser
and runs `dv sample` on it (which samples through dv.diffusion.pipeline.generate), so the command it shows
reproduces the result and there is one sampler.
It reaches no network beyond the address it serves: analytics off, no share link, system fonts only.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dv import render
from dv.checkpoint import load_trained, trained_recipe
from dv.data.camera_pans import VAL_PHOTOS, caption_for, load_photo
from dv.data.images import load_image
from dv.diffusion.pipeline import IMAGE_MODES, MODE_LABELS, TEXT_MODES
from dv.diffusion.sampling import SamplerConfig
from dv.errors import ConfigError, DVError
from dv.recipe import Recipe

PAGE_MODES = ("t2v", "i2v", "ti2v")
"""The sampling modes the page offers (TI2V-Zero is `dv sample --zero-shot`), named on the page by MODE_LABELS."""
MODES = tuple(MODE_LABELS[m] for m in PAGE_MODES)
MODE_KEYS = {MODE_LABELS[m]: m for m in PAGE_MODES}
T2V = MODE_LABELS["t2v"]
MAX_STEPS = 200  # the steps slider's end; `dv sample` itself accepts up to SamplerConfig.max_steps
MAX_SEED = 2**32 - 1
EXAMPLE_MOVE = "pan-left"  # the camera move the example prompts ask for
COMPARE_HEIGHT = 256  # the comparison image is enlarged (nearest neighbour) to at least this height


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `dv app`."""
    parser.add_argument(
        "--recipe", default=None, help="the recipe the checkpoint was trained with (default: the one a .ckpt carries)"
    )
    parser.add_argument(
        "--ckpt", required=True, help="a dv training checkpoint (.ckpt) or a `dv export` (.safetensors)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument("--out-dir", default="runs/app", help="where each request's video, images and inputs are kept")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Request:
    """What one visitor asked for, as the page's inputs give it."""

    mode: str
    image: str | None
    prompt: str
    prompt2: str
    s_text: float
    s_image: float
    steps: int
    seed: int

    @property
    def key(self) -> str | None:
        """The sampling mode (one of dv.diffusion.pipeline.MODES) the page's mode label names."""
        return MODE_KEYS.get(self.mode)

    def prompts(self) -> list[str] | None:
        """One prompt per stage (a second prompt chains a second stage); None in image-to-video."""
        if self.key not in TEXT_MODES:
            return None
        return [p.strip() for p in (self.prompt, self.prompt2) if p and p.strip()]

    def check(self) -> None:
        """Raise a ConfigError naming the input to fix; make steps and seed ints and the scales floats."""
        if self.key is None:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.key in IMAGE_MODES and not self.image:
            raise ConfigError(f"{self.mode} needs a reference image: upload one or pick an example")
        if self.key in TEXT_MODES and not (self.prompt or "").strip():
            raise ConfigError(f"{self.mode} needs a prompt: describe the video to make")
        self.steps = whole_number(self.steps, 1, MAX_STEPS, "steps")
        self.seed = whole_number(self.seed, 0, MAX_SEED, "the seed")
        for name in ("s_text", "s_image"):
            try:
                setattr(self, name, float(getattr(self, name)))
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be a number, not {getattr(self, name)!r}") from None


def whole_number(value, low: int, high: int, what: str) -> int:
    """`value` as an int from low to high, or a ConfigError naming `what` (None, NaN and 2.5 included)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (number.is_integer() and low <= number <= high):
        raise ConfigError(f"{what} must be a whole number from {low} to {high}, not {value!r}")
    return int(number)


def sample_argv(
    request: Request, recipe: str | None, ckpt: str, device: str, image: Path | None, out: Path
) -> list[str]:
    """The `dv sample` arguments that make `request`'s video (the page shows them after `dv sample`)."""
    argv = (["--recipe", recipe] if recipe else []) + ["--ckpt", ckpt]
    if request.key in IMAGE_MODES:
        argv += ["--image", str(image)]
    for prompt in request.prompts() or []:
        # `--prompt=-x` keeps a prompt that starts with a dash from reading as a flag.
        argv += [f"--prompt={prompt}"] if prompt.startswith("-") else ["--prompt", prompt]
    argv += [
        "--guidance-text",
        f"{request.s_text:g}",
        "--guidance-image",
        f"{request.s_image:g}",
        "--steps",
        str(request.steps),
        "--seed",
        str(request.seed),
        "--device",
        device,
        "--strip",
        "--out",
        str(out),
    ]
    return argv


def sample_parser() -> argparse.ArgumentParser:
    """`dv sample`'s parser, raising argparse.ArgumentError instead of exiting."""
    parser = argparse.ArgumentParser(prog="dv sample", exit_on_error=False)
    render.add_arguments(parser)
    return parser


def comparison_image(reference: np.ndarray | None, strip: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3): reference | first generated frame | last frame, from the PNG strip of the frames."""
    frames = [strip[:, :size], strip[:, -size:]]
    if reference is not None:
        frames.insert(0, reference)
    gap = np.full((size, max(1, size // 16), 3), 255, dtype=np.uint8)
    row = np.concatenate(list(itertools.chain.from_iterable((f, gap) for f in frames))[:-1], axis=1)
    scale = max(1, COMPARE_HEIGHT // size)
    return np.repeat(np.repeat(row, scale, axis=0), scale, axis=1)


def recipe_sampling(recipe: Recipe) -> dict[str, float]:
    """The page's starting steps, s_t and s_i: those the recipe's VideoValidation samples with, else dv sample's."""
    defaults = SamplerConfig()
    settings = {"steps": defaults.steps, "s_text": defaults.s_text, "s_image": defaults.s_image}
    validation = recipe.callback_args("VideoValidation")
    if validation is not None:
        settings.update({k: getattr(validation, k) for k in settings})
    settings["steps"] = min(int(settings["steps"]), MAX_STEPS)
    return settings


def shown_path(path: str | Path) -> str:
    """A path as the command line shows it: relative to the working directory when inside it."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class Studio:
    """The loaded model and what each request needs: validation, `dv sample` on it, and the page's outputs."""

    def __init__(self, recipe: str | None, ckpt: str, out_dir: str, device: str) -> None:
        self.recipe = shown_path(recipe) if recipe else None
        self.ckpt, self.device = shown_path(ckpt), device
        self.out_dir = Path(out_dir).absolute()
        self.parsed = trained_recipe(recipe, ckpt)  # once: the shape, the page's defaults and the model come from it
        self.frames, self.size = self.parsed.video_shape()
        self.defaults = recipe_sampling(self.parsed)
        self.module = load_trained(self.parsed, ckpt, device=device)
        self.modes = MODES if self.module.branch is not None else (T2V,)

    def generate(self, request: Request, progress=None) -> tuple[str, str, str, str]:
        """Run one request: (mp4 path, comparison PNG path, settings in Markdown, the `dv sample` command)."""
        request.check()
        if request.mode not in self.modes:
            raise ConfigError(f"this model has no retention branch: it does text-to-video only, not {request.mode}")
        reference = image = None
        if request.key in IMAGE_MODES:
            reference = load_image(request.image, self.size).numpy()  # a file that is not an image fails here
        run_dir = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=self._ensure_out_dir()))
        if request.key in IMAGE_MODES:
            # The upload lives in gradio's cache; a copy beside the video keeps the command reproducible.
            image = run_dir / ("reference" + (Path(request.image).suffix.lower() or ".png"))
            shutil.copyfile(request.image, image)
        out = run_dir / "sample.mp4"
        argv = sample_argv(request, self.recipe, self.ckpt, self.device, image and shown_path(image), shown_path(out))
        try:
            args = sample_parser().parse_args(argv)
        except argparse.ArgumentError as e:
            raise ConfigError(f"bad setting: {e}") from None
        stages = len(request.prompts() or [None])
        start = time.perf_counter()
        render.render(args, module=self.module, callback=step_reporter(progress, stages), recipe=self.parsed)
        seconds = time.perf_counter() - start
        strip = np.asarray(Image.open(out.with_suffix(".png")).convert("RGB"))
        compare = run_dir / "compare.png"
        Image.fromarray(comparison_image(reference, strip, self.size)).save(compare)
        total_frames = strip.shape[1] // self.size
        settings = (
            f"**seed** {request.seed} · **mode** {request.mode} · **s_t** {request.s_text:g} · "
            f"**s_i** {request.s_image:g} · **steps** {request.steps} · **stages** {stages} · "
            f"{total_frames} frames of {self.size}×{self.size} · {seconds:.1f} s on {self.device}\n\n"
            f"Saved in `{shown_path(run_dir)}`."
        )
        return str(out), str(compare), settings, shlex.join(["dv", "sample", *argv])

    def _ensure_out_dir(self) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self.out_dir

    def example_photos(self) -> list[list[str]]:
        """Example rows (photo file, prompt, mode): the camera-pans photos training never saw, as PNG files."""
        folder = self._ensure_out_dir() / "examples"
        folder.mkdir(exist_ok=True)
        rows = []
        for name in VAL_PHOTOS:
            path = folder / f"{name}.png"
            if not path.is_file():
                Image.fromarray(load_photo(name)).save(path)
            rows.append([str(path), caption_for(name, EXAMPLE_MOVE), self.modes[-1]])
        return rows


def step_reporter(progress, stages: int):
    """A sampler callback that moves the page's progress bar over every denoising step of every stage."""
    done = itertools.count(1)

    def report(step: int, steps: int) -> None:
        if progress is not None:
            k = next(done)
            progress((k, stages * steps), desc=f"stage {(k - 1) // steps + 1} of {stages}: denoising", unit="steps")

    return report


def import_gradio():
    """gradio with analytics off (set before import: gradio reads the variable at launch too), or a DVError."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio as gr
    except ImportError:
        raise ConfigError("dv app needs gradio: pip install -e '.[app]' (or make install)") from None
    return gr


def build_blocks(studio: Studio):
    """The page: inputs, outputs and one queued `generate` event (the API name the client calls)."""
    gr = import_gradio()
    from PIL import UnidentifiedImageError

    class ReferenceImage(gr.Image):
        """An image upload whose unreadable files become a message on the page, not a traceback in the log."""

        def get_block_name(self) -> str:
            return "image"  # the page draws it with gradio's own image widget (a new name would be a custom one)

        def preprocess(self, payload):
            try:
                return super().preprocess(payload)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
                name = getattr(payload, "orig_name", None) or "the upload"
                raise gr.Error(f"{name!r} is not an image PIL can read; use PNG, JPEG or WebP") from None

    def generate(image, prompt, mode, s_text, s_image, steps, seed, prompt2, progress=gr.Progress()):
        request = Request(
            mode=mode,
            image=image,
            prompt=prompt or "",
            prompt2=prompt2 or "",
            s_text=s_text,
            s_image=s_image,
            steps=steps,
            seed=seed,
        )
        try:
            return studio.generate(request, progress)
        except DVError as e:
            raise gr.Error(str(e)) from None
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise gr.Error(
                "the device ran out of memory on this request (see the server's log); it is free again"
            ) from None

    defaults = studio.defaults
    with gr.Blocks(title="dv app", analytics_enabled=False) as blocks:
        gr.Markdown(
            f"## dv: DreamVideo image-to-video\n`{studio.recipe or 'its own recipe'}` · `{studio.ckpt}` · "
            f"{studio.frames} frames of {studio.size}×{studio.size} per stage · {studio.device}"
        )
        with gr.Row():
            with gr.Column():
                image = ReferenceImage(
                    label="Reference image (image modes)",
                    type="filepath",
                    format="png",
                    sources=["upload", "clipboard"],
                    elem_id="reference-image",
                )
                prompt = gr.Textbox(
                    label="Prompt (text modes)",
                    lines=2,
                    elem_id="prompt",
                    placeholder="the camera pans left over a photo of a rocket on a launch pad",
                )
                mode = gr.Radio(list(studio.modes), value=studio.modes[-1], label="Mode")
                with gr.Row():
                    s_text = gr.Slider(0, 20, value=defaults["s_text"], step=0.1, label="s_t: text guidance (Eq. 5)")
                    s_image = gr.Slider(0, 10, value=defaults["s_image"], step=0.1, label="s_i: image guidance (Eq. 5)")
                with gr.Row():
                    steps = gr.Slider(1, MAX_STEPS, value=defaults["steps"], step=1, label="DDIM steps")
                    seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
                prompt2 = gr.Textbox(
                    label="Second prompt (optional): a second stage starts from the last frame",
                    lines=1,
                    elem_id="prompt2",
                )
                button = gr.Button("Generate", variant="primary")
            with gr.Column():
                video = gr.Video(label="Video", format="mp4", autoplay=True, loop=True)
                compare = gr.Image(label="Reference | first frame | last frame", type="filepath", format="png")
                settings = gr.Markdown(label="Settings")
                command = gr.Textbox(label="Reproduce with dv sample", buttons=["copy"], interactive=False)
        gr.Examples(studio.example_photos(), inputs=[image, prompt, mode], label="Held-out photos")
        button.click(
            generate,
            inputs=[image, prompt, mode, s_text, s_image, steps, seed, prompt2],
            outputs=[video, compare, settings, command],
            api_name="generate",
        )
    # One job at a time: two visitors would otherwise hold two models' activations on the device at once.
    blocks.queue(default_concurrency_limit=1)
    return blocks


def theme():
    """gradio's base theme on the system's fonts, so the page loads no font from anywhere."""
    gr = import_gradio()
    return gr.themes.Base(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "Consolas", "monospace"]
    )


def run(args: argparse.Namespace) -> None:
    """Load the model once and serve the page until interrupted."""
    import_gradio()
    studio = Studio(args.recipe, args.ckpt, args.out_dir, args.device)
    blocks = build_blocks(studio)
    try:
        blocks.launch(
            server_name=args.host,
            server_port=args.port,
            share=False,
            theme=theme(),
            ssr_mode=False,
            allowed_paths=[str(studio.out_dir)],
            prevent_thread_lock=True,
            quiet=True,
        )
    except OSError as e:
        reason = str(e).split(". ")[0]  # gradio's first sentence; the rest names its own launch() arguments
        raise ConfigError(f"cannot serve on {args.host}:{args.port} ({reason}); pick another --port") from None
    print(f"dv app: serving {shown_path(args.ckpt)} on http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    try:
        blocks.block_thread()
    finally:
        blocks.close(verbose=False)
