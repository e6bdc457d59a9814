"""The one exception family for bad user input: reported as a single line, exit status 2.

Every kind is defined here, so a plug-in raises them without importing the module that
detects them (an objective raises OptionError without importing the option parser).
"""


class UserError(ValueError):
    """An input (option, list, file, checkpoint, name) the user has to fix; says what and how."""


class OptionError(UserError):
    """A bad option value or config key; the message names it and the fix."""


class UnknownComponentError(UserError):
    """A component name that matches no file of its kind."""


class ListError(UserError):
    """A list, or a file it names, that cannot be used; the message names file and line."""


class NonFiniteAudio(ListError):
    """Audio with NaN or Inf samples: found where the samples are read, it names the file."""

    def __init__(self, message, path=None):
        super().__init__(message)
        self.path = path


class ChangedAudio(ListError):
    """A file shorter than its cached header says: changed in place since its list was checked."""

    def __init__(self, message, path=None):
        super().__init__(message)
        self.path = path


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


class ResumeConflict(UserError):
    """The options of a restart would change the training it resumes."""


class LockedError(UserError):
    """save_path is in use by another run."""


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
