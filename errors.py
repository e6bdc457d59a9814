"""The one exception family for bad user input: reported as a single line, exit status 2."""


class UserError(ValueError):
    """An input (option, list, file, checkpoint, name) the user has to fix; says what and how."""


def message_of(err):
    """The one-line message of `err`.

    A DataLoader worker's exception reaches the main process re-raised with the worker's whole
    traceback as its message ("Caught X in DataLoader worker process 0. Original Traceback
    ... module.X: message"); the user needs only that last line's message."""
    text = str(err).strip()
    if "Original Traceback" not in text:
        return text
    last = text.splitlines()[-1]
    name = type(err).__name__
    for prefix in (f"{type(err).__module__}.{name}: ", f"{name}: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    return last
