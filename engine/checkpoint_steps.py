"""Which checkpoint steps of a workdir are finished, from the file system alone.

Without JAX, Orbax or Grain: the pipeline's plan and the report list steps before
(or without) importing them.
"""
import os

from engine import paths


def finished_steps(workdir):
  """Steps of WORKDIR/checkpoints/ whose metadata item is written, ascending. Orbax
  publishes a step directory by renaming it once every item is written (on gs://,
  once its commit marker is written); the metadata check also excludes a step
  directory made by hand or copied in part."""
  directory = os.path.join(workdir, 'checkpoints')
  marker = ('commit_success.txt',) if paths.is_remote(workdir) else ('meta', 'metadata')
  return sorted(int(name) for name in paths.listdir(directory) if name.isdigit() and
                paths.isfile(os.path.join(directory, name, *marker)))
