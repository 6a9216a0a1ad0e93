"""The chat page in headless Chromium (Debian's `chromium`, driven by Playwright by its
path: nothing downloads a browser): a Chinese message gets the streamed answer the
API gives; model and user text are shown as text, never as HTML."""
import shutil
import time

import httpx
import pytest

pytestmark = pytest.mark.slow
QUESTION = '你好，请介绍一下你自己。'


def _api_answer(serve_url, messages):
  body = {'messages': messages, 'temperature': 0, 'max_tokens': 24}
  return httpx.post(serve_url + '/v1/chat/completions', json=body).json()[
      'choices'][0]['message']['content']


def _ask(page, text):
  count = page.locator('#messages .assistant').count()
  page.fill('#input', text)
  page.click('#send')
  done = page.locator('#messages .assistant').nth(count)
  done.wait_for(state='attached')
  page.wait_for_function(
      f'document.querySelectorAll("#messages .assistant")[{count}].dataset.state === "done"',
      timeout=60_000)
  return done.text_content()


def test_page_streams_a_chinese_answer(serve_url):
  executable = shutil.which('chromium')
  if executable is None:
    pytest.skip('no chromium (bash setup.sh test installs Debian\'s chromium)')
  from playwright.sync_api import sync_playwright
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=executable, headless=True,
                                args=['--no-sandbox'])
    try:
      page = browser.new_page()
      page.goto(serve_url + '/')
      page.fill('#temperature', '0')
      page.fill('#max_tokens', '24')
      # count how often the answer's text changes while it streams
      page.evaluate('''() => { window.updates = 0; new MutationObserver(() => window.updates++)
          .observe(document.getElementById("messages"),
                   {subtree: true, childList: true, characterData: true}); }''')
      answer = _ask(page, QUESTION)
      assert answer and answer == _api_answer(serve_url, [{'role': 'user', 'content': QUESTION}])
      assert page.evaluate('window.updates') > 3  # streamed, not one final write
      assert '\ufffd' not in answer
      # regenerate (greedy): the same answer replaces the last one
      page.click('#regenerate')
      page.wait_for_function('document.querySelector("#messages .assistant:last-child")'
                             '?.dataset.state === "done"', timeout=60_000)
      assert page.locator('#messages .assistant').count() == 1
      assert page.locator('#messages .assistant').last.text_content() == answer
      # a second turn carries the history and the system prompt
      page.click('#reset')
      page.fill('#system', 'Answer briefly.')
      injected = '<img src=x onerror="window.pwned=1"><b>bold</b>'
      second = _ask(page, injected)
      assert second == _api_answer(serve_url, [{'role': 'system', 'content': 'Answer briefly.'},
                                               {'role': 'user', 'content': injected}])
      assert page.locator('#messages .user').last.text_content() == injected
      assert page.locator('#messages img, #messages b').count() == 0
      assert page.evaluate('window.pwned') is None
      # Stop: the answer ends where it was, and the server frees the slot at once
      page.fill('#max_tokens', '200')
      long_one = next(q for q in (QUESTION, 'Hello', 'Tell me a story.', '李白')
                      if httpx.post(serve_url + '/v1/chat/completions', json={
                          'messages': [{'role': 'system', 'content': 'Answer briefly.'},
                                       {'role': 'user', 'content': q}], 'temperature': 0,
                          'max_tokens': 200}).json()['choices'][0]['finish_reason'] == 'length')
      page.click('#reset')
      before = httpx.get(serve_url + '/stats').json()['decode_steps']
      page.fill('#input', long_one)
      page.click('#send')
      page.wait_for_function('document.querySelector("#messages .assistant:last-child")'
                             '?.textContent.length > 0', timeout=60_000)
      page.click('#stop')
      page.wait_for_function('document.querySelector("#messages .assistant:last-child")'
                             '?.dataset.state === "done"', timeout=60_000)
      deadline = time.time() + 60  # a bound for a broken server, not a speed check
      while httpx.get(serve_url + '/stats').json()['busy_slots'] and time.time() < deadline:
        time.sleep(0.05)
      stats = httpx.get(serve_url + '/stats').json()
      assert stats['busy_slots'] == 0 and stats['decode_steps'] - before < 200
    finally:
      browser.close()
