"""`run.py import`: a local Hugging Face LLaMA directory → step 0 of WORKDIR/checkpoints."""
from absl import flags

from commands import common

HF_DIR = flags.DEFINE_string('hf_dir', None, 'A local Hugging Face LLaMA directory.')
PARITY = common.define('bool', 'parity', True, 'Compare logits with transformers.')


def main(config, workdir):
  from interop import hf_import
  result = hf_import.run_import(config, HF_DIR.value, workdir, parity=PARITY())
  print(f'import: {result["params"]:,} params from {result["hf_dir"]} saved as step 0 in '
        f'{workdir}/checkpoints ({result["seconds"]:.1f} s); continue with '
        f'--config=configs/from_workdir.py:{workdir}')
  if common.JSON.value:
    common.print_json(result)
