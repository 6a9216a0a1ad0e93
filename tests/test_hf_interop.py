"""Hugging Face interop against an implementation we did not write (transformers)."""
import json
import os
import shutil

import numpy as np
import pytest

from tests.cli_helpers import fresh_workdir, run_cli

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def hf_random(tmp_path_factory):
  """A small random LlamaForCausalLM with grouped-query attention."""
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
  model = transformers.LlamaForCausalLM(config)
  with torch.no_grad():  # non-trivial norms, so a swapped norm would show
    for name, p in model.named_parameters():
      if 'norm' in name:
        p.uniform_(0.5, 1.5)
  path = tmp_path_factory.mktemp('hf') / 'random_llama'
  model.save_pretrained(path)
  return str(path), model


def _json(result):
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_matches_transformers_logits(hf_random, tmp_path):
  hf_dir, model = hf_random
  workdir = str(tmp_path / 'imported')
  result = _json(run_cli('import', f'--hf_dir={hf_dir}', f'--workdir={workdir}', '--json'))
  assert result['parity']['max_abs_logit_diff'] < 1e-4
  # Independently: our restored checkpoint vs the torch model on fresh tokens.
  import ml_collections
  import orbax.checkpoint as ocp
  from interop import hf_parity
  state = ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', '0', 'state'))
  saved = ml_collections.ConfigDict(json.load(open(os.path.join(workdir, 'config.json'))))
  tokens = np.random.default_rng(5).integers(0, 512, (3, 40)).astype(np.int32)
  ours = hf_parity.our_logits(saved.model, state['params'], tokens)
  with torch.no_grad():
    theirs = model(torch.tensor(tokens, dtype=torch.long)).logits.double().numpy()
  assert np.abs(ours - theirs).max() < 1e-4


def test_import_then_export_reproduces_the_tensors_bit_for_bit(hf_random, tmp_path):
  hf_dir, _ = hf_random
  workdir, out = str(tmp_path / 'w'), str(tmp_path / 'out')
  assert run_cli('import', f'--hf_dir={hf_dir}', f'--workdir={workdir}').returncode == 0
  # the imported model has no tokenizer: give export the one from the tiny fixture
  result = run_cli('export', f'--workdir={workdir}', f'--out={out}', '--noparity',
                   '--config.tokenizer.path=' + _sp_model_with_vocab(tmp_path, 512))
  assert result.returncode == 0, result.stderr[-2000:]
  from safetensors.numpy import load_file
  a = load_file(os.path.join(hf_dir, 'model.safetensors'))
  b = load_file(os.path.join(out, 'model.safetensors'))
  assert sorted(a) == sorted(b)
  for name in a:
    assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name


def _sp_model_with_vocab(tmp_path, vocab):
  from configs import base
  from data_pipeline import documents, embedded
  from data_pipeline import tokenizer as tokenizer_lib
  config = base.get_config()
  config.tokenizer.vocab_size = vocab
  tok = tokenizer_lib.train_tokenizer(
      documents.iter_documents(embedded.VALIDATION_FILES[:1], config.data), config.tokenizer)
  tokenizer_lib.save_tokenizer(tok, str(tmp_path / 'sp'))
  return str(tmp_path / 'sp' / 'tokenizer.model')


def test_export_of_our_checkpoint_loads_in_transformers(tiny_workdir, tmp_path):
  workdir = fresh_workdir(tiny_workdir, tmp_path / 'w')
  trained = run_cli('pretrain', '--config=configs/tiny.py', '--config.data.seq_len=64',
                    '--config.train.batch_size=8', '--config.train.steps=5',
                    '--config.train.eval_every=0', '--config.train.eval_batches=1',
                    '--config.train.peak_tflops=1.0', f'--workdir={workdir}')
  assert trained.returncode == 0, trained.stderr[-2000:]
  out = str(tmp_path / 'hf')
  result = _json(run_cli('export', f'--workdir={workdir}', f'--out={out}', '--json'))
  assert result['parity']['max_abs_logit_diff'] < 1e-4 and result['parity']['kl'] < 1e-8
  # Independently: transformers' model vs ours, and the tokenizers' ids.
  from data_pipeline import tokenizer as tokenizer_lib
  from interop import hf_parity
  import orbax.checkpoint as ocp
  from configs import tiny
  state = ocp.StandardCheckpointer().restore(str(workdir / 'checkpoints' / '5' / 'state'))
  tokens = np.random.default_rng(1).integers(0, 2048, (2, 48)).astype(np.int32)
  ours = hf_parity.our_logits(tiny.get_config().model, state['params'], tokens)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  with torch.no_grad():
    theirs = hf_model(torch.tensor(tokens, dtype=torch.long)).logits.double().numpy()
  assert np.abs(ours - theirs).max() < 1e-4
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  our_tok = tokenizer_lib.load_tokenizer(str(workdir / 'tokenizer' / 'tokenizer.model'))
  for text in ['Hello  world!\n\nA second paragraph.', '床前明月光，疑是地上霜。', ' lead 🙂 12345']:
    ids = our_tok.encode(text)
    assert hf_tok.encode(text, add_special_tokens=False) == ids
    assert hf_tok.decode(ids) == text


def _one_line_error(result, fragment):
  assert result.returncode == 2, (result.stdout + result.stderr)[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and fragment in last, last


def test_bad_input(hf_random, tmp_path, tiny_workdir):
  hf_dir, _ = hf_random
  gpt2 = tmp_path / 'gpt2'
  gpt2.mkdir()
  (gpt2 / 'config.json').write_text(json.dumps({'architectures': ['GPT2LMHeadModel'],
                                                'model_type': 'gpt2'}))
  _one_line_error(run_cli('import', f'--hf_dir={gpt2}', f'--workdir={tmp_path / "a"}'),
                  'supported: LlamaForCausalLM')
  no_weights = tmp_path / 'no_weights'
  no_weights.mkdir()
  shutil.copy(os.path.join(hf_dir, 'config.json'), no_weights / 'config.json')
  _one_line_error(run_cli('import', f'--hf_dir={no_weights}', f'--workdir={tmp_path / "b"}'),
                  'no model.safetensors')
  wrong = tmp_path / 'wrong_shape'
  shutil.copytree(hf_dir, wrong)
  config = json.load(open(wrong / 'config.json'))
  config['intermediate_size'] = 128
  (wrong / 'config.json').write_text(json.dumps(config))
  _one_line_error(run_cli('import', f'--hf_dir={wrong}', f'--workdir={tmp_path / "c"}'),
                  'config.json implies')
  assert not os.path.exists(tmp_path / 'c' / 'checkpoints')
  occupied = tmp_path / 'occupied'
  occupied.mkdir()
  (occupied / 'keep.txt').write_text('precious')
  imported = str(tmp_path / 'd')
  assert run_cli('import', f'--hf_dir={hf_dir}', f'--workdir={imported}',
                 '--noparity').returncode == 0
  _one_line_error(run_cli('export', f'--workdir={imported}', f'--out={occupied}', '--noparity'),
                  'pass --overwrite')
  assert (occupied / 'keep.txt').read_text() == 'precious'


def test_import_reads_bfloat16_checkpoints(hf_random, tmp_path):
  _, model = hf_random
  bf16_dir = tmp_path / 'bf16'
  model.to(torch.bfloat16).save_pretrained(bf16_dir)
  model.to(torch.float32)
  result = _json(run_cli('import', f'--hf_dir={bf16_dir}', f'--workdir={tmp_path / "w"}',
                         '--json'))
  assert result['parity']['max_abs_logit_diff'] < 1e-4


def test_lora_export_is_merged_and_carries_the_chat_template(tiny_workdir, tmp_path):
  """A LoRA SFT workdir exports W + scale·A·B (transformers' logits equal ours on the
  merged weights), and transformers' apply_chat_template gives exactly our ids."""
  base = fresh_workdir(tiny_workdir, tmp_path / 'base')
  common = ['--config.train.eval_every=0', '--config.train.eval_batches=1',
            '--config.train.peak_tflops=1.0', '--config.train.batch_size=4']
  assert run_cli('pretrain', '--config=configs/tiny.py', '--config.train.steps=3',
                 f'--workdir={base}', *common).returncode == 0
  sft = tmp_path / 'sft'
  result = run_cli('sft', '--config=configs/sft_tiny.py', f'--workdir={sft}',
                   f'--init_from={base}', '--config.sft.method=lora', '--config.train.steps=4',
                   '--config.train.learning_rate=0.01', '--config.train.warmup_steps=1', *common)
  assert result.returncode == 0, result.stderr[-2000:]
  out = str(tmp_path / 'hf')
  exported = _json(run_cli('export', f'--workdir={sft}', f'--out={out}', '--json'))
  assert exported['parity']['max_abs_logit_diff'] < 1e-4
  # Independently of the export's own check: the merged weights differ from the base's.
  from safetensors.numpy import load_file
  import orbax.checkpoint as ocp
  tensors = load_file(os.path.join(out, 'model.safetensors'))
  base_q = ocp.StandardCheckpointer().restore(
      str(base / 'checkpoints' / '3' / 'state'))['params']['block_0']['attn']['wq']
  exported_q = tensors['model.layers.0.self_attn.q_proj.weight']
  assert exported_q.shape == (base_q.shape[1] * base_q.shape[2], base_q.shape[0])
  assert np.abs(exported_q - base_q.reshape(base_q.shape[0], -1).T).max() > 1e-6
  from data_pipeline import chat_template
  from data_pipeline import tokenizer as tokenizer_lib
  ours = tokenizer_lib.load_tokenizer(str(sft / 'tokenizer' / 'tokenizer.model'))
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  messages = [{'role': 'system', 'content': 'Be brief.'},
              {'role': 'user', 'content': '《静夜思》的作者是谁？'},
              {'role': 'assistant', 'content': '李白'},
              {'role': 'user', 'content': 'Define "river".  Twice!'}]
  theirs = hf_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
  theirs = theirs['input_ids'] if isinstance(theirs, dict) or hasattr(theirs, 'keys') else theirs
  assert list(theirs) == [int(i) for i in chat_template.prompt_ids(ours, messages[:-1] + [
      messages[-1]])]
