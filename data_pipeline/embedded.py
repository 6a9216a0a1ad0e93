"""Paths of the corpus shipped in the repo (English fortunes + Chinese poetry)."""
import os

CORPUS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'corpus')
TRAIN_FILES = (os.path.join(CORPUS_DIR, 'train_en.jsonl'),
               os.path.join(CORPUS_DIR, 'train_zh.jsonl'))
VALIDATION_FILES = (os.path.join(CORPUS_DIR, 'validation_en.jsonl'),
                    os.path.join(CORPUS_DIR, 'validation_zh.jsonl'))


def train_files(config):
  return tuple(config.data.train_files) or TRAIN_FILES


def eval_files(config):
  return tuple(config.data.eval_files) or VALIDATION_FILES


# The embedded bilingual instruction set (SFT default); see instructions/README.md.
INSTRUCTIONS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'instructions')
INSTRUCTION_TRAIN_FILES = (os.path.join(INSTRUCTIONS_DIR, 'train.jsonl'),
                           os.path.join(INSTRUCTIONS_DIR, 'train_cc_cedict.jsonl'))
INSTRUCTION_VALIDATION_FILES = (os.path.join(INSTRUCTIONS_DIR, 'validation.jsonl'),
                                os.path.join(INSTRUCTIONS_DIR, 'validation_cc_cedict.jsonl'))


def chat_train_files(config):
  return tuple(config.data.train_files) or INSTRUCTION_TRAIN_FILES


def chat_eval_files(config):
  return tuple(config.data.eval_files) or INSTRUCTION_VALIDATION_FILES
