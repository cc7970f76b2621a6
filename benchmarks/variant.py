"""A recipe with some settings changed, for a benchmark run: dotted keys, YAML values.

python benchmarks/variant.py recipes/t2v.yaml OUT.yaml model.init_args.backbone.compile=true sampling.compile=true
"""

from __future__ import annotations

import sys

import yaml

from dv.errors import ConfigError
from dv.recipe import load_recipe


def apply(recipe: dict, assignments: list[str]) -> dict:
    """`recipe` with each KEY.PATH=VALUE set (missing mappings on the path are made)."""
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"{item!r} is not KEY.PATH=VALUE")
        key, value = item.split("=", 1)
        *parents, last = key.split(".")
        node = recipe
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part} is not a mapping in the recipe")
        node[last] = yaml.safe_load(value)
    return recipe


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    base, out, *assignments = sys.argv[1:]
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump(apply(load_recipe(base), assignments), f, sort_keys=False)


if __name__ == "__main__":
    main()
