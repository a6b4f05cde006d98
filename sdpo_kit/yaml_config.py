"""A `--config` YAML file read safely: one UsageError line for a missing, malformed or hostile file.

    python -c "from sdpo_kit.yaml_config import read_yaml; print(read_yaml('configs/curate_split.yaml', 'sdpo curate split'))"

`read_yaml` gives the file's mapping (keys and types are checked by `sdpo_kit.parser`);
`load_yaml_capped` is `yaml.safe_load` that refuses an alias bomb. PyYAML loads lazily, so
`sdpo --help` does not import it.
"""

from __future__ import annotations

from pathlib import Path

from sdpo_kit.errors import UsageError


def read_yaml(path: str | Path, prog: str) -> dict:
    """A `--config` file as a mapping; a missing, unreadable or malformed file is one UsageError line."""
    import yaml

    from sdpo_kit.io import special_file

    path = Path(path)
    if not path.is_file():  # a FIFO would block the read, /dev/zero never ends
        raise UsageError(f"--config {path}", special_file(path) or "no such file")
    try:
        config = load_yaml_capped(path.read_text(encoding="utf-8"), path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise UsageError(path, f"{where}not valid YAML ({getattr(err, 'problem', None) or err})") from None
    except UnicodeDecodeError:
        raise UsageError(path, "not a UTF-8 text file") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise UsageError(path, f"must hold a YAML mapping of option: value, got {type(config).__name__}")
    return config


YAML_NODES = 10_000  # far above any real config (a few dozen keys); a 364-byte alias bomb expands to millions


def load_yaml_capped(text: str, path) -> object:
    """`yaml.safe_load`, refusing a document whose aliases expand past YAML_NODES nodes (or loop).

    `*alias` repeats the anchored node; nested, a few hundred bytes become gigabytes (an alias
    bomb), and the expanded config would be written into config.yaml and run.json. Aliases that
    stay small (a shared list) still work."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: dict[int, int] = {}

        def size(n, open_: frozenset) -> int:  # nodes after expanding every alias, memoised per node
            if id(n) in open_:
                raise UsageError(path, "a YAML alias refers to itself (a recursive anchor): not a config")
            if id(n) not in sizes:
                children = n.value if isinstance(n, yaml.SequenceNode) else \
                    [c for kv in n.value for c in kv] if isinstance(n, yaml.MappingNode) else []
                sizes[id(n)] = 1 + sum(size(c, open_ | {id(n)}) for c in children)
                if sizes[id(n)] > YAML_NODES:
                    raise UsageError(path, f"its YAML aliases (*name) expand to more than {YAML_NODES:,} values: "
                                     "an alias bomb, not a config; write the values out")
            return sizes[id(n)]

        size(node, frozenset())
        return loader.construct_document(node)
    finally:
        loader.dispose()
