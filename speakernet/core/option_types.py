"""Option types shared by the entry points and the modules that declare options: lists of
numbers or files given comma-separated, repeated, or as YAML lists."""
import argparse
import reprlib

from speakernet.core.errors import UserError

# How much of a value a one-line message quotes: a YAML value may be a list of millions of
# items, or one that aliases repeat a billion times, which a full repr would expand.
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 8
_SHORT.maxlevel = 2
QUOTED_CHARS = 160


class OptionValueError(argparse.ArgumentTypeError, UserError):
    """A bad option value. argparse shows the message on the command line; options.py's YAML
    check catches it as a ValueError (UserError is one)."""


def quoted(value):
    """repr(value) for a message: one line of at most QUOTED_CHARS characters."""
    text = _SHORT.repr(value)
    return text if len(text) <= QUOTED_CHARS else text[:QUOTED_CHARS - 3] + "..."


def parse_float_list(value):
    """'0.05,0.01' (or a number, or a list of numbers) -> (0.05, 0.01); '' -> ()."""
    if value is None:
        return ()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),)
    if isinstance(value, (list, tuple)):
        return tuple(x for item in value for x in parse_float_list(item))
    numbers = []
    for item in str(value).split(","):
        if item.strip():
            try:
                numbers.append(float(item))
            except ValueError:
                within = f" in '{value}'" if item.strip() != str(value).strip() else ""
                raise OptionValueError(f"'{item.strip()}'{within} is not a number "
                                       f"(expected comma-separated numbers, e.g. 0.05,0.01)") from None
    return tuple(numbers)


def probability_list(value):
    """parse_float_list, each value strictly between 0 and 1 (priors, error-rate targets)."""
    numbers = parse_float_list(value)
    for number in numbers:
        if not 0 < number < 1:
            raise OptionValueError(f"{number:g} in '{value}' is not a fraction in (0, 1), e.g. "
                                   f"0.01 for 1%")
    return numbers


def durations(value):
    """parse_float_list, each value a finite number of seconds above 0 (--eval_seconds)."""
    numbers = parse_float_list(value)
    for number in numbers:
        if not 0 < number < float("inf"):
            raise OptionValueError(f"{number:g} in '{value}' is not a duration in seconds above 0, "
                                   f"e.g. 1,2,3")
    return numbers


def count(value):
    """An int of 0 or more (argparse/YAML type of the cohort options)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise OptionValueError(f"'{value}' is not a whole number") from None
    if number < 0 or number != float(value):
        raise OptionValueError(f"'{value}' is not a whole number of 0 or more")
    return number


def split_list(value):
    """'a.txt,b.txt' or ['a.txt', 'b.txt,c.txt'] -> ['a.txt', 'b.txt', 'c.txt']."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [item for part in value for item in split_list(part)]
    return [item.strip() for item in str(value).split(",") if item.strip()]


class ListOption(argparse.Action):
    """Comma-separated and repeatable: `--test_list a,b --test_list c` -> ['a', 'b', 'c'].

    The first use on the command line replaces the default (or the YAML value) instead of
    extending it; read the result through split_list, which also accepts the default's
    plain string and a YAML list.
    """

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        kept = [] if current is None or current is self.default else split_list(current)
        setattr(namespace, self.dest, kept + split_list(values))


def resumable(action):
    """Mark an option a resumed run may change (where data lives, how and on what the run
    computes, how long it goes, what evaluation reports); every other option changes the
    training being resumed. Wraps a parser's add_argument: resumable(g.add_argument(...))."""
    action.resumable = True
    return action


def option_argv(name, value):
    """The command-line words of option `name` set to `value` (text): 'true'/'false' give a
    flag's --name / --no-name, anything else --name value."""
    name = name.lstrip("-")
    if value.lower() in ("true", "false"):
        return [f"--{'' if value.lower() == 'true' else 'no-'}{name}"]
    return [f"--{name}", value]
