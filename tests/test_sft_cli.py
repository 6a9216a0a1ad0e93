"""`run.py sft` errors a user can cause: one `error:` line, exit code 2, and the
workdir left as it was (not created, or its files unchanged)."""
import os

import pytest

from tests.cli_helpers import fresh_workdir, one_line_error, run_cli, tree_hashes, write_jsonl

pytestmark = pytest.mark.slow
SFT = ['--config=configs/sft_tiny.py', '--config.train.batch_size=4',
       '--config.train.eval_batches=1', '--config.train.eval_every=0',
       '--config.train.peak_tflops=1']
GOOD = {'messages': [{'role': 'user', 'content': 'Hi'},
                     {'role': 'assistant', 'content': 'Hello!'}]}


@pytest.fixture(scope='module')
def setup(tiny_workdir, tmp_path_factory):
  root = tmp_path_factory.mktemp('sft_cli')
  p = fresh_workdir(tiny_workdir, root / 'pretrain')
  result = run_cli('pretrain', '--config=configs/tiny.py', f'--workdir={p}',
                   '--config.train.steps=20', '--config.train.eval_every=0',
                   '--config.checkpoint.save_every_steps=20', '--config.train.peak_tflops=1')
  assert result.returncode == 0, result.stderr[-2000:]
  files = {
      'not_json': write_jsonl(root / 'not_json.jsonl', [GOOD, '{"messages": [oops']),
      'no_fields': write_jsonl(root / 'no_fields.jsonl', [{'text': 'just text', 'id': 1}]),
      'bad_role': write_jsonl(root / 'bad_role.jsonl', [GOOD, {'messages': [
          {'role': 'user', 'content': 'Hi'}, {'role': 'bot', 'content': 'Hello'}]}]),
      'no_assistant': write_jsonl(root / 'no_assistant.jsonl', [
          {'messages': [{'role': 'user', 'content': 'Hi'}]},
          {'messages': [{'role': 'system', 'content': 'Be nice.'},
                        {'role': 'user', 'content': 'Hello?'}]}]),
  }
  not_ckpt = root / 'not_a_checkpoint'
  not_ckpt.mkdir()
  (not_ckpt / 'notes.txt').write_text('nothing here')
  empty_ckpts = root / 'empty_checkpoints'
  (empty_ckpts / 'checkpoints').mkdir(parents=True)
  # An SFT workdir that already holds a run (LoRA, 2 steps): errors must leave it as it is.
  existing = root / 'existing'
  result = run_cli('sft', *SFT, f'--workdir={existing}', f'--init_from={p}',
                   '--config.sft.method=lora', '--config.train.steps=2')
  assert result.returncode == 0, result.stderr[-2000:]
  return {'p': str(p), 'files': files, 'not_ckpt': str(not_ckpt),
          'empty_ckpts': str(empty_ckpts), 'existing': existing, 'root': root}


# (name, flags given P and the files, fragment of the error line)
CASES = [
    ('not_json', lambda s: [f'--init_from={s["p"]}',
                            f'--config.data.train_files={s["files"]["not_json"]}'],
     'not_json.jsonl:2 is not valid JSON'),
    ('no_fields', lambda s: [f'--init_from={s["p"]}',
                             f'--config.data.train_files={s["files"]["no_fields"]}'],
     'no_fields.jsonl:1 has none of the known chat fields'),
    ('bad_role', lambda s: [f'--init_from={s["p"]}',
                            f'--config.data.train_files={s["files"]["bad_role"]}'],
     "bad_role.jsonl:2: unknown role 'bot'"),
    ('bad_eval_file', lambda s: [f'--init_from={s["p"]}',
                                 f'--config.data.eval_files={s["files"]["bad_role"]}'],
     "bad_role.jsonl:2: unknown role 'bot'"),
    ('no_assistant', lambda s: [f'--init_from={s["p"]}',
                                f'--config.data.train_files={s["files"]["no_assistant"]}'],
     'the training chat files: none of its 2 conversations has an assistant reply'),
    ('init_from_absent', lambda s: [], '--init_from is required'),
    ('init_from_missing', lambda s: [f'--init_from={s["root"]}/nowhere'], 'does not exist'),
    ('init_from_not_ckpt', lambda s: [f'--init_from={s["not_ckpt"]}'],
     'is not a workdir with checkpoints/ nor a checkpoint step directory'),
    ('init_from_empty_ckpts', lambda s: [f'--init_from={s["empty_ckpts"]}'], 'no checkpoint in'),
    ('other_num_layers', lambda s: [f'--init_from={s["p"]}', '--config.model.num_layers=3'],
     'model.num_layers=3 but --init_from was trained with 2'),
    ('other_d_model', lambda s: [f'--init_from={s["p"]}', '--config.model.d_model=64'],
     'model.d_model=64 but --init_from was trained with 128'),
    ('lora_rank_0', lambda s: [f'--init_from={s["p"]}', '--config.sft.method=lora',
                               '--config.sft.lora_rank=0'], 'sft.lora_rank=0 must be >= 1'),
    ('lora_rank_huge', lambda s: [f'--init_from={s["p"]}', '--config.sft.method=lora',
                                  '--config.sft.lora_rank=100000'],
     'sft.lora_rank=100000 must be in 1..64'),
    ('lora_target_unknown', lambda s: [f'--init_from={s["p"]}', '--config.sft.method=lora',
                                       "--config.sft.lora_targets=('wq', 'nope')"],
     "unknown LoRA target(s) ['nope'] in sft.lora_targets"),
    ('lora_target_unquoted', lambda s: [f'--init_from={s["p"]}', '--config.sft.method=lora',
                                        '--config.sft.lora_targets=(wq, nope)'],
     'unknown LoRA target(s)'),
    ('too_many_virtual', lambda s: [f'--init_from={s["p"]}', '--config.sft.method=prompt',
                                    '--config.sft.num_virtual_tokens=1000'],
     'sft.num_virtual_tokens=1000 leaves no room in data.seq_len=256'),
]


@pytest.mark.parametrize('name,flags,fragment', CASES, ids=[c[0] for c in CASES])
def test_error_leaves_existing_workdir_unchanged(setup, name, flags, fragment):
  existing = setup['existing']
  p_before = tree_hashes(setup['p'])
  before = tree_hashes(existing)
  assert 'config.json' in before and 'checkpoints/2/' in before
  one_line_error(run_cli('sft', *SFT, f'--workdir={existing}', *flags(setup)), fragment)
  assert tree_hashes(existing) == before
  assert tree_hashes(setup['p']) == p_before


@pytest.mark.parametrize('name,flags,fragment',
                         [c for c in CASES if c[0] in ('no_fields', 'init_from_absent',
                                                       'other_num_layers', 'lora_rank_huge',
                                                       'no_assistant')],
                         ids=lambda c: c if isinstance(c, str) else '')
def test_error_creates_no_workdir(setup, tmp_path, name, flags, fragment):
  workdir = tmp_path / 'new'
  one_line_error(run_cli('sft', *SFT, f'--workdir={workdir}', *flags(setup)), fragment)
  assert not workdir.exists(), os.listdir(workdir)


def test_resume_with_another_method_is_an_error(setup):
  existing = setup['existing']
  before = tree_hashes(existing)
  one_line_error(run_cli('sft', *SFT, f'--workdir={existing}', f'--init_from={setup["p"]}',
                         '--config.sft.method=full', '--config.train.steps=4'),
                 'sft.method=full but the checkpoints in this workdir were trained with lora')
  assert tree_hashes(existing) == before
