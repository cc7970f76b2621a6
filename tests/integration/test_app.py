"""`dv app` served from a real process on 127.0.0.1, driven by gradio_client and by headless Chromium."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e '.[app]')")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from gradio_client.utils import Status  # noqa: E402

from dv.cli import main as dv_main  # noqa: E402
from dv.data.video import decode_mp4  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FRAMES, SIZE = 4, 16
PROMPT = "the camera pans left over a photo of a rocket"
# No request leaves this machine: analytics off for the server and the client alike.
QUIET_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


def tiny_model(folder: Path) -> tuple[Path, Path]:
    """The demo recipe at test sizes, and an export of its untrained weights (unet.* and branch.*)."""
    from dv.models.pretrained import save_dv_weights
    from dv.recipe import build_model

    recipe = yaml.safe_load((REPO / "recipes" / "demo.yaml").read_text())
    backbone = recipe["model"]["init_args"]["backbone"]
    backbone["unet_weights"] = []
    backbone["unet"].update(block_out_channels=[16, 32], sample_size=4)
    recipe["data"]["init_args"].update(num_frames=FRAMES, frame_size=SIZE)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    module = build_model(str(path))
    module.configure_model()
    export = folder / "tiny.safetensors"
    save_dv_weights(export, module.trained_state_dict(use_ema=False), {"parts": "branch,unet"})
    return path, export


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`dv app` on a free port in its own process; yields (url, its working directory)."""
    folder = tmp_path_factory.mktemp("app")
    recipe, export = tiny_model(folder)
    port = free_port()
    log = folder / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "dv",
        "app",
        "--recipe",
        str(recipe),
        "--ckpt",
        str(export),
        "--port",
        str(port),
        "--out-dir",
        "out",
        "--device",
        "cpu",
    ]
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(REPO)}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while "dv app: serving" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"dv app did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield url, folder
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def client(server):
    # gradio_client starts its telemetry unless the variable says no, whatever analytics_enabled says.
    with pytest.MonkeyPatch.context() as env:
        for key, value in QUIET_ENV.items():
            env.setenv(key, value)
        return Client(server[0], analytics_enabled=False, verbose=False, download_files=str(server[1] / "downloads"))


@pytest.fixture(scope="module")
def photo(server) -> Path:
    path = server[1] / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def ask(**inputs):
    """One /generate call with the page's defaults for whatever `inputs` leaves out (few steps: it is a test)."""
    args = dict(image=None, prompt="", mode="text+image", s_text=3.0, s_image=1.5, steps=3, seed=0, prompt2="")
    args.update(inputs)
    if args["image"] is not None:
        args["image"] = handle_file(str(args["image"]))
    return args


def test_two_stage_video_decodes_and_dv_sample_reproduces_it(server, client, photo, monkeypatch, capsys):
    video, compare, settings, command = client.predict(
        **ask(image=photo, prompt=PROMPT, prompt2="the camera pans right", seed=7), api_name="/generate"
    )
    frames = decode_mp4(Path(video).read_bytes())
    assert frames.shape == (2 * FRAMES - 1, SIZE, SIZE, 3), "two chained stages share one frame"
    assert Image.open(compare).size[0] > 3 * Image.open(compare).size[1], "reference | first | last, side by side"
    assert "**seed** 7" in settings and "**stages** 2" in settings
    # The shown command, run as is in the server's directory, writes the same frames.
    argv = shlex.split(command)
    assert argv[:2] == ["dv", "sample"] and "--seed" in argv and "--image" in argv
    out = argv[argv.index("--out") + 1]
    app_strip = np.asarray(Image.open(server[1] / Path(out).with_suffix(".png")))
    argv[argv.index("--out") + 1] = "again.mp4"
    monkeypatch.chdir(server[1])
    assert dv_main(argv[1:]) == 0
    again = np.asarray(Image.open(server[1] / "again.png"))
    np.testing.assert_allclose(again.astype(int), app_strip.astype(int), atol=1)


def test_bad_inputs_give_a_message_and_the_app_keeps_serving(server, client, photo):
    notimage = server[1] / "notes.png"
    notimage.write_text("not a picture")
    bad = [
        (dict(image=notimage, prompt=PROMPT), "not an image"),
        (dict(mode="image-to-video"), "needs a reference image"),
        (dict(mode="text-to-video", prompt="   "), "needs a prompt"),
        (dict(image=photo, prompt=PROMPT, steps=0), "less than minimum"),
        (dict(image=photo, prompt=PROMPT, steps=100000), "greater than maximum"),
        (dict(mode="text-to-video", prompt=PROMPT, seed=None), "seed must be a whole number"),
    ]
    for inputs, needle in bad:
        with pytest.raises(AppError) as err:
            client.predict(**ask(**inputs), api_name="/generate")
        assert needle in str(err.value) and "Traceback" not in str(err.value), (inputs, str(err.value))
    video, *_ = client.predict(**ask(mode="text-to-video", prompt=PROMPT), api_name="/generate")
    assert decode_mp4(Path(video).read_bytes()).shape == (FRAMES, SIZE, SIZE, 3)


def updates(job) -> list:
    """Every status update the server sent for a finished job."""
    seen = []
    while not job.communicator.updates.empty():
        seen.append(job.communicator.updates.get_nowait())
    return [u for u in seen if getattr(u, "type", None) == "status"]


def test_two_visitors_are_served_one_after_the_other(server, client, photo):
    first = client.submit(**ask(image=photo, mode="image-to-video", steps=12), api_name="/generate")
    second = client.submit(**ask(image=photo, prompt=PROMPT, seed=1), api_name="/generate")
    spans = []
    for job in (first, second):
        video, _, settings, _ = job.result(timeout=60)
        assert decode_mp4(Path(video).read_bytes()).shape == (FRAMES, SIZE, SIZE, 3)
        # The server copies the reference when a job starts and writes the comparison when it ends.
        run_dir = server[1] / re.search(r"Saved in `([^`]+)`", settings).group(1)
        times = [(run_dir / name).stat().st_mtime_ns for name in ("reference.png", "compare.png")]
        spans.append((*times, updates(job)))
    # Which job the queue takes first depends on whose upload lands first; either way they must not overlap.
    (_, first_end, _), (second_start, _, waited) = sorted(spans, key=lambda span: span[0])
    assert second_start >= first_end, "the queue runs one job at a time"
    assert any(u.code == Status.IN_QUEUE and u.rank is not None for u in waited), "the waiting visitor sees its place"


def test_page_renders_in_headless_chromium(server, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        # Only the app's own address resolves: the page must render with nothing from outside.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=15000",
        "--dump-dom",
        server[0],
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    assert 'id="reference-image"' in dom and 'id="prompt"' in dom, dom[-2000:]
    # gradio draws the widgets client-side: the upload's file input and the prompt's textarea exist only if it ran.
    upload = dom[dom.index('id="reference-image"') :][:5000]
    assert 'type="file"' in upload and 'accept="image/*"' in upload
    assert "<textarea" in dom[dom.index('id="prompt"') :][:3000]
    assert "Generate" in dom and "Held-out photos" in dom


def test_theme_loads_no_font_from_outside(server):
    import httpx

    config = httpx.get(server[0] + "config", timeout=10).json()
    assert config["stylesheets"] == [], "a font stylesheet would be fetched by every visitor's browser"
    css = httpx.get(server[0] + "theme.css", timeout=10).text
    assert "--font: ui-sans-serif" in css
    assert "@import" not in css and not re.search(r"url\([\"']?(https?:)?//", css), "the theme fetches nothing"
