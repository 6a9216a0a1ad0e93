"""Which checkpoint steps of a workdir are finished, from the file system alone.

Standard library only: the pipeline's plan and the report list steps before (or
without) importing JAX, Orbax or Grain.
"""
import os


def finished_steps(workdir):
  """Steps of WORKDIR/checkpoints/ whose metadata item is written, ascending. Orbax
  publishes a step directory by renaming it once every item is written; the metadata
  check also excludes a step directory made by hand or copied in part."""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit() and
                os.path.isfile(os.path.join(directory, name, 'meta', 'metadata')))
