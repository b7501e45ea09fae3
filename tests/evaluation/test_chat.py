"""`alignflow chat`: a REPL over stdin, with history, /reset and /exit."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_repl_keeps_history_and_resets(monkeypatch):
    from alignflow.evaluation import chat
    from alignflow.models import load_causal_lm
    from alignflow.rlhf import generation

    model, tok = load_causal_lm("tiny:llama")
    seen = []
    real = generation.generate

    def spy(m, t, prompts, **kw):
        seen.append(json.loads(json.dumps(prompts[0])))
        return real(m, t, prompts, **kw)

    monkeypatch.setattr(generation, "generate", spy)
    out = io.StringIO()
    stdin = io.StringIO("hello\n\nhow are you?\n/reset\nagain\n/bogus\n/exit\nnever read\n")
    answers = chat.repl(model, tok, max_new_tokens=4, stdin=stdin, stdout=out)
    assert answers == 3
    assert [len(c) for c in seen] == [1, 3, 1]  # history grows, then /reset clears it
    assert seen[1][0]["content"] == "hello" and seen[1][1]["role"] == "assistant"
    text = out.getvalue()
    assert text.count("assistant> ") == 3 and "(conversation cleared)" in text and "unknown command /bogus" in text


def test_chat_cli_with_a_model_dir_and_a_missing_alias(tmp_path, monkeypatch, capsys):
    from alignflow.models import load_causal_lm, save_model_dir

    model, tok = load_causal_lm("tiny:llama")
    save_model_dir(model, tok, tmp_path / "m", {"base": "tiny:llama"})
    exe = str(Path(sys.executable).parent / "alignflow")
    proc = subprocess.run([exe, "chat", "--model", str(tmp_path / "m"), "--max-new-tokens", "4"],
                          input="hi there\n/exit\n", capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("assistant> ") == 1

    # No registry alias in an empty tracking DB: a clear error, exit code 2.
    from alignflow.evaluation.chat import chat_main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    assert chat_main("champion") == 2
    assert "no 'champion' alias" in capsys.readouterr().err
