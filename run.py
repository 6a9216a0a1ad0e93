"""Entry point: `python run.py <command> --config=configs/<file>.py --workdir=DIR`.

Commands: tokenizer, prepare, pretrain, eval, generate, sft, reward, ppo, dpo,
export, import, pipeline, launch, bench, describe. Any config key can be overridden with
`--config.section.key=value`. Mistakes a user can fix end with one `error:`
line and exit code 2.
"""
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_dict
from ml_collections import config_flags

from configs.errors import UserError
from configs.validate import validate

REPO = os.path.dirname(os.path.abspath(__file__))
_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(REPO, 'configs', 'base.py'), 'Config file (configs/<name>.py).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for everything a run produces.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'tokenizer: retrain an existing tokenizer; '
                               'export: replace a non-empty --out.')
_RESUME = flags.DEFINE_bool('resume', True, 'Training stages: continue from the latest '
                            'complete checkpoint in the workdir.')
_VERIFY_RESUME = flags.DEFINE_bool('verify_resume', False, 'pretrain: train, restart halfway in '
                                   'a fresh process, and check the result is bitwise equal.')
_QUANTIZE = flags.DEFINE_enum('quantize', 'none', ['none', 'int8'], 'eval/generate: int8 '
                              'weight-only quantization of the linear layers.')
_OUT = flags.DEFINE_string('out', None, 'export: the Hugging Face directory to write.')
_HF_DIR = flags.DEFINE_string('hf_dir', None, 'import: a local Hugging Face LLaMA directory.')
_PARITY = flags.DEFINE_bool('parity', True, 'export/import: compare logits with transformers.')
_WITH_TORCH = flags.DEFINE_bool('with_torch', False, 'bench: also time the PyTorch peer.')
_PROFILE = flags.DEFINE_bool('profile', False, 'bench: instead of the speed table, trace the '
                              'train step and show where its time goes, op by op.')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object as the last stdout line.')
_NUM_DEVICES = flags.DEFINE_integer('num_devices', None, 'describe: devices to plan the mesh '
                                    'for (default: this machine\'s).')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'eval/generate: a checkpoint step '
                                  'directory instead of the workdir\'s latest.')
_STEP = flags.DEFINE_integer('step', None, 'eval/generate: use this step of the workdir.')
_EVAL_FILES = flags.DEFINE_list('eval_files', [], 'eval: text/JSONL files, each reported '
                                'separately (default: the validation split).')
_SEQ_LEN = flags.DEFINE_integer('seq_len', None, 'eval: window length (default: training\'s).')
_STRIDE = flags.DEFINE_integer('stride', None, 'eval: window advance (default: seq_len).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'eval: windows per batch.')
_MAX_BATCHES = flags.DEFINE_integer('max_batches', 0, 'eval: stop after this many batches '
                                    '(0 = all).')
_PROMPT = flags.DEFINE_multi_string('prompt', [], 'generate: a prompt (repeat for a batch).')
_MAX_NEW_TOKENS = flags.DEFINE_integer('max_new_tokens', 64, 'generate: tokens to sample.')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.8, 'generate: 0 = greedy.')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'generate: keep the k most likely tokens (0 = off).')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'generate: nucleus mass in (0, 1] (1 = off).')
_SEED = flags.DEFINE_integer('seed', 0, 'generate: sampling seed.')
_DEVICES_PER_PROCESS = flags.DEFINE_integer('devices_per_process', 0, 'launch: simulated CPU '
                                           'devices per process (0 = the default).')
_INIT_FROM = flags.DEFINE_string('init_from', None, 'sft: the workdir or checkpoint step '
                                 'directory to start from.')
_CHAT = flags.DEFINE_bool('chat', False, 'generate: wrap each prompt in the chat template and '
                          'stop at end-of-turn; eval: chat metrics (default on fine-tuned '
                          'workdirs).')
_SYSTEM = flags.DEFINE_string('system', None, 'generate --chat: a system message.')
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer('heartbeat_timeout', 30, 'Multi-process: seconds '
                                          'without a heartbeat before a process counts as lost.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'Multi-process: host:port of '
                                   'process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-process: process count.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-process: this process index.')

NOT_BUILT = ('reward', 'ppo', 'dpo')
COMMANDS = ('tokenizer', 'prepare', 'pretrain', 'eval', 'generate', 'sft', 'reward', 'ppo',
            'dpo', 'export', 'import', 'pipeline', 'launch', 'bench', 'describe')


def fail(message, code=2):
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


def parse_flags(argv):
  """absl's parser, but a bad flag is one line and exit 2 instead of usage + exit 1."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: no such key
    key = str(e).strip().strip('"\'').splitlines()[0]
    fail(f'unknown config key {key!r} in a --config.* override; see configs/base.py for the keys')
  except (flags.Error, TypeError, ValueError) as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    fail(f'{message}; see `python run.py --help` and configs/base.py for flags and config keys')


def load_config():
  config = _CONFIG.value
  if not isinstance(config, config_dict.ConfigDict):
    fail(f'cannot load --config={flags.FLAGS["config"].config_filename!r}; give a file in '
         'configs/ such as configs/tiny.py')
  validate(config)
  return config


def write_resolved_config(config, workdir):
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, 'config.json.tmp')
  with open(tmp, 'w') as f:
    f.write(config.to_json(indent=1))
  os.replace(tmp, os.path.join(workdir, 'config.json'))


def run_command(command, config, workdir):
  """Dispatches; each stage writes WORKDIR/config.json once its own checks pass."""
  from data_pipeline import commands as data_commands
  from engine import distributed
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value)
  if command == 'tokenizer':
    distributed.on_first_process(lambda: (
        data_commands.run_tokenizer(config, workdir, overwrite=_OVERWRITE.value),
        write_resolved_config(config, workdir)))
  elif command == 'prepare':
    distributed.on_first_process(lambda: (data_commands.run_prepare(config, workdir),
                                          write_resolved_config(config, workdir)))
  elif command == 'pipeline':
    distributed.on_first_process(lambda: (data_commands.run_tokenizer(config, workdir),
                                          data_commands.run_prepare(config, workdir)))
    run_pretrain(config, workdir)
  elif command == 'pretrain' and _VERIFY_RESUME.value:
    from engine import verify_resume
    if not verify_resume.verify(config, workdir, sys.argv[2:]):
      sys.exit(1)
  elif command == 'pretrain':
    run_pretrain(config, workdir)
  elif command == 'sft':
    from posttrain import sft
    import jax
    sft.run_sft(config, workdir, _INIT_FROM.value, resume=_RESUME.value, on_ready=lambda: (
        jax.process_index() == 0 and write_resolved_config(config, workdir)))
  elif command == 'eval' and (_CHAT.value or _is_fine_tuned(workdir)):
    from evaluation import chat_eval
    summary = chat_eval.run_chat_eval(config, workdir, checkpoint=_CHECKPOINT.value,
                                      step=_STEP.value, eval_files=_EVAL_FILES.value,
                                      batch_size=_BATCH_SIZE.value)
    import jax
    if jax.process_index() == 0:
      print(chat_eval.format_summary(summary))
      if _JSON.value:
        print(json.dumps(summary, ensure_ascii=False))
  elif command == 'eval':
    from evaluation import evaluate
    summary = evaluate.run_eval(
        config, workdir, checkpoint=_CHECKPOINT.value, step=_STEP.value,
        eval_files=_EVAL_FILES.value, seq_len=_SEQ_LEN.value, stride=_STRIDE.value,
        batch_size=_BATCH_SIZE.value, max_batches=_MAX_BATCHES.value, quantize=_QUANTIZE.value)
    import jax
    if jax.process_index() == 0:
      print(evaluate.format_summary(summary))
      if _JSON.value:
        print(json.dumps(summary))
  elif command == 'generate':
    from evaluation import sampling
    result = sampling.run_generate(
        config, workdir, _PROMPT.value, checkpoint=_CHECKPOINT.value, step=_STEP.value,
        max_new_tokens=_MAX_NEW_TOKENS.value, temperature=_TEMPERATURE.value,
        top_k=_TOP_K.value, top_p=_TOP_P.value, seed=_SEED.value, quantize=_QUANTIZE.value,
        chat=_CHAT.value, system=_SYSTEM.value)
    import jax
    if jax.process_index() == 0:
      for sample in result['samples']:
        print(f'--- {sample["prompt"]!r} ({sample["tokens"]} tokens)\n'
              + (sample['text'] if _CHAT.value else sample['prompt'] + sample['text']))
      if _JSON.value:
        print(json.dumps(result, ensure_ascii=False))
  elif command == 'export':
    from interop import hf_export
    result = hf_export.run_export(config, workdir, _OUT.value, checkpoint=_CHECKPOINT.value,
                                  step=_STEP.value, overwrite=_OVERWRITE.value,
                                  parity=_PARITY.value)
    print(f'export: step {result["step"]} written to {result["out"]} ({result["shards"]} '
          f'safetensors file(s), {result["seconds"]:.1f} s)')
    if _JSON.value:
      print(json.dumps(result))
  elif command == 'import':
    from interop import hf_import
    result = hf_import.run_import(config, _HF_DIR.value, workdir, parity=_PARITY.value)
    print(f'import: {result["params"]:,} params from {result["hf_dir"]} saved as step 0 in '
          f'{workdir}/checkpoints ({result["seconds"]:.1f} s); continue with '
          f'--config=configs/from_workdir.py:{workdir}')
    if _JSON.value:
      print(json.dumps(result))
  elif command == 'bench':
    from bench import run_bench
    name = os.path.splitext(os.path.basename(flags.FLAGS['config'].config_filename))[0]
    if _PROFILE.value:
      from bench import step_profile
      report = step_profile.profile(config, os.path.abspath(os.path.join(workdir, 'profile')))
      print(step_profile.format_profile(report))
      if _JSON.value:
        print(json.dumps(report))
      return
    result = run_bench.run_bench(config, workdir, name, with_torch=_WITH_TORCH.value)
    print(run_bench.format_table(result))
    print(f'bench: results written to {result["results_file"]}')
    if _JSON.value:
      print(json.dumps(result))
  elif command == 'describe':
    from engine import describe
    report = describe.describe(config, _NUM_DEVICES.value)
    print(describe.format_report(report))
    if _JSON.value:
      print(json.dumps(report))
  else:
    fail(f'command {command!r} is not built yet', code=3)


def _is_fine_tuned(workdir):
  from engine import restore_params
  try:
    directory, step = restore_params.locate(workdir, _CHECKPOINT.value, _STEP.value)
    return restore_params.read_meta(directory, step).get('stage') not in (None, 'pretrain')
  except Exception:  # let the regular path report what is wrong
    return False


def run_pretrain(config, workdir):
  from pretrain import trainer
  import jax
  trainer.run_pretrain(config, workdir, resume=_RESUME.value, on_ready=lambda: (
      jax.process_index() == 0 and write_resolved_config(config, workdir)))


def main(argv):
  if len(argv) < 2 or argv[1] not in COMMANDS:
    given = argv[1] if len(argv) > 1 else '(none)'
    fail(f'unknown command {given}; choose one of: {", ".join(COMMANDS)}')
  if len(argv) > 2 and argv[1] != 'launch':
    fail(f'unexpected arguments {argv[2:]}; flags take the form --name=value')
  command = argv[1]
  if command in NOT_BUILT:
    fail(f'command {command!r} is not built yet', code=3)
  if command == 'launch':
    from engine import launch
    try:
      sys.exit(launch.launch(_NUM_PROCESSES.value or 1, _DEVICES_PER_PROCESS.value, argv[2:]))
    except UserError as e:
      fail(str(e))
  try:
    config = load_config()
    if command == 'describe':  # reads nothing, writes nothing
      run_command(command, config, None)
      return
    if not _WORKDIR.value:
      raise UserError('--workdir is required; give a directory for this run\'s outputs')
    workdir = os.path.abspath(_WORKDIR.value)
    run_command(command, config, workdir)
  except UserError as e:
    fail(str(e))


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=parse_flags)
