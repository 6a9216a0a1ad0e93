"""The one exception type for mistakes a user can fix.

`run.py` turns it into a single `error: ...` line and exit code 2; anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A problem with flags, config, files or data, phrased with its fix."""
