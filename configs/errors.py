"""The one exception type for mistakes a user can fix.

`run.py` turns it into a single `error: ...` line and exit code 2; anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A problem with flags, config, files or data, phrased with its fix."""


class DataStateMismatch(UserError):
  """A checkpoint's data-iterator state this loader cannot continue from (written by
  another loader version). The trainer keeps the weights and restarts the data stream,
  as for a changed `data.num_shards`; anywhere else it is one error line."""
