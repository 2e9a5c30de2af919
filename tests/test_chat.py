"""`llmpress chat` in a real terminal (a pty): streaming, Ctrl-C during a reply and at the prompt,
/reset /help /exit, and a conversation that outgrows the context."""
from __future__ import annotations

import io
import os
import pty
import select
import signal
import sys
import time



class Terminal:
    """`llmpress ARGV` on a pseudo-terminal: what a user types, Ctrl-C included, goes through the tty."""

    def __init__(self, argv: list[str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its controlling terminal
            os.execv(sys.executable, [sys.executable, "-m", "llmpress.cli", *argv])
        self.seen = b""

    def expect(self, text: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} in: {self.seen.decode(errors='replace')[-2000:]}"
            if select.select([self.fd], [], [], min(left, 0.2))[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child exited
                    chunk = b""
                if not chunk:
                    assert text.encode() in self.seen, f"exited before {text!r}: {self.seen.decode(errors='replace')[-2000:]}"
                self.seen += chunk
        return self.seen.decode(errors="replace")

    def read_more(self, n: int, timeout: float = 60) -> None:
        """Wait until `n` more bytes have arrived."""
        want, deadline = len(self.seen) + n, time.monotonic() + timeout
        while len(self.seen) < want:
            assert time.monotonic() < deadline, self.seen.decode(errors="replace")[-2000:]
            if select.select([self.fd], [], [], 0.2)[0]:
                self.seen += os.read(self.fd, 4096)

    def send(self, data: str) -> None:
        os.write(self.fd, data.encode())

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    self.seen += os.read(self.fd, 4096)
                except OSError:
                    pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"still running: {self.seen.decode(errors='replace')[-2000:]}")


def test_ctrl_c_stops_the_reply_and_keeps_the_session(tiny_llama):
    t = Terminal(["chat", str(tiny_llama), "--max-tokens", "900", "--temperature", "0.8", "--seed", "1"])
    t.expect("> ")
    t.send("tell me a long story\r")
    t.expect("story")
    t.read_more(40)  # some reply text; 900 tokens take far longer, so Ctrl-C lands mid-reply
    t.send("\x03")
    t.expect("(reply stopped)")
    t.send("/help\r")
    t.expect("/reset")
    t.send("/reset\r")
    t.expect("(conversation cleared)")
    while b"> " not in t.seen[t.seen.index(b"(conversation cleared)"):]:  # the next prompt is up
        t.read_more(1)
    # CPython's input() writes the prompt, then waits in select(); a SIGINT that lands between the two
    # only sets a flag that is read at the next keystroke (CI hit that window once). A person cannot type
    # within microseconds of the prompt, so the test waits as long as a person would.
    time.sleep(0.5)
    t.send("\x03")  # at the prompt: the session ends cleanly
    code = t.wait()
    assert code == 0 and "Traceback" not in t.seen.decode(errors="replace"), t.seen.decode(errors="replace")[-2000:]


def test_eof_and_exit_end_cleanly(tiny_llama):
    for ending in ("\x04", "/exit\r"):
        t = Terminal(["chat", str(tiny_llama), "--max-tokens", "3"])
        t.expect("> ")
        t.send("hi\r")
        t.expect("\n> ")  # the reply ended and the next prompt is up
        t.send(ending)
        assert t.wait() == 0 and "Traceback" not in t.seen.decode(errors="replace")


def test_outgrown_context_drops_the_oldest_turns(tiny_llama):
    t = Terminal(["chat", str(tiny_llama), "--max-model-len", "160", "--max-tokens", "16", "--temperature", "0"])
    t.expect("> ")
    for i in range(6):
        t.send(f"message number {i} with a few more words to fill the context up quickly\r")
        t.expect(f"number {i}")
        t.expect("\n> ")
    out = t.expect("dropped the oldest")
    t.send("/exit\r")
    assert t.wait() == 0, out[-2000:]
    assert "Traceback" not in out


def test_replies_stream_token_by_token(tiny_llama):
    from llmpress.chat import fit_context, stream_reply
    from llmpress.engine import LLM, SamplingParams

    llm = LLM(str(tiny_llama), max_model_len=256)
    ids, dropped = fit_context(llm, [], [{"role": "user", "content": "hi"}], 12)
    writes = []

    class Out(io.StringIO):
        def write(self, s):
            writes.append(s)
            return len(s)

    text, stopped = stream_reply(llm, ids, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True), Out())
    whole = llm.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True),
                         use_tqdm=False)[0].outputs[0].text
    assert not stopped and dropped == 0 and text == whole and "".join(writes) == whole + "\n"
    assert len([w for w in writes if w]) >= 6  # piece by piece, not one write at the end


def test_sampling_defaults_come_from_generation_config(tiny_llama, tmp_path):
    import json
    import shutil

    from llmpress.cli import _params, build_parser

    m = shutil.copytree(tiny_llama, tmp_path / "m")
    (m / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_p": 0.9}))

    class FakeEngine:  # _params reads only the model folder from the engine
        path = m

    class FakeLLM:
        engine = FakeEngine

    p = _params(build_parser().parse_args(["chat", str(m)]), FakeLLM)
    assert (p.temperature, p.top_p, p.top_k) == (0.6, 0.9, 0)
    p = _params(build_parser().parse_args(["chat", str(m), "--temperature", "0"]), FakeLLM)
    assert (p.temperature, p.top_p) == (0.0, 0.9)
