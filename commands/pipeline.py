"""`run.py pipeline`: raw text to an aligned chat model in one command.

tokenizer → prepare → pretrain → sft → reward → ppo, and dpo and grpo from the same
SFT model, then the report card; each training stage in WORKDIR/<stage>/, a normal
workdir for eval, generate and export. Running the command again continues:
finished stages are skipped (if their config did not change in a way that
matters), an interrupted one resumes from its checkpoint.
"""
import json
import os
import time

from absl import flags

from commands import common
from commands import pipeline_record
from commands import pipeline_stages as stages_lib
from commands import stopping
from configs import stages as stage_configs
from configs import validate as validate_lib
from configs.errors import ResumeConflict
from configs.errors import UserError
from engine import paths
from engine.checkpoint_steps import finished_steps

STAGES = flags.DEFINE_list('stages', list(stages_lib.ORDER), 'Stages to run, a subset of '
                           f'{",".join(stages_lib.ORDER)} (always run in that order).')
INIT_FROM = common.define('string', 'init_from', None, 'A pretraining workdir to start the '
                          'post-training stages from instead of WORKDIR/pretrain.')
ON_STOP = 'no stage had started; run the same command again to continue'


def _selected():
  unknown = [s for s in STAGES.value if s not in stages_lib.ORDER]
  if unknown or not STAGES.value:
    raise UserError(f'--stages={",".join(STAGES.value)}: unknown stage {unknown[0] if unknown else "(none)"}; '
                    f'choose from {",".join(stages_lib.ORDER)}')
  wanted = set(STAGES.value)
  if INIT_FROM():  # it gives the pretrained model: the stages before are not run here
    before = [s for s in ('tokenizer', 'prepare', 'pretrain') if s in wanted]
    if before and flags.FLAGS['stages'].present:
      rest = ','.join(s for s in STAGES.value if s not in before) or 'sft'
      raise UserError(f'--init_from gives the pretrained model, so {",".join(before)} cannot '
                      f'run; drop {",".join(before)} from --stages (e.g. '
                      f'--stages={rest})')
    wanted -= set(before)
  if 'pretrain' in wanted and not INIT_FROM():
    wanted |= {'tokenizer', 'prepare'}  # its cheap prerequisites (skipped once done)
  return [s for s in stages_lib.ORDER if s in wanted]


def _folders(workdir):
  folders = {s: os.path.join(workdir, f) for s, f in stages_lib.FOLDER.items()}
  if INIT_FROM():
    pretrained = paths.resolve(INIT_FROM(), '--init_from')
    if not paths.isdir(os.path.join(pretrained, 'checkpoints')):
      raise UserError(f'--init_from={INIT_FROM()} has no checkpoints/; give a pretraining '
                      'workdir')
    for s in ('tokenizer', 'prepare', 'pretrain'):
      folders[s] = pretrained
  return folders


def _final_checkpoint(folder, step):
  return step in finished_steps(folder)


def _latest_checkpoint(folder):
  steps = finished_steps(folder)
  return steps[-1] if steps else None


def stage_error(name, config, error):
  """A stage's config error, naming the key the user sets: pipeline.<stage>.train.* for the
  keys the stage takes from there, the top-level key for the others."""
  key = getattr(error, 'key', None)
  section = key.split('.')[0] if key else None
  if key and name in config.pipeline and key.split('.', 1)[-1] in config.pipeline[name].get(
      section, {}):
    return f'stage {name}: pipeline.{name}.{error}'
  if key:
    return f'stage {name}: {error}'
  return f'stage {name}: {error} (its train.*, checkpoint.* and data.seq_len keys are ' \
         f'pipeline.{name}.*)'


class Plan:
  """Decides, before any work, which stages run and which are skipped, so a changed
  config or a missing start is one error line with nothing touched."""

  def __init__(self, config, workdir, record, selected, folders):
    self.configs = {s: stage_configs.for_stage(config, s) for s in stages_lib.ORDER}
    self.record, self.folders = record, folders
    self.digests, self.keys, self.actions = {}, {}, {}
    needed = _needed(selected)
    for name in stages_lib.ORDER:
      if name in stages_lib.TRAINED and name in selected:  # another stage's keys never block
        try:
          validate_lib.validate(self.configs[name])
        except UserError as e:
          raise UserError(stage_error(name, config, e)) from None
      self.keys[name] = pipeline_record.shaping_keys(name, self.configs[name])
    for name in stages_lib.ORDER:
      self.digests[name] = self._decide(name, name in selected, name in needed)

  def _changed_anywhere(self):
    """The changed keys of every finished stage, not only the first stale one: a new
    preset first changes the tokenizer's keys, but the user needs to see the model's."""
    old, new = {}, {}
    for name in stages_lib.ORDER:
      entry = self.record.stage(name) or {}
      if entry.get('status') == 'done' and entry.get('keys'):
        both = set(entry['keys']) & set(self.keys[name])
        old.update({k: entry['keys'][k] for k in both})
        new.update({k: self.keys[name][k] for k in both})
    first = sorted(k for k in old if old[k] != new[k] and k.startswith('model.'))
    rest = sorted(k for k in old if old[k] != new[k] and not k.startswith('model.'))
    return pipeline_record.changed_keys({k: old[k] for k in first + rest},
                                        {k: new[k] for k in first + rest}, limit=6,
                                        order=first + rest)

  def _upstream_digests(self, name):
    return [self.digests[u] for u in stages_lib.NEEDS[name]]

  def _decide(self, name, selected, needed):
    """Sets self.actions[name] to 'run' or 'skip' (or nothing: not selected, not needed)
    and returns the digest the stage's result has (None: it has none yet)."""
    if name == 'report':
      self.actions[name] = 'run' if selected else None
      return None
    folder, entry = self.folders[name], self.record.stage(name)
    external = INIT_FROM() and name in ('tokenizer', 'prepare', 'pretrain')
    if external:  # the user's own pretraining run: taken as it is
      if selected:
        raise UserError(f'--init_from gives the pretrained model; drop {name} from --stages')
      return f'external:{folder}:{_latest_checkpoint(folder)}'
    upstream = self._upstream_digests(name)
    missing = [u for u, d in zip(stages_lib.NEEDS[name], upstream) if d is None]
    done = entry and entry.get('status') == 'done' and (
        name not in stages_lib.TRAINED or _final_checkpoint(folder, entry.get('step', -1)))
    if done:
      if not (selected or needed):  # this run neither trains it nor starts from it
        return entry.get('digest')
      old = entry.get('keys', {})
      changed = pipeline_record.differing(old, self.keys[name])
      if not changed and pipeline_record.digest(old, upstream) == entry.get('digest'):
        self.actions[name] = 'skip' if selected else None
        return entry.get('digest')
      text = changed and (self._changed_anywhere() or pipeline_record.changed_keys(
          {k: old[k] for k in changed}, self.keys[name], order=changed))
      why = (f'with other settings ({text})' if text else
             f'from another {"/".join(stages_lib.NEEDS[name])} result')
      raise UserError(f'{folder} finished {why}; use a new --workdir, or delete {folder} and the '
                      'stages after it to redo them')
    digest = None if missing else pipeline_record.digest(self.keys[name], upstream)
    if not selected:
      if name in stages_lib.TRAINED and _latest_checkpoint(folder) is not None and not entry:
        return f'external:{folder}:{_latest_checkpoint(folder)}'  # trained by hand
      return None
    if missing:
      raise UserError(f'{name} starts from {"/".join(missing)}, which has not finished in '
                      f'{self.folders[missing[0]]}; add {missing[0]} to --stages')
    if name in stages_lib.TRAINED:
      self._check_checkpoints_match(name, folder)
    self.actions[name] = 'run'
    return digest

  def _check_checkpoints_match(self, name, folder):
    """A folder with checkpoints (the standalone command's, or an interrupted run's) is
    continued only if they were trained with this run's settings: otherwise the record
    would name settings the model was not trained with."""
    if _latest_checkpoint(folder) is None:
      return
    try:
      there = json.loads(paths.read_text(os.path.join(folder, 'config.json')))
    except (OSError, ValueError):
      raise UserError(f'{folder} holds checkpoints but no readable config.json, so what trained '
                      f'them is unknown; use a new --workdir, or delete {folder} to train {name} '
                      'here') from None
    theirs = pipeline_record.shaping_keys(name, there)
    changed = pipeline_record.differing(theirs, self.keys[name])
    if changed:
      raise UserError(f'{folder} holds checkpoints trained with other settings '
                      f'({pipeline_record.changed_keys(theirs, self.keys[name], order=changed)}); '
                      f'use a new --workdir, or delete {folder} to train {name} here')


def _needed(selected):
  """The stages the selected ones start from, transitively (their results must be current)."""
  needed, todo = set(), list(selected)
  while todo:
    for upstream in stages_lib.NEEDS[todo.pop()]:
      if upstream not in needed:
        needed.add(upstream)
        todo.append(upstream)
  return needed


def _run_stage(name, stage_config, workdir, folders, record, before):
  """Runs one stage and keeps the record truthful when it fails: a user's mistake found
  before any work leaves the record as it was; any later failure marks the stage failed."""
  ready = []

  def on_ready(then=common.on_ready(stage_config, folders[name])):
    ready.append(True)
    then()
  try:
    return stages_lib.run(name, stage_config, workdir, folders, on_ready)
  except ResumeConflict as e:  # its fix names --noresume, which pipeline does not take
    record.restore(before)
    raise UserError(f'{name}: {e.problem}; delete {folders[name]} (and the stages after '
                    f'it) to train {name} again, or use a new --workdir') from None
  except UserError as e:
    if ready:
      record.update(name, status='failed', error=common.one_line(e, 300))
    else:
      record.restore(before)
    raise
  except Exception as e:
    record.update(name, status='failed', error=common.one_line(f'{type(e).__name__}: {e}', 300))
    raise


def _clock(seconds):
  return f'{int(seconds // 60)}m{int(seconds % 60):02d}s'


def main(config, workdir):
  import jax
  primary = jax.process_index() == 0
  selected = _selected()
  folders = _folders(workdir)
  record = pipeline_record.Record(workdir, writer=primary)
  plan = Plan(config, workdir, record, selected, folders)
  # The record is written when the first stage starts: a run that does nothing leaves it as
  # it was (and a failed start leaves no empty workdir behind).
  header = dict(commit=pipeline_record.commit(), config=config.to_dict())
  if not config.train.peak_tflops and any(plan.actions.get(s) == 'run' for s in stages_lib.TRAINED):
    # One MFU denominator for every stage: a peak measured at each stage's start moves
    # with the machine's load and makes the stages' MFU incomparable.
    from engine import flops
    peak_tflops = flops.peak_flops() / 1e12
    for stage_config in plan.configs.values():
      stage_config.train.peak_tflops = peak_tflops
  say = (lambda line: print(f'pipeline: {line}', flush=True)) if primary else (lambda _: None)
  current = {'stage': None, 'start': time.time()}
  stopping.install()  # outside a training loop (those stop at a step boundary themselves)
  try:
    for name in stages_lib.ORDER:
      action = plan.actions.get(name)
      if action == 'skip':
        entry = record.stage(name)
        say(f'{name} already done ({stages_lib.describe(name, entry.get("summary", {}))}); '
            'skipped')
      if action != 'run':
        continue
      current.update(stage=name, start=time.time())
      stage_config = plan.configs[name]
      before = record.snapshot()
      record.data.update(header)
      record.update(name, status='running', folder=folders[name])
      result = _run_stage(name, stage_config, workdir, folders, record, before)
      stopping.install()  # a trainer leaves its own handlers
      wall = time.time() - current['start'] + (record.stage(name).get('wall_s') or 0.0)
      numbers = stages_lib.summary(name, result)
      finished = name not in stages_lib.TRAINED or result['step'] >= stage_config.train.steps
      if not finished:  # SIGTERM/SIGINT inside the training loop: the trainer saved
        record.update(name, status='stopped', step=result['step'], wall_s=wall)
        say(f'stopped in {name} at step {result["step"]} of {stage_config.train.steps} (saved); '
            'run the same command again to continue')
        return
      record.update(name, status='done', step=result.get('step'), wall_s=wall, summary=numbers,
                    digest=plan.digests[name], keys=plan.keys[name])
      say(f'{name} done in {_clock(wall)}: {stages_lib.describe(name, numbers)}')
  except stopping.Stopped as stop:
    name, where = current['stage'], ''
    if name:
      wall = time.time() - current['start'] + ((record.stage(name) or {}).get('wall_s') or 0.0)
      step = _latest_checkpoint(folders[name]) if name in stages_lib.TRAINED else None
      record.update(name, status='stopped', step=step, wall_s=wall)
      where = f' in {name}' + (f' (last checkpoint: step {step})' if step is not None else '')
    stopping.exit_stopped(f'pipeline: {stop} received{where}; nothing is lost: run the same '
                          'command again to continue' if primary else None, stop)
  total = sum((record.stage(s) or {}).get('wall_s') or 0.0 for s in selected)
  say(f'{",".join(selected)}: done ({_clock(total)} of stage time in all)')
