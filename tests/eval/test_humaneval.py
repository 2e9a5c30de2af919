"""HumanEval's sandbox stops runaway or harmful programs and the run goes on; canonical
solutions pass and wrong ones fail; pass@k matches its combinatorial definition."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from llmpress.eval.humaneval import load_problems, pass_at_k, program_for, run_program
from llmpress.eval.tasks import TaskDataError


@pytest.fixture(scope="module")
def problems():
    try:
        return load_problems()
    except TaskDataError as e:
        pytest.skip(str(e))


def test_canonical_solutions_pass_and_wrong_ones_fail(problems):
    assert len(problems) == 164
    for p in problems[:6]:
        assert run_program(program_for(p, p["canonical_solution"])).passed, p["task_id"]
        assert run_program(program_for(p, "    return None\n")).status == "failed", p["task_id"]


def test_infinite_loop_is_killed_and_the_next_program_runs():
    o = run_program("while True:\n    pass\n", timeout=2)
    assert o.status == "timeout"
    assert run_program("assert 1 + 1 == 2\n").passed


def test_writes_outside_the_sandbox_are_denied(tmp_path):
    target = tmp_path / "escaped.txt"
    o = run_program(f"open({str(target)!r}, 'w').write('x')\n")
    assert o.status == "denied" and not target.exists()
    o = run_program(f"import os\nos.remove({str(Path.home() / '.bashrc')!r})\n")
    assert o.status == "denied"
    assert run_program("open('inside.txt', 'w').write('ok')\nassert open('inside.txt').read() == 'ok'\n").passed


def test_sockets_and_subprocesses_are_denied():
    assert run_program("import socket\nsocket.create_connection(('127.0.0.1', 9))\n").status == "denied"
    assert run_program("import socket\ns = socket.socket()\n").status == "denied"
    assert run_program("import subprocess\nsubprocess.run(['true'])\n").status == "denied"
    assert run_program("import os\nos.system('true')\n").status == "denied"
    assert run_program(f"import os, signal\nos.kill({os.getpid()}, signal.SIGTERM)\n").status == "denied"


def test_memory_bomb_fails_cleanly():
    assert run_program("x = bytearray(8 << 30)\n", memory_mb=256).status == "failed"


def test_pass_at_k_matches_definition():
    for n, c, k in [(10, 0, 1), (10, 3, 1), (10, 3, 5), (10, 9, 10), (20, 7, 10), (5, 5, 1)]:
        want = 1.0 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)
