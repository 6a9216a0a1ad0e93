"""The resolved config a workdir was made with (e.g. by `run.py import`).

    --config=configs/from_workdir.py:runs/imported
"""
import json
import os

from configs import base


def _update(node, values):
  for key, value in values.items():
    if key not in node:
      continue
    if isinstance(value, dict):
      _update(node[key], value)
    else:
      node[key] = tuple(value) if isinstance(value, list) else value


def get_config(workdir):
  config = base.get_config()
  from engine import paths  # pylint: disable=g-import-not-at-top  (configs load before engine)
  _update(config, json.loads(paths.read_text(os.path.join(workdir, 'config.json'))))
  return config
