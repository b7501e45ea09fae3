"""`alignflow chat`: command parsing, history, streaming, Ctrl-C / Ctrl-D at a terminal, errors."""

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from alignflow.evaluation import chat
from alignflow.evaluation.chat import Command, parse_command

EXE = str(Path(sys.executable).parent / "alignflow")


def test_parse_command():
    assert parse_command("  hello there \n") == Command("message", "hello there")
    assert parse_command("") == parse_command("   \n") == Command("empty")
    assert parse_command("/reset") == Command("reset")
    assert parse_command("/EXIT") == parse_command("/quit") == Command("exit")
    assert parse_command("/help") == Command("help")
    assert parse_command("/system  You are terse. ") == Command("system", "You are terse.")
    assert parse_command("/system") == Command("system", "")
    assert parse_command("/bogus arg") == Command("unknown", "/bogus")
    assert parse_command("//etc is a dir") == Command("message", "/etc is a dir")


def test_expand_ref():
    dirs = {Path("models/sft"), Path("models/policy"), Path("sft-local")}
    is_dir = dirs.__contains__
    assert chat.expand_ref("sft", is_dir) == str(Path("models/sft"))
    assert chat.expand_ref("sft-local", is_dir) == "sft-local"  # a dir of that name wins
    for ref in ("champion", "models:/alignflow-policy/1", "tiny:llama", "models/sft", "nothere"):
        assert chat.expand_ref(ref, is_dir) == ref


def fake_stream(seen):
    def stream_reply(model, tokenizer, messages, **kw):
        seen.append(json.loads(json.dumps(messages)))
        yield from (f"reply{len(seen)} ", "from ", model)

    return stream_reply


def test_repl_keeps_history_resets_and_sets_the_system_prompt(monkeypatch):
    seen = []
    monkeypatch.setattr(chat, "stream_reply", fake_stream(seen))
    out = io.StringIO()
    stdin = io.StringIO("hello\n\nhow are you?\n/reset\nagain\n/system Be brief.\nshort?\n/system\n/bogus\n"
                        "/help\n/exit\nnever read\n")
    speaker = chat.Speaker("assistant", "m", None)
    assert chat.repl([speaker], stdin=stdin, stdout=out) == 4
    assert [[m["role"] for m in c] for c in seen] == [
        ["user"], ["user", "assistant", "user"], ["user"], ["system", "user", "assistant", "user"]]
    assert seen[1][:2] == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "reply1 from m"}]
    assert seen[3][0] == {"role": "system", "content": "Be brief."}
    assert speaker.conversation.system is None  # `/system` alone removed it
    text = out.getvalue()
    assert text.count("assistant> ") == 4 and "assistant> reply2 from m\n" in text
    assert "(conversation cleared)" in text and "unknown command /bogus" in text and "/system <text>" in text
    assert "you>" not in text  # no prompt when stdin is not a terminal


def test_repl_compare_gives_each_model_its_own_history(monkeypatch):
    seen = []
    monkeypatch.setattr(chat, "stream_reply", fake_stream(seen))
    out = io.StringIO()
    a, b = chat.Speaker("sft", "A", None), chat.Speaker("champion", "B", None)
    assert chat.repl([a, b], system="Sys", stdin=io.StringIO("one\ntwo\n"), stdout=out) == 4
    lines = out.getvalue().splitlines()
    assert [line.split("> ")[0] for line in lines] == ["sft", "champion", "sft", "champion"]
    assert [t["content"] for t in a.conversation.turns] == ["one", "reply1 from A", "two", "reply3 from A"]
    assert [t["content"] for t in b.conversation.turns] == ["one", "reply2 from B", "two", "reply4 from B"]
    assert seen[0][0] == {"role": "system", "content": "Sys"}


def test_a_stopped_reply_keeps_what_was_said_and_ends_the_turn(monkeypatch):
    def interrupted(model, tokenizer, messages, *, cancel, **kw):
        yield from ("\n\n", " partial", " answer")
        if messages[-1]["content"].startswith("stop"):
            cancel.set()  # what Ctrl-C's handler does mid-reply
            yield " cut"  # what was already generated still arrives
            return
        yield " done"

    monkeypatch.setattr(chat, "stream_reply", interrupted)
    out = io.StringIO()
    a, b = chat.Speaker("a", None, None), chat.Speaker("b", None, None)
    chat.repl([a, b], stdin=io.StringIO("stop now\nnext\n"), stdout=out)
    assert out.getvalue().splitlines() == ["a> partial answer cut [stopped]", "a> partial answer done",
                                           "b> partial answer done"]
    assert [t["content"] for t in a.conversation.turns] == ["stop now", "partial answer cut", "next",
                                                            "partial answer done"]
    assert [t["content"] for t in b.conversation.turns] == ["next", "partial answer done"]  # skipped after Ctrl-C


def test_a_failed_reply_is_reported_and_the_session_goes_on(monkeypatch, capsys):
    def broken(model, tokenizer, messages, **kw):
        if len(messages) == 1 and messages[0]["content"] == "boom":
            raise ValueError("template says no\nmore detail")
        yield "fine"

    monkeypatch.setattr(chat, "stream_reply", broken)
    speaker = chat.Speaker("assistant", None, None)
    assert chat.repl([speaker], stdin=io.StringIO("boom\nok\n"), stdout=io.StringIO()) == 1
    assert [t["content"] for t in speaker.conversation.turns] == ["ok", "fine"]
    assert "ValueError: template says no\n" in capsys.readouterr().err


@pytest.mark.slow
def test_stream_reply_streams_and_stops_on_the_flag():
    from alignflow.models import load_causal_lm

    model, tok = load_causal_lm("tiny:llama")
    msgs = [{"role": "user", "content": "hello"}]
    full = list(chat.stream_reply(model, tok, msgs, max_new_tokens=64, temperature=0.0, seed=0,
                                  cancel=threading.Event()))
    assert len(full) > 1  # arrives in pieces
    cancel, got = threading.Event(), []
    for chunk in chat.stream_reply(model, tok, msgs, max_new_tokens=100_000, temperature=0.7, seed=0, cancel=cancel):
        got.append(chunk)
        if len(got) == 3:
            cancel.set()
    assert 3 <= len(got) < 20  # stopped within a step or two of the flag, not after 100k tokens


@pytest.mark.slow
def test_chat_cli_with_a_model_dir_and_a_missing_alias(tmp_path, monkeypatch, capsys):
    from alignflow.models import load_causal_lm, save_model_dir

    model, tok = load_causal_lm("tiny:llama")
    save_model_dir(model, tok, tmp_path / "models/sft", {"base": "tiny:llama"})
    # `sft` is short for models/sft; piped stdin: no prompt, no help, one labelled reply per line read.
    proc = subprocess.run([EXE, "chat", "--model", "sft", "--max-new-tokens", "4"],
                          input="hi there\n/exit\n", capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("assistant> ") == 1 and proc.stdout.startswith("assistant> ")

    # No registry alias in an empty tracking DB: a clear error, exit code 2.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    assert chat.chat_main("champion") == 2
    assert "no 'champion' alias" in capsys.readouterr().err


@pytest.mark.parametrize("ref", ["models:/no-such-model/1", "no/such/dir", "."])
def test_a_bad_model_ref_is_one_line_and_exit_2(tmp_path, ref):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run([EXE, "chat", "--model", ref], input="", capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("loading ")]
    assert len(lines) == 1 and lines[0].startswith("alignflow chat: error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.slow
def test_chat_in_a_terminal_streams_stops_on_ctrl_c_and_leaves_on_ctrl_d(tmp_path):
    pexpect = pytest.importorskip("pexpect")
    from alignflow.models import load_causal_lm, save_model_dir

    model, tok = load_causal_lm("tiny:llama")
    save_model_dir(model, tok, tmp_path / "m", {"base": "tiny:llama"})
    env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}
    shown_prompt = "you>"  # prompt_toolkit draws "you> " as "you>" and a cursor move
    child = pexpect.spawn(EXE, ["chat", "--model", str(tmp_path / "m"), "--max-new-tokens", "100000"],
                          cwd=tmp_path, env=env, encoding="utf-8", timeout=120, dimensions=(50, 200))
    try:
        child.expect_exact(shown_prompt)

        def stopped_reply(prompt: str) -> tuple[float, str, float]:
            """Send `prompt`; (s to the first streamed text, text streamed in the next 1.5 s, s from
            Ctrl-C to the next prompt)."""
            child.sendline(prompt)
            start = time.perf_counter()
            child.expect_exact("assistant> ")
            child.expect(r"\S")
            first = time.perf_counter() - start
            more, until = "", time.perf_counter() + 1.5
            while time.perf_counter() < until:
                try:
                    more += child.read_nonblocking(4096, timeout=0.2)
                except pexpect.TIMEOUT:
                    pass
            assert shown_prompt not in more  # still replying: 100k tokens take minutes
            child.sendintr()
            t0 = time.perf_counter()
            child.expect_exact("[stopped]")
            child.expect_exact(shown_prompt)
            return first, more, time.perf_counter() - t0

        first, more, stop = stopped_reply("hello")
        assert len(more.strip()) > 20, more  # the reply keeps arriving while it is generated
        assert stop < 10
        print(f"\nfirst streamed text {first:.2f} s after Enter; Ctrl-C -> prompt {stop:.2f} s")

        # The session goes on: commands, Ctrl-C at the prompt, another reply.
        child.sendline("/reset")
        child.expect_exact("(conversation cleared)")
        child.expect_exact(shown_prompt)
        child.send("half a line")
        child.sendintr()  # at the prompt: drops the line
        child.expect_exact(shown_prompt)
        first, more, stop = stopped_reply("again")
        assert more.strip() and stop < 10

        child.sendcontrol("d")
        child.expect(pexpect.EOF)
        assert "Traceback" not in child.before
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, (child.exitstatus, child.signalstatus)
