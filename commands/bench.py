"""`run.py bench`: speed, MFU and memory of a config (and the PyTorch peer)."""
import os

from absl import flags

from commands import common
from configs.errors import UserError

WITH_TORCH = flags.DEFINE_bool('with_torch', False, 'Also time the PyTorch peer.')
PROFILE = flags.DEFINE_bool('profile', False, 'Instead of the speed table, trace the train step '
                            'and show where its time goes, op by op (with --with_torch: by '
                            'category, beside the torch.compile peer\'s).')


def main(config, workdir):
  from bench import run_bench
  if WITH_TORCH.value and config.train.optimizer != 'adamw':
    # The peer steps torch.optim.AdamW: timing Muon against it compares two updates.
    raise UserError(f'--with_torch times the PyTorch peer\'s AdamW step, but '
                    f'train.optimizer={config.train.optimizer}; add '
                    '--config.train.optimizer=adamw to compare the same update')
  if PROFILE.value and WITH_TORCH.value:
    from bench import profile_side_by_side
    report = profile_side_by_side.side_by_side(
        config, os.path.abspath(os.path.join(workdir, 'profile')))
    print(profile_side_by_side.format_table(report))
    if common.JSON.value:
      common.print_json(report)
    return
  if PROFILE.value:
    from bench import step_profile
    report = step_profile.profile(config, os.path.abspath(os.path.join(workdir, 'profile')))
    print(step_profile.format_profile(report))
    if common.JSON.value:
      common.print_json(report)
    return
  name = os.path.splitext(os.path.basename(flags.FLAGS['config'].config_filename))[0]
  result = run_bench.run_bench(config, workdir, name, with_torch=WITH_TORCH.value)
  print(run_bench.format_table(result))
  print(f'bench: results written to {result["results_file"]}')
  if common.JSON.value:
    common.print_json(result)
