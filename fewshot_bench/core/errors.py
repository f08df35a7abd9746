"""User-facing errors: one line that names the file/field and the fix; the CLI exits with code 2."""


class UserError(Exception):
    """Bad input from the user (a card, a flag, a data file). Printed as one line, exit code 2."""
