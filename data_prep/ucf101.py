"""ucf101: the official UCF-101 layout, split lists and class prompts.

Layout: ``--video-root`` is the ``UCF-101`` folder (``<Class>/v_<Class>_gXX_cXX.avi``);
``--split-dir`` (default: ``ucfTrainTestlist`` beside it) holds ``classInd.txt``,
``trainlistNN.txt`` and ``testlistNN.txt``; ``--split-file N`` picks NN (1-3).
``--split-file`` may also be the path of one list file (``.../testlist01.txt``):
that names the folder and NN, and builds only that list's split.
Splits are ``train`` and ``test``. The caption of a class is ``--prompt-template``
with ``{action}`` = the class name in words ("ApplyEyeMakeup" -> "apply eye
makeup"), unless ``--prompt-file`` (JSON object or TSV ``Class<TAB>prompt``)
gives the class its own prompt.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from data_prep.writer import Record
from dv.errors import ConfigError

SPLITS = ("train", "test")
DEFAULT_SHARD_SIZE = 256
DEFAULT_CLIPS_PER_VIDEO = 1
DEFAULT_TEMPLATE = "a video of a person {action}"
_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Split lists and prompts of the ucf101 source."""
    g = parser.add_argument_group("ucf101")
    g.add_argument(
        "--split-dir",
        default=None,
        help="folder with classInd.txt and the train/test lists (default: ucfTrainTestlist beside --video-root)",
    )
    g.add_argument(
        "--split-file",
        default="1",
        help="official split 1, 2 or 3, or the path of one list file such as ucfTrainTestlist/testlist01.txt "
        "(default: 1)",
    )
    g.add_argument(
        "--prompt-template", default=DEFAULT_TEMPLATE, help=f"caption template (default: {DEFAULT_TEMPLATE!r})"
    )
    g.add_argument(
        "--prompt-file", default=None, help="JSON {class: prompt} or TSV 'class<TAB>prompt' overriding the template"
    )


def class_words(name: str) -> str:
    """A CamelCase class name in lower-case words: 'ApplyEyeMakeup' -> 'apply eye makeup'."""
    return " ".join(w.lower() for w in _WORDS.findall(name))


def read_prompt_file(path: Path) -> dict[str, str]:
    """Class -> prompt from a JSON object or a two-column TSV."""
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--prompt-file {path} is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"--prompt-file {path} must hold a JSON object {{class: prompt}}")
        return {str(k): str(v) for k, v in data.items()}
    prompts = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t", 1)
        if len(parts) != 2:
            raise ConfigError(f"--prompt-file {path}:{n} is not 'class<TAB>prompt'")
        prompts[parts[0].strip()] = parts[1].strip()
    return prompts


def _read_list(path: Path) -> list[str]:
    """Relative video paths of a train/test list (the trailing class number of trainlists dropped)."""
    if not path.is_file():
        raise ConfigError(f"UCF101 split list {path} not found; set --split-dir to the ucfTrainTestlist folder")
    return [
        line.split()[0].replace("\\", "/") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def _split_choice(value: str) -> tuple[int, str | None]:
    """(split number, the one split a list-file path names, else None) from ``--split-file``."""
    if value.strip() in ("1", "2", "3"):
        return int(value), None
    match = re.fullmatch(r"(train|test)list0?([123])\.txt", Path(value).name)
    if not match:
        raise ConfigError(f"--split-file {value!r}: give 1, 2, 3 or a path such as ucfTrainTestlist/testlist01.txt")
    return int(match.group(2)), match.group(1)


def records(args: argparse.Namespace) -> dict[str, list[Record]]:
    """Records of the train and test lists of split ``--split-file``."""
    if not args.video_root:
        raise ConfigError("--source ucf101 needs --video-root pointing at the UCF-101 folder")
    root = Path(args.video_root)
    if not root.is_dir():
        raise ConfigError(f"--video-root {root} is not a folder")
    split_dir = Path(args.split_dir) if args.split_dir else root.parent / "ucfTrainTestlist"
    number, only = _split_choice(str(args.split_file))
    if only is not None:
        split_dir = Path(args.split_file).parent
    if "{action}" not in args.prompt_template:
        raise ConfigError("--prompt-template must contain {action}")
    classes = {}
    class_ind = split_dir / "classInd.txt"
    if class_ind.is_file():
        for line in class_ind.read_text(encoding="utf-8").splitlines():
            if line.strip():
                classes[line.split()[-1].lower()] = line.split()[-1]
    prompts = read_prompt_file(Path(args.prompt_file)) if args.prompt_file else {}
    out: dict[str, list[Record]] = {}
    for split, stem in (("train", "trainlist"), ("test", "testlist")):
        if only not in (None, split):
            continue
        out[split] = []
        for rel in _read_list(split_dir / f"{stem}{number:02d}.txt"):
            folder = rel.split("/")[0]
            name = classes.get(folder.lower(), folder)  # classInd spells the class as the folder does
            caption = prompts.get(name, prompts.get(folder)) or args.prompt_template.format(action=class_words(name))
            out[split].append(Record(Path(rel).stem, str(root / rel), caption, {"class": name}))
    return out
