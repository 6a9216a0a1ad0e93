"""What the PPO test files share: the tiny PPO flags, the two workdirs PPO starts from
(a tiny pretrain and a reward model on it) and the per-iteration metrics lines."""
from tests.cli_helpers import read_records, run_cli, tiny_pretrain

PPO = ['--config=configs/ppo_tiny.py', '--config.train.batch_size=4',
       '--config.ppo.minibatches=2', '--config.ppo.epochs=1', '--config.ppo.max_new_tokens=8',
       '--config.train.peak_tflops=1']

_ROLES = {}


def ppo_roles(tiny_workdir, tmp_path_factory):
  """A tiny pretrain workdir (the SFT role: actor and reference) and a reward model on it:
  {'p', 'r', 'root'}. Built once per session; the PPO tests only read p and r (those that
  check it hash them) and write their own folders under root."""
  if tiny_workdir not in _ROLES:
    root = tmp_path_factory.mktemp('ppo_stage')
    p = tiny_pretrain(tiny_workdir, root / 'pretrain')
    r = root / 'reward'
    result = run_cli('reward', '--config=configs/reward_tiny.py', f'--workdir={r}',
                     f'--init_from={p}', '--config.train.steps=4', '--config.train.batch_size=4',
                     '--config.train.eval_batches=1', '--config.train.eval_every=0',
                     '--config.train.peak_tflops=1')
    assert result.returncode == 0, result.stderr[-2000:]
    _ROLES[tiny_workdir] = {'p': str(p), 'r': str(r), 'root': root}
  return dict(_ROLES[tiny_workdir])


def by_step(workdir):
  """{step: record} of the PPO iteration lines of WORKDIR/metrics.jsonl."""
  return {r['step']: r for r in read_records(workdir) if 'objective/kl' in r}
