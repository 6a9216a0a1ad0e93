"""lm-evaluation-harness `local-completions` against `run.py serve` on the shipped
task: every per-choice log-likelihood equals the one `run.py eval --token_nlls`
gives for the same text (1e-4), and so does the accuracy."""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.cli_helpers import REPO
from tests.cli_helpers import run_cli

pytestmark = pytest.mark.slow
TASKS = os.path.join(REPO, 'evaluation', 'lm_eval_tasks')
LM_EVAL = os.path.join(os.path.dirname(sys.executable), 'lm_eval')


def _eval_logliks(workdir, items, tmp_path):
  """Per item, each choice's log-likelihood given its context, from eval's token NLLs
  of the text `context + " " + choice` (BOS first, as eval scores every document)."""
  docs = tmp_path / 'docs.jsonl'
  docs.write_text(''.join(json.dumps({'text': it['context'] + ' ' + c}) + '\n'
                          for it in items for c in it['choices']))
  out = tmp_path / 'nlls.jsonl'
  result = run_cli('eval', '--config=configs/tiny.py', f'--workdir={workdir}',
                   f'--eval_files={docs}', f'--token_nlls={out}')
  assert result.returncode == 0, result.stderr[-2000:]
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(records) == sum(len(it['choices']) for it in items)
  logliks, k = [], 0
  for it in items:
    row = []
    context_ids = None
    for _ in it['choices']:
      record = records[k]
      k += 1
      if context_ids is None:  # the context's own tokens: those before the choice's
        context_ids = _context_len(record['ids'], it['context'], workdir)
      # nll[j] scores ids[j + 1]; the choice's tokens run to the one before EOS
      row.append(-sum(record['nll'][context_ids - 1:len(record['ids']) - 2]))
    logliks.append(row)
  return logliks


def _context_len(ids, context, workdir):
  from data_pipeline import tokenizer as tokenizer_lib
  tok = tokenizer_lib.load_tokenizer(os.path.join(workdir, 'tokenizer', 'tokenizer.model'))
  context_ids = [tok.bos_id] + tok.encode(context)
  # the choice starts with a space, which SentencePiece never merges backwards
  assert ids[:len(context_ids)] == context_ids
  return len(context_ids)


def test_lm_eval_local_completions_equals_eval(serve_url, served_workdir, tmp_path):
  if not os.path.exists(LM_EVAL):
    pytest.skip('lm-eval is not installed (bash setup.sh test installs '
                'requirements-lmeval.txt)')
  with open(os.path.join(TASKS, 'fortune_endings.jsonl')) as f:
    items = [json.loads(line) for line in f][:40]
  expected = _eval_logliks(served_workdir, items, tmp_path)
  env = dict(os.environ, HF_DATASETS_OFFLINE='1', HF_HUB_OFFLINE='1',
             HF_HOME=str(tmp_path / 'hf'), TOKENIZERS_PARALLELISM='false')
  env.pop('XLA_FLAGS', None)
  args = (f'model=w,base_url={serve_url}/v1/completions,tokenizer_backend=remote,'
          'tokenized_requests=True,max_length=256,num_concurrent=4,max_retries=1')
  result = subprocess.run([LM_EVAL, '--model', 'local-completions', '--model_args', args,
                           '--tasks', 'fortune_endings', '--include_path', TASKS,
                           '--limit', str(len(items)), '--batch_size', '4',
                           '--output_path', str(tmp_path / 'out'), '--log_samples'],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  samples = {}
  for path in glob.glob(str(tmp_path / 'out' / '*' / 'samples_fortune_endings_*.jsonl')):
    with open(path) as f:
      samples.update({s['doc_id']: s for s in map(json.loads, f)})
  assert sorted(samples) == list(range(len(items)))
  correct = 0
  for number, it in enumerate(items):
    got = [float(resp[0]) for resp in samples[number]['filtered_resps']]
    assert got == pytest.approx(expected[number], abs=1e-4), number
    best = max(range(len(got)), key=expected[number].__getitem__)
    correct += best == it['label']
    assert samples[number]['acc'] == float(best == it['label'])
  results = glob.glob(str(tmp_path / 'out' / '*' / 'results_*.json'))
  with open(results[0]) as f:
    accuracy = json.load(f)['results']['fortune_endings']['acc,none']
  assert accuracy == pytest.approx(correct / len(items), abs=1e-12)
  shutil.rmtree(tmp_path / 'hf', ignore_errors=True)
