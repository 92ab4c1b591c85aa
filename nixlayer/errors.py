"""The one error type for problems with the user's input."""


class NixlayerError(Exception):
    """A problem with the input (a file, a flag, a store tree) that the user can fix.

    Raised where the problem is found, with a message that names the file, path or
    flag and what is wrong; the CLI turns it into one line on stderr and exit code 2.
    """
