"""README.md and docs/: every relative link and picture points at a file that exists and every #anchor at a
heading of its page; README's first code block is the main command and the test command that CI runs; every
`docs/method.md §x.y` that the code cites is a section of docs/method.md."""

import glob
import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted([os.path.join(REPO, 'README.md')] + glob.glob(os.path.join(REPO, 'docs', '**', '*.md'), recursive=True))
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
HEADING = re.compile(r'^(#{1,6})\s+(.*?)\s*#*\s*$')
FENCE = re.compile(r'^\s*(```|~~~)')


def _prose_lines(text: str) -> list:
    """The lines of a Markdown page outside fenced code blocks."""
    lines, in_code = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code:
            lines.append(line)
    return lines


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: markup and punctuation dropped, lower case, spaces as hyphens."""
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading).replace('`', '')
    text = re.sub(r'[^\w\- ]', '', text.lower())
    return text.replace(' ', '-')


def anchors(path: str) -> set:
    """Every anchor of a page; repeated headings get -1, -2, ... as on GitHub."""
    seen, result = {}, set()
    with open(path, encoding='utf-8') as file:
        for line in _prose_lines(file.read()):
            match = HEADING.match(line)
            if match:
                anchor = github_anchor(match.group(2))
                count = seen.get(anchor, 0)
                seen[anchor] = count + 1
                result.add(anchor if count == 0 else f'{anchor}-{count}')
    return result


def links(path: str) -> list:
    """The link targets of a page outside code: (line number, target)."""
    with open(path, encoding='utf-8') as file:
        text = file.read()
    result, in_code = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_code = not in_code
            continue
        if not in_code:
            prose = re.sub(r'`[^`]*`', '', line)
            result.extend((number, target) for target in LINK.findall(prose))
    return result


def test_anchor_rule_on_known_headings():
    # Anchors as GitHub renders them for headings of these pages.
    assert github_anchor('Training speed on the CPU') == 'training-speed-on-the-cpu'
    assert github_anchor('`gen_samples.py`') == 'gen_samplespy'
    assert github_anchor('gen_samples.py') == 'gen_samplespy'
    assert github_anchor('Continuing a run, starting a stage') == 'continuing-a-run-starting-a-stage'
    assert github_anchor('Using the released 3DPortraitGAN models') == 'using-the-released-3dportraitgan-models'
    assert github_anchor('9.5 Continuing a run and starting a stage') == '95-continuing-a-run-and-starting-a-stage'


@pytest.mark.parametrize('page', PAGES, ids=lambda path: os.path.relpath(path, REPO))
def test_relative_links_resolve(page):
    broken = []
    for number, target in links(page):
        if re.match(r'^[a-z][a-z0-9+.-]*:', target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition('#')
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(resolved):
            broken.append(f'line {number}: {target}: no file {os.path.relpath(resolved, REPO)}')
        elif anchor and (not resolved.endswith('.md') or anchor not in anchors(resolved)):
            broken.append(f'line {number}: {target}: no heading #{anchor} in {os.path.relpath(resolved, REPO)}')
    assert not broken, '\n'.join(broken)


def test_every_docs_page_is_reachable_from_readme():
    """Every page of docs/ is one link from README.md, or one link from a page README links to."""
    readme = os.path.join(REPO, 'README.md')

    def linked_pages(page):
        targets = (target.partition('#')[0] for _, target in links(page))
        return {os.path.normpath(os.path.join(os.path.dirname(page), t)) for t in targets if t.endswith('.md')}

    first = linked_pages(readme)
    reachable = set(first)
    for page in first:
        if os.path.exists(page):
            reachable |= linked_pages(page)
    assert set(PAGES) - {readme} <= reachable, sorted(set(PAGES) - {readme} - reachable)


def test_readme_first_code_block_is_the_main_and_the_test_command():
    with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as file:
        text = file.read()
    block = re.search(r'^```[^\n]*\n(.*?)^```', text, re.S | re.M).group(1)
    commands = [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith('#')]
    assert commands == ['bash quickstart.sh', 'bash setup.sh && .venv/bin/python -m pytest -q']
    with open(os.path.join(REPO, '.ci', 'run'), encoding='utf-8') as file:
        assert commands[1] in file.read()
    assert os.path.exists(os.path.join(REPO, 'quickstart.sh'))


def test_quickstart_script_parses_and_stops_on_the_first_error():
    path = os.path.join(REPO, 'quickstart.sh')
    subprocess.run(['bash', '-n', path], check=True)
    with open(path, encoding='utf-8') as file:
        assert 'set -euo pipefail' in file.read()


def test_method_sections_cited_by_the_code_exist():
    sections = set()
    with open(os.path.join(REPO, 'docs', 'method.md'), encoding='utf-8') as file:
        for line in _prose_lines(file.read()):
            match = re.match(r'^#{2,3} (\d+(?:\.\d+)?)[ .]', line)
            if match:
                sections.add(match.group(1))
    tracked = subprocess.run(['git', 'ls-files'], cwd=REPO, capture_output=True, text=True, check=True).stdout
    cited = set()
    for name in tracked.split():
        if name.endswith(('.py', '.sh', '.md', '.cpp', '.cu')) and os.path.exists(os.path.join(REPO, name)):
            with open(os.path.join(REPO, name), encoding='utf-8') as file:
                text = file.read()
            for group in re.findall(r'method\.md\)?((?:,? ?§\d+(?:\.\d+)?(?:[-–]§?\d+(?:\.\d+)?)?)+)', text):
                cited.update((name, section) for section in re.findall(r'§(\d+(?:\.\d+)?)', group))
    assert sections, 'no numbered sections found in docs/method.md'
    assert cited, 'no citation of docs/method.md found'
    missing = sorted(f'{name}: §{section}' for name, section in cited if section not in sections)
    assert not missing, missing
