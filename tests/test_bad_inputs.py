"""benchmarks/bad_inputs.py: the verdict on made-up outcomes, the shape of the case list, and the --quick
subset run for real (every case clean)."""

import re

from benchmarks.bad_inputs import CASES, END, WORKING, Case, Outcome, main, verdict

CLICK_ERROR = (
    "Usage: gen_samples.py [OPTIONS]\nTry 'gen_samples.py --help' for help.\n\n"
    "Error: Invalid value for '--trunc': 'nan' is not a finite number\n"
)
TRACEBACK = 'Traceback (most recent call last):\n  File "gen_samples.py", line 9, in <module>\nValueError: nan\n'


def test_verdict_on_made_up_outcomes():
    case = Case('gen_samples', '--trunc nan', '--trunc')
    assert verdict(case, Outcome(2, CLICK_ERROR)) == ''
    assert verdict(case, Outcome(1, TRACEBACK + 'Error: something\n')) == 'traceback'
    assert verdict(case, Outcome(0, 'wrote 1 seeds to out\n')) == 'exit code 0: the bad input was accepted'
    assert verdict(Case('gen_samples', '--trunc 1e30', must=END), Outcome(0, 'wrote 1 seeds to out\n')) == ''
    assert verdict(case, Outcome(None, 'seeds:   0%|\n', seconds=120)) == 'timed out after 120 s'
    assert verdict(case, Outcome(-11, '')) == 'killed by SIGSEGV'
    assert verdict(case, Outcome(139, 'Segmentation fault (core dumped)\n')).startswith('crashed')
    assert verdict(case, Outcome(2, CLICK_ERROR, code_ran=True)).startswith('code from the input ran')
    assert verdict(case, Outcome(1, '')) == 'exit code 1 without a message'
    # A clean message is not enough when a partial output or a temporary file was left.
    assert verdict(case, Outcome(2, CLICK_ERROR, left=('out/.a.png.x1y2z3q4.tmp', 'out/b.mrc'))) == (
        'left out/.a.png.x1y2z3q4.tmp and 1 more'
    )
    # The last line must be the error: a message followed by other output is not clean.
    assert verdict(case, Outcome(2, CLICK_ERROR + 'leaked semaphore objects\n')).startswith(
        'the last line does not say'
    )
    assert (
        verdict(Case('gen_samples', '--trunc nan'), Outcome(1, 'something went wrong\n'))
        == 'the last line is not an error message'
    )
    # A message that names the problem without click's prefix is clean when it holds `says`.
    assert (
        verdict(Case('dataset_tool check', '--data x', 'problems found'), Outcome(1, 'x: bad\n2 problems found\n'))
        == ''
    )


def test_the_cases_cover_every_tool_and_the_quick_subset_is_small():
    assert len(CASES) >= 120 and len(set(CASES)) == len(CASES)
    tools = {case.tool.split()[0] for case in CASES}
    assert tools == {
        'train',
        'gen_samples',
        'gen_videos',
        'extract_shapes',
        'calc_metrics',
        'dataset_tool',
        'invert',
        'visualizer',
    }
    assert all(case.tool in WORKING for case in CASES)
    quick = [case for case in CASES if case.quick]
    assert 10 <= len(quick) <= 20 and {case.tool.split()[0] for case in quick} == tools


def test_quick_subset_is_all_clean(capsys):
    assert main(['--quick']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    tried = re.fullmatch(r'(\d+) tried, (\d+) clean', lines[-1])
    assert tried and tried.group(1) == tried.group(2) and int(tried.group(1)) >= 12, '\n'.join(lines)
