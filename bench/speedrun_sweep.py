"""The quick start's pretraining as a speedrun: recipes for `configs/tiny.py`'s
pretraining stage, each run the way the pipeline runs it, then scored.

  python bench/speedrun_sweep.py --recipes=today,d192 [--workdir=runs/speedrun]
      [--out=bench/results/speedrun-sweep.json]

Each recipe is a list of `--config.*` overrides on top of `configs/tiny.py`, run as
`run.py pipeline --stages=pretrain` in its own workdir (its tokenizer, dataset and
training, as the quick start does). Recorded per recipe: the pretraining stage's wall
time (what the pipeline prints as "pretrain done in"), its median tokens/s and steps,
then bits per byte of the final checkpoint on the whole validation split and on two
out-of-domain texts (`ood_texts`), beside xz -9e conditioned on the training text.
Results are merged into `--out` by recipe name, so recipes can be run one at a time;
run on an otherwise idle machine (times are wall-clock).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from evaluation.report import xz_baseline  # noqa: E402

INSTRUCTIONS = os.path.join(REPO, 'data_pipeline', 'instructions')
# Instruction-set tasks whose text never came from the pretraining corpus (fortunes,
# Tang and Song poems): dictionary glosses, idiom explanations, small talk.
OOD_TASKS = {'en': ('word_definition', 'chat_en', 'translate_en_zh'),
             'zh': ('idiom_meaning', 'idiom_pinyin', 'chat_zh', 'translate_zh_en')}

# configs/tiny.py before the first sweep (AdamW: 1,500 steps at 3e-3, warmup 50, attention
# block 64); every SWEEP recipe below is that plus its own changes, as they were run.
BEFORE = ['--config.train.optimizer=adamw', '--config.train.learning_rate=3e-3',
          '--config.train.warmup_steps=50', '--config.train.weight_decay=0.1',
          '--config.model.attention_block=64', '--config.train.steps=1500']
D192 = ['--config.model.d_model=192', '--config.model.mlp_dim=512', '--config.model.num_heads=6']
BATCH32 = ['--config.train.batch_size=32', '--config.train.microbatches=8',
           '--config.train.steps=750']
SWEEP = {
    'before_seed1': ['--config.seed=1'],
    'lr5e-3': ['--config.train.learning_rate=5e-3'],
    'lr2e-3': ['--config.train.learning_rate=2e-3'],
    'lr2e-3_seed1': ['--config.train.learning_rate=2e-3', '--config.seed=1'],
    'lr1.5e-3': ['--config.train.learning_rate=1.5e-3'],
    'decay_to_0': ['--config.train.min_lr_ratio=0.0'],
    'batch8': ['--config.train.batch_size=8', '--config.train.microbatches=2',
               '--config.train.steps=3000'],
    'batch32': BATCH32,
    'batch32_lr2e-3': BATCH32 + ['--config.train.learning_rate=2e-3'],
    'batch32_lr4e-3': BATCH32 + ['--config.train.learning_rate=4e-3'],
    'batch64': ['--config.train.batch_size=64', '--config.train.microbatches=16',
                '--config.train.steps=375'],
    'seq256_batch16': ['--config.data.seq_len=256', '--config.train.microbatches=8',
                       '--config.train.steps=690'],
    'seq256_2x_time': ['--config.data.seq_len=256', '--config.train.microbatches=8',
                       '--config.train.steps=1370'],
    'layers3': ['--config.model.num_layers=3', '--config.train.microbatches=8',
                '--config.train.steps=1100'],
    'd192': D192 + ['--config.train.microbatches=8', '--config.train.steps=930'],
    'tied': ['--config.model.tie_embeddings=True'],
    'kv_heads4': ['--config.model.num_kv_heads=4'],
    'heads2': ['--config.model.num_heads=2', '--config.model.num_kv_heads=2'],
    'vocab1024': ['--config.tokenizer.vocab_size=1024', '--config.train.steps=1720'],
    'lr2e-3_block32_1600': ['--config.train.learning_rate=2e-3',
                            '--config.model.attention_block=32', '--config.train.steps=1600'],
    'lr2e-3_block32_1600_seed1': ['--config.train.learning_rate=2e-3', '--config.seed=1',
                                  '--config.model.attention_block=32',
                                  '--config.train.steps=1600'],
}
# configs/tiny.py between the two sweeps: AdamW at 2e-3, attention block 32.
ADAMW = BEFORE + ['--config.train.learning_rate=2e-3', '--config.model.attention_block=32']
# The second sweep: Muon on the hidden kernels (AdamW keeps the embedding, head and norms,
# at train.learning_rate), each recipe ADAMW plus its changes, as they were run.
MUON = ['--config.train.optimizer=muon', '--config.train.muon_learning_rate=0.02',
        '--config.train.muon_ns_steps=5']
MUON3 = MUON + ['--config.train.muon_learning_rate=0.005', '--config.train.muon_ns_steps=3',
                '--config.train.steps=1400']
MUON_SWEEP = {
    'muon_lr0.02': MUON,
    'muon_lr0.04': MUON + ['--config.train.muon_learning_rate=0.04'],
    'muon_lr0.01': MUON + ['--config.train.muon_learning_rate=0.01'],
    'muon_lr0.005': MUON + ['--config.train.muon_learning_rate=0.005'],
    'muon_lr0.003': MUON + ['--config.train.muon_learning_rate=0.003'],
    'muon_lr0.005_ns3': MUON + ['--config.train.muon_learning_rate=0.005',
                                '--config.train.muon_ns_steps=3'],
    'muon_lr0.005_batch32': MUON + ['--config.train.muon_learning_rate=0.005',
                                    '--config.train.batch_size=32',
                                    '--config.train.microbatches=8', '--config.train.steps=750'],
    'muon_lr0.0075_1350': MUON + ['--config.train.muon_learning_rate=0.0075',
                                  '--config.train.steps=1350'],
    'muon_lr0.01_1350': MUON + ['--config.train.muon_learning_rate=0.01',
                                '--config.train.steps=1350'],
    'muon3_1400': MUON3,
    'muon3_1400_decay_to_0': MUON3 + ['--config.train.min_lr_ratio=0.0'],
    'muon3_1400_adam4e-3': MUON3 + ['--config.train.learning_rate=4e-3'],
    'muon3_1400_adam6e-3': MUON3 + ['--config.train.learning_rate=6e-3'],
    'muon3_1400_adam4e-3_seed1': MUON3 + ['--config.train.learning_rate=4e-3', '--config.seed=1'],
    'muon3_1400_adam4e-3_wd0': MUON3 + ['--config.train.learning_rate=4e-3',
                                        '--config.train.weight_decay=0.0'],
    'muon3_1400_adam4e-3_warm20': MUON3 + ['--config.train.learning_rate=4e-3',
                                           '--config.train.warmup_steps=20'],
    'muon3_1400_adam4e-3_muon4e-3': MUON3 + ['--config.train.learning_rate=4e-3',
                                             '--config.train.muon_learning_rate=0.004'],
    'muon3_1400_adam4e-3_muon6e-3': MUON3 + ['--config.train.learning_rate=4e-3',
                                             '--config.train.muon_learning_rate=0.006'],
}
# 'now' is today's configs/tiny.py: ADAMW with Muon at 8e-3 for 1,400 steps (2 AOL
# Newton-Schulz iterations), AdamW at 4e-3, warmup 20 and no weight decay.
RECIPES = {'before': BEFORE, 'adamw': ADAMW, 'adamw_seed1': ADAMW + ['--config.seed=1'],
           'now': [], 'now_seed1': ['--config.seed=1'],
           # Muon at 6e-3 (the second sweep's best), then the iteration variants of it.
           'muon6e-3': ['--config.train.muon_learning_rate=6e-3'],
           'muon6e-3_seed1': ['--config.train.muon_learning_rate=6e-3', '--config.seed=1'],
           'muon6e-3_ns3': ['--config.train.muon_learning_rate=6e-3',
                            '--config.train.muon_ns_steps=3',
                            '--config.train.muon_preconditioning=frobenius'],
           'muon6e-3_ns3_seed1': ['--config.train.muon_learning_rate=6e-3', '--config.seed=1',
                                  '--config.train.muon_ns_steps=3',
                                  '--config.train.muon_preconditioning=frobenius'],
           'muon6e-3_ns2_frobenius': ['--config.train.muon_learning_rate=6e-3',
                                      '--config.train.muon_preconditioning=frobenius'],
           'muon6e-3_seed1_min_lr0.3': ['--config.train.muon_learning_rate=6e-3',
                                        '--config.seed=1', '--config.train.min_lr_ratio=0.3'],
           'muon6e-3_seed1_beta0.9': ['--config.train.muon_learning_rate=6e-3',
                                      '--config.seed=1', '--config.train.muon_beta=0.9'],
           'muon1e-2_seed1': ['--config.train.muon_learning_rate=1e-2', '--config.seed=1'],
           **{name: BEFORE + changes for name, changes in SWEEP.items()},
           **{name: ADAMW + changes for name, changes in MUON_SWEEP.items()}}


def ood_texts(out_dir):
  """{lang: path} of JSONL files {"text": user + newline + assistant}, one record per
  conversation of OOD_TASKS in the embedded instruction set (train and validation)."""
  os.makedirs(out_dir, exist_ok=True)
  docs = {lang: [] for lang in OOD_TASKS}
  for name in sorted(os.listdir(INSTRUCTIONS)):
    if not name.endswith('.jsonl'):
      continue
    with open(os.path.join(INSTRUCTIONS, name), encoding='utf-8') as f:
      for line in f:
        record = json.loads(line)
        lang = next((k for k, tasks in OOD_TASKS.items() if record['task'] in tasks), None)
        if lang:
          docs[lang].append('\n'.join(m['content'] for m in record['messages']))
  out = {}
  for lang, texts in docs.items():
    out[lang] = os.path.join(out_dir, f'ood_{lang}.jsonl')
    with open(out[lang], 'w', encoding='utf-8') as f:
      for text in texts:
        f.write(json.dumps({'text': text}, ensure_ascii=False) + '\n')
  return out


def jsonl_text(paths):
  docs = []
  for path in paths:
    with open(path, encoding='utf-8') as f:
      docs += [json.loads(line)['text'] for line in f]
  return xz_baseline.as_text(docs).encode('utf-8')


def xz_bits_per_byte(ood):
  """xz -9e bits/byte of the validation split and each OOD text, each after the
  pretraining corpus's training text (the report card's baseline)."""
  corpus = os.path.join(REPO, 'data_pipeline', 'corpus')
  train = jsonl_text([os.path.join(corpus, f'train_{lang}.jsonl') for lang in ('en', 'zh')])
  val = jsonl_text([os.path.join(corpus, f'validation_{lang}.jsonl') for lang in ('en', 'zh')])
  return {'validation': xz_baseline.extra_bits_per_byte(train, val),
          'ood': {lang: xz_baseline.extra_bits_per_byte(train, jsonl_text([path]))
                  for lang, path in ood.items()}}


def run_py(*args):
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'run.py'), *args], cwd=REPO,
                        capture_output=True, text=True)
  if proc.returncode:
    raise SystemExit(f'run.py {" ".join(args)} failed:\n{proc.stdout[-2000:]}'
                     f'{proc.stderr[-2000:]}')
  return proc.stdout


def eval_bits_per_byte(workdir, eval_files=()):
  args = ['eval', '--config=configs/tiny.py', f'--workdir={workdir}', '--json']
  if eval_files:
    args.append('--eval_files=' + ','.join(eval_files))
  return json.loads(run_py(*args).strip().splitlines()[-1])['bits_per_byte']


def run_recipe(name, overrides, workdir, ood):
  shutil.rmtree(workdir, ignore_errors=True)
  run_py('pipeline', '--config=configs/tiny.py', f'--workdir={workdir}', '--stages=pretrain',
         *overrides)
  with open(os.path.join(workdir, 'pipeline.json')) as f:
    stage = json.load(f)['stages']['pretrain']
  pretrain_dir = stage['folder']
  with open(os.path.join(pretrain_dir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  speeds = [r['tokens_per_s'] for r in records if 'tokens_per_s' in r]
  evals = [r for r in records if 'eval_loss' in r]
  return {'recipe': name, 'overrides': overrides, 'pretrain_s': stage['wall_s'],
          'steps': stage['step'], 'tokens_per_s': statistics.median(speeds),
          'eval_curve': [(r['step'], r['eval_loss']) for r in evals],
          'validation_bpb': eval_bits_per_byte(pretrain_dir),
          'ood_bpb': {lang: eval_bits_per_byte(pretrain_dir, [path])
                      for lang, path in ood.items()}}


def format_table(results):
  lines = ['| recipe | tokens/s | steps | pretrain time | validation bits/byte | OOD en | OOD zh |',
           '|---|---:|---:|---:|---:|---:|---:|']
  for r in results:
    minutes, seconds = divmod(round(r['pretrain_s']), 60)
    lines.append(f'| {r["recipe"]} | {r["tokens_per_s"]:,.0f} | {r["steps"]:,} | '
                 f'{minutes}m{seconds:02d}s | {r["validation_bpb"]:.3f} | '
                 f'{r["ood_bpb"]["en"]:.3f} | {r["ood_bpb"]["zh"]:.3f} |')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--recipes', default=','.join(RECIPES))
  parser.add_argument('--workdir', default=os.path.join(REPO, 'runs', 'speedrun'))
  parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'results',
                                                    'speedrun-sweep.json'))
  args = parser.parse_args()
  ood = ood_texts(os.path.join(args.workdir, 'ood'))
  saved = {'recipes': {}}
  if os.path.exists(args.out):
    with open(args.out) as f:
      saved = json.load(f)
  if 'xz' not in saved:
    saved['xz'] = xz_bits_per_byte(ood)
  for name in args.recipes.split(','):
    try:
      result = run_recipe(name, RECIPES[name], os.path.join(args.workdir, name), ood)
    except SystemExit as e:  # a recipe the corpus or machine cannot run: say so, go on
      print(f'{name}: {e}', flush=True)
      continue
    saved['recipes'][name] = result
    print(format_table([result]).splitlines()[-1], flush=True)
    with open(args.out, 'w') as f:
      json.dump(saved, f, indent=1, ensure_ascii=False)
  print(format_table(list(saved['recipes'].values())))
  print(f'xz -9e: validation {saved["xz"]["validation"]:.3f}, OOD en '
        f'{saved["xz"]["ood"]["en"]:.3f}, zh {saved["xz"]["ood"]["zh"]:.3f}')


if __name__ == '__main__':
  main()
