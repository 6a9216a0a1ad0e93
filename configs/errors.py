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


class ResumeConflict(UserError):
  """A workdir's checkpoints that this run cannot continue (another stage, method, start,
  architecture or tokenizer). `problem` is the mismatch alone, so a caller with another
  fix (the pipeline, which has no --noresume) can give its own."""

  def __init__(self, problem, fix):
    super().__init__(f'{problem}; {fix}')
    self.problem = problem


def unknown_config_key(error, argv):
  """One readable line for ml_collections' "no such key" error (an AttributeError that
  wraps a KeyError whose text holds quotes, a newline and a suggestion): the flag that
  named the key, and the suggested spelling as a flag that works."""
  import re
  cause = error
  while cause.args and isinstance(cause.args[0], BaseException):
    cause = cause.args[0]
  text = str(cause.args[0]) if cause.args else str(cause)
  key = (text.strip().splitlines() or ['?'])[0].strip().strip('\'"')
  suggestion = re.search(r'Did you mean "([^"]+)"', text)
  for arg in argv:
    name = arg.split('=', 1)[0]
    parts = name[len('--config.'):].split('.') if name.startswith('--config.') else []
    if key in parts:
      fix = 'see configs/base.py for the keys'
      if suggestion:
        parts[parts.index(key)] = suggestion.group(1)
        fix = f'did you mean --config.{".".join(parts)}? (configs/base.py lists the keys)'
      return f'unknown config key {key!r} in {name}; {fix}'
  hint = f'; did you mean {suggestion.group(1)!r}?' if suggestion else ''
  return (f'unknown config key {key!r} in a --config.* override{hint} (configs/base.py lists '
          'the keys)')
