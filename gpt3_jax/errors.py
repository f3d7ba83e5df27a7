"""The one exception type that the command line turns into a one-line error and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a config key, a path, a flag. The message is one line that says
    what is wrong and how to fix it; the CLI prints it as ``error: <message>`` and exits 2."""
