"""Rebuilds the embedded corpus from Debian's fortune packages.

Provenance script, not run at training time. Usage (on a Debian machine):
    apt-get download fortunes fortunes-min fortunes-zh
    for f in *.deb; do dpkg-deb -x "$f" x; done
    python data_pipeline/corpus/build_corpus.py x/usr/share/games/fortunes

Each fortune (text between lines holding a single '%') becomes one document.
ANSI colour escapes (used by fortunes-zh for titles) are stripped. Every 20th
document of each language goes to the validation split, so the split is
deterministic and spread over all source files.
"""
import json
import os
import re
import sys

ENGLISH_FILES = [
    'art', 'computers', 'cookie', 'debian', 'definitions', 'disclaimer',
    'drugs', 'education', 'ethnic', 'food', 'fortunes', 'goedel', 'humorists',
    'kids', 'knghtbrd', 'law', 'linux', 'linuxcookie', 'literature', 'love',
    'magic', 'medicine', 'men-women', 'miscellaneous', 'news', 'paradoxum',
    'people', 'perl', 'pets', 'platitudes', 'politics', 'pratchett', 'riddles',
    'science', 'songs-poems', 'sports', 'startrek', 'tao', 'wisdom', 'work',
    'zippy',
]
CHINESE_FILES = ['chinese', 'tang300', 'song100']
ANSI_ESCAPE = re.compile(r'\x1b\[[0-9;]*m')
VALIDATION_EVERY = 20


def read_fortunes(path):
  with open(path, encoding='utf-8') as f:
    text = ANSI_ESCAPE.sub('', f.read())
  for block in re.split(r'^%$', text, flags=re.MULTILINE):
    block = block.strip('\n')
    if block.strip():
      yield block


def write_split(out_dir, lang, files, src_dir):
  docs = [d for name in files for d in read_fortunes(os.path.join(src_dir, name))]
  splits = {'train': [], 'validation': []}
  for i, doc in enumerate(docs):
    splits['validation' if i % VALIDATION_EVERY == 0 else 'train'].append(doc)
  for split, split_docs in splits.items():
    with open(os.path.join(out_dir, f'{split}_{lang}.jsonl'), 'w', encoding='utf-8') as f:
      for doc in split_docs:
        f.write(json.dumps({'text': doc}, ensure_ascii=False) + '\n')
    print(lang, split, len(split_docs), 'documents')


if __name__ == '__main__':
  src = sys.argv[1]
  out = os.path.dirname(os.path.abspath(__file__))
  write_split(out, 'en', ENGLISH_FILES, src)
  write_split(out, 'zh', CHINESE_FILES, src)
