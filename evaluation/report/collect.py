"""What a pipeline's workdir already says about its stages, read from files only:
metrics.jsonl, config.json, checkpoint folders and sizes, WORKDIR/pipeline.json.

Nothing here runs a model; a stage that is missing or half-written is reported as
such instead of failing the report.
"""
import json
import os
import statistics
import subprocess

from configs.errors import UserError
from engine import paths
from engine.checkpoint_steps import finished_steps

STAGES = ('pretrain', 'sft', 'reward', 'dpo', 'ppo', 'grpo')
STAGE_FILES = ('config.json', 'metrics.jsonl', 'checkpoints')


def read_json(path):
  try:
    return json.loads(paths.read_text(path))
  except (OSError, ValueError):
    return None


def read_metrics(path):
  """The records of a metrics.jsonl (a line cut short by a kill is skipped)."""
  rows = []
  if not paths.isfile(path):
    return rows
  for line in paths.read_text(path).splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and isinstance(record.get('step'), int):
      rows.append(record)
  return rows


folder_bytes = paths.folder_bytes


def checkpoint_meta(stage_dir, step):
  meta = read_json(os.path.join(stage_dir, 'checkpoints', str(step), 'meta', 'metadata'))
  return meta if isinstance(meta, dict) else {}


def param_count(config):
  """Parameters of the stage's model (a LoRA stage trains far fewer; see `method`)."""
  if not isinstance(config, dict) or 'model' not in config:
    return None
  import ml_collections
  from model import transformer
  try:
    return int(transformer.count_params(ml_collections.ConfigDict(config['model'])))
  except Exception:  # an older or foreign config: the report still builds
    return None


def median_of(rows, key):
  values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
  return statistics.median(values) if values else None


def file_wall_seconds(stage_dir, last_meta):
  """Without pipeline.json: from the stage's first file (TensorBoard names its event file
  with the start time) to its last write. Tokenizer and preparation are not counted."""
  starts = []
  for name in paths.listdir(os.path.join(stage_dir, 'tensorboard')):
    if not name.startswith('events.out.tfevents.'):
      continue
    stamp = name.split('.')[3]
    if stamp.isdigit():
      starts.append(int(stamp))
  config_path = os.path.join(stage_dir, 'config.json')
  if not starts and paths.isfile(config_path):
    starts.append(paths.getmtime(config_path))
  ends = [last_meta.get('wall_time') or 0]
  metrics_path = os.path.join(stage_dir, 'metrics.jsonl')
  if paths.isfile(metrics_path):
    ends.append(paths.getmtime(metrics_path))
  if not starts or max(ends) <= min(starts):
    return None
  return max(ends) - min(starts)


def stage_record(workdir, stage, pipeline_stage=None):
  """{'status': 'not run'} or what the folder holds about one stage."""
  stage_dir = os.path.join(workdir, stage)
  if not any(paths.exists(os.path.join(stage_dir, f)) for f in STAGE_FILES):
    if pipeline_stage and pipeline_stage.get('status'):
      return {'status': pipeline_stage['status'], 'dir': stage_dir}
    return {'status': 'not run'}
  config = read_json(os.path.join(stage_dir, 'config.json'))
  rows = read_metrics(os.path.join(stage_dir, 'metrics.jsonl'))
  steps = finished_steps(stage_dir)
  last_meta = checkpoint_meta(stage_dir, steps[-1]) if steps else {}
  config = config or last_meta.get('config')
  pipeline_stage = pipeline_stage or {}
  wall = pipeline_stage.get('wall_s')
  wall_source = 'pipeline.json' if wall is not None else 'file times'
  if wall is None:
    wall = file_wall_seconds(stage_dir, last_meta)
  train_steps = (config or {}).get('train', {}).get('steps')
  done = bool(steps) and train_steps is not None and steps[-1] >= train_steps
  method = ((config or {}).get(stage) or {}).get('method') if stage != 'pretrain' else None
  return {
      'status': pipeline_stage.get('status') or ('done' if done else
                                                 'stopped' if steps else 'no checkpoint'),
      'dir': stage_dir, 'config': config, 'metrics': rows,
      'steps': steps, 'latest_step': steps[-1] if steps else None,
      'train_steps': train_steps, 'method': method,
      'checkpoint_bytes': (folder_bytes(os.path.join(stage_dir, 'checkpoints', str(steps[-1])))
                           if steps else None),
      'checkpoints_total_bytes': folder_bytes(os.path.join(stage_dir, 'checkpoints')),
      'params': param_count(config),
      'tokens_per_s': median_of(rows, 'tokens_per_s'), 'mfu': median_of(rows, 'mfu'),
      'wall_s': wall, 'wall_source': wall_source if wall is not None else None,
      'git_commit': last_meta.get('git_commit'),
      'summary': pipeline_stage.get('summary'),
  }


def git_head():
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=repo, capture_output=True,
                         text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return (out.stdout.strip() or None) if out.returncode == 0 else None


def collect(workdir):
  """{'workdir', 'pipeline' (pipeline.json or None), 'stages': {stage: record},
  'commit', 'commit_source', 'config'}; a workdir without any stage folder is a UserError."""
  if not paths.isdir(workdir):
    raise UserError(f'--workdir={workdir} does not exist; give the workdir of '
                    '`python run.py pipeline`')
  pipeline = read_json(os.path.join(workdir, 'pipeline.json'))
  pipeline = pipeline if isinstance(pipeline, dict) else None
  from_pipeline = (pipeline or {}).get('stages') or {}
  stages = {s: stage_record(workdir, s, from_pipeline.get(s)) for s in STAGES}
  if all(r['status'] == 'not run' for r in stages.values()):
    raise UserError(f'{workdir} holds no stage folder ({", ".join(STAGES)}); give the workdir '
                    'of `python run.py pipeline`, or run it first')
  commit, source = (pipeline or {}).get('commit'), 'pipeline.json'
  if not commit:
    commit = next((r['git_commit'] for r in stages.values() if r.get('git_commit')), None)
    source = 'checkpoint metadata'
  if not commit:
    commit, source = git_head(), 'git rev-parse HEAD (now)'
  if not commit:
    commit, source = 'unknown', None
  config = (pipeline or {}).get('config') or {
      s: r['config'] for s, r in stages.items() if r.get('config')}
  return {'workdir': paths.resolve(workdir), 'pipeline': pipeline, 'stages': stages,
          'commit': commit, 'commit_source': source, 'config': config}
