"""Reading a --config YAML file: one mapping of option names to values, duplicate keys reported."""
import logging

import yaml

from speakernet.errors import OptionError

log = logging.getLogger("options")


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader for --config files (see _load_yaml: duplicate keys are reported)."""


def _load_yaml(handle, path):
    """yaml.safe_load, warning about top-level keys set twice (the last value is used)."""
    loader = _ConfigLoader(handle)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
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
            log.warning("%s:%d: '%s' is also set on line%s %s; the value on line %d (%r) is used",
                        path, found[-1], key, "s" if len(found) > 2 else "",
                        " and ".join(map(str, found[:-1])), found[-1], data.get(key))
    return data


def load_config(path):
    try:
        with open(path, encoding="utf-8") as handle:
            config = _load_yaml(handle, path)
    except FileNotFoundError:
        raise OptionError(f"--config {path}: file not found") from None
    except OSError as err:              # a directory, no permission, an I/O error, ...
        raise OptionError(f"--config {path}: {err.strerror or err} (give a YAML file)") from None
    except UnicodeDecodeError:
        raise OptionError(f"--config {path}: not UTF-8 text (give a YAML file)") from None
    except yaml.YAMLError as err:
        raise OptionError(f"--config {path}: not valid YAML ({err})") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise OptionError(f"--config {path}: expected 'key: value' lines, got a {type(config).__name__}")
    return config
