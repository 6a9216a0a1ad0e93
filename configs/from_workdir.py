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
  with open(os.path.join(workdir, 'config.json')) as f:
    _update(config, json.load(f))
  return config
