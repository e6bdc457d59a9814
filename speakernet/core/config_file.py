"""Reading a --config YAML file: one mapping of option names to values, duplicate keys reported.

A config is a small file of option values, so what it may hold is bounded before anything is
built from it: its size, and how many values an option stands for once YAML aliases are
expanded (nine lines of anchors &a and aliases *a can stand for a billion values).
"""
import logging

import yaml

from speakernet.core.errors import OptionError
from speakernet.core.option_types import quoted

log = logging.getLogger("options")

# A run's options.yaml is a few KB; a megabyte takes the parser seconds, not minutes. It is
# the pure-Python one: yaml.CSafeLoader is faster, but values nested some 50000 deep (100 KB of
# '[') crash the process with a segmentation fault, where this one raises RecursionError.
MAX_CONFIG_BYTES = 1 << 20
# Values (items of lists, and the lists) one option may stand for, each alias counted as the
# values it repeats: far above any option's list, far below what would exhaust memory.
MAX_OPTION_VALUES = 100_000


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader for --config files (see _load_yaml: duplicate keys are reported)."""


def _at(path, mark):
    """'path:line:column' of a YAML mark (1-based, as editors count)."""
    return f"{path}:{mark.line + 1}:{mark.column + 1}"


def _located_error(path, err):
    """A parser error as one 'path:line:column: not valid YAML: problem' line."""
    mark = err.problem_mark or err.context_mark
    problem = err.problem or err.context or "cannot be read"
    if err.problem and err.context and err.context_mark is not None:
        start = err.context_mark
        where = f"at line {start.line + 1}, column {start.column + 1}"
        if problem.startswith("but "):     # "expected a single document ..., but found another"
            problem = f"{err.context} ({where}), {problem}"
        else:
            problem = f"{problem} ({err.context} {where})"
    return " ".join(f"{_at(path, mark) if mark else path}: not valid YAML: {problem}".split())


def _unreadable_character(path, text, err):
    """The reader's error (a control character) as one 'path:line:column: ...' line."""
    line = text.count("\n", 0, err.position) + 1
    column = err.position - text.rfind("\n", 0, err.position)
    return f"{path}:{line}:{column}: not valid YAML: {err.reason} (character #x{err.character:04x})"


def _check_expansion(node, path):
    """Refuse an option value that stands for more than MAX_OPTION_VALUES values once aliases
    are expanded, or that contains itself (an alias inside its own anchor), before anything is
    built from it: either would make whatever walks the value run out of memory or recursion."""
    counts, open_nodes = {}, set()

    def count(item):
        key = id(item)
        if key in counts:
            return counts[key]
        if key in open_nodes:
            raise OptionError(f"{_at(path, item.start_mark)}: this value contains itself (an alias "
                              f"*name inside its own anchor &name); write the values out")
        open_nodes.add(key)
        if isinstance(item, yaml.SequenceNode):
            children = item.value
        elif isinstance(item, yaml.MappingNode):
            children = [part for pair in item.value for part in pair]
        else:
            children = ()
        counts[key] = 1 + sum(count(child) for child in children)
        open_nodes.discard(key)
        return counts[key]

    entries = node.value if isinstance(node, yaml.MappingNode) else [(None, node)]
    for key_node, value_node in entries:
        total = count(value_node)
        if total > MAX_OPTION_VALUES:
            name = f"'{key_node.value}'" if isinstance(key_node, yaml.ScalarNode) else "the value"
            raise OptionError(f"{_at(path, value_node.start_mark)}: {name} stands for {total:,} values "
                              f"(counting what each alias *name repeats); an option takes at most "
                              f"{MAX_OPTION_VALUES:,}")


def _load_yaml(text, path, loader_class=_ConfigLoader):
    """yaml.safe_load of `text`, size-checked (_check_expansion), warning about top-level keys
    set twice (the last value is used)."""
    try:
        loader = loader_class(text)       # the reader checks every character here
    except yaml.reader.ReaderError as err:
        raise OptionError(_unreadable_character(path, text, err)) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, path)
        data = loader.construct_document(node)
        lines = {}                        # top-level key -> lines where it is set
        if isinstance(node, yaml.MappingNode) and isinstance(data, dict):
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = loader.construct_object(key_node)
                    lines.setdefault(key, []).append(key_node.start_mark.line + 1)
    finally:
        loader.dispose()
    for key, found in lines.items():
        if len(found) > 1:
            log.warning("%s:%d: '%s' is also set on line%s %s; the value on line %d (%s) is used",
                        path, found[-1], key, "s" if len(found) > 2 else "",
                        " and ".join(map(str, found[:-1])), found[-1], quoted(data.get(key)))
    return data


def _read_text(path):
    """The file's text, refused above MAX_CONFIG_BYTES before any of it is parsed."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise OptionError(f"--config {path}: larger than {MAX_CONFIG_BYTES // 2 ** 20} MB, too large "
                          f"for a file of options (a run's options.yaml is a few KB)")
    return data.decode("utf-8")


def load_config(path, loader_class=_ConfigLoader):
    """The {option: value} mapping of YAML file `path` ({} when empty); OptionError naming the
    file (and the line and column of a YAML error) when it cannot be used. `loader_class`: a
    yaml.SafeLoader subclass (one that reads other toolkits' tags as data)."""
    try:
        config = _load_yaml(_read_text(path), path, loader_class)
    except FileNotFoundError:
        raise OptionError(f"--config {path}: file not found") from None
    except OSError as err:              # a directory, no permission, an I/O error, ...
        raise OptionError(f"--config {path}: {err.strerror or err} (give a YAML file)") from None
    except UnicodeDecodeError:
        raise OptionError(f"--config {path}: not UTF-8 text (give a YAML file)") from None
    except yaml.MarkedYAMLError as err:
        raise OptionError(_located_error(path, err)) from None
    except yaml.YAMLError as err:       # any other kind (none known)
        raise OptionError(f"--config {path}: not valid YAML: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise OptionError(f"--config {path}: values nested too deeply to read (options take "
                          f"numbers, strings and lists of them)") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise OptionError(f"--config {path}: expected 'key: value' lines, got a {type(config).__name__}")
    return config
