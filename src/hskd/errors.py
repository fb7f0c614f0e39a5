"""The one exception type for mistakes a user can fix."""


class HskdError(Exception):
    """A user error: bad input, a missing file, a stale cache.

    The command line prints its message on one line (``hskd: error: ...``) and exits with
    status 2, without a traceback. The message names the problem and the fix.
    """
