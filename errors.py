"""The one exception family for bad user input: reported as a single line, exit status 2."""


class UserError(ValueError):
    """An input (option, list, file, checkpoint, name) the user has to fix; says what and how."""
