"""The CLI's promises that need no files and no tools: one meaning per flag, -v/--verbose hoisted from
after the command, timings as text and JSON. Moved from tests/e2e/test_cli_usability.py."""

from __future__ import annotations


def _commands():
    import typer

    from imp_gguf.cli.main import app

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, cmd

    return list(walk(typer.main.get_command(app), []))


def test_one_meaning_per_flag():
    seen = 0
    for path, cmd in _commands():
        for p in cmd.params:
            opts = set(getattr(p, "opts", [])) | set(getattr(p, "secondary_opts", []))
            where = " ".join(path)
            if "--json" in opts:
                assert p.is_flag, f"{where}: --json must be a switch"
                seen += 1
            if "-t" in opts:
                assert "--threads" in opts, f"{where}: -t is --threads"
            if "--target" in opts:
                assert "-t" not in opts, where
            if "-o" in opts:
                assert "--outdir" in opts, f"{where}: -o is --outdir"
            if "-q" in opts:
                assert "--quiet" in opts, f"{where}: -q is --quiet"
            assert "-v" not in opts or path == [], where
    assert seen >= 12


def test_verbose_is_hoisted_but_not_from_option_values():
    import typer

    from imp_gguf.cli._common import hoist_flags
    from imp_gguf.cli.main import app

    root = typer.main.get_command(app)
    assert hoist_flags(["convert", "x", "-v", "-o", "y"], root) == ["--verbose", "convert", "x", "-o", "y"]
    assert hoist_flags(["recipes", "show", "q4_k", "--verbose"], root) == ["--verbose", "recipes", "show", "q4_k"]
    assert hoist_flags(["run", "-p", "-v", "-m", "m"], root) == ["run", "-p", "-v", "-m", "m"]  # a question "-v"
    assert hoist_flags(["bench", "--ssh-option", "-v", "--", "-v"], root) == ["bench", "--ssh-option", "-v", "--", "-v"]


def test_timings_text_and_json_are_the_same_numbers():
    from imp_gguf.runtime.timings import from_mtmd_log, normalize, text

    t = normalize({"encode_ms": 464.04, "prefill_ms": 12.345, "prompt_tokens": 56, "decode_ms": 80.0,
                   "decode_tokens": 8})
    assert t.to_dict() == {"encode_ms": 464.0, "prefill_ms": 12.3, "prompt_tokens": 56, "decode_ms": 80.0,
                 "decode_tokens": 8, "decode_tps": 100.0}
    assert text(t) == "image encode 464.0 ms, prompt 56 tokens, text prefill 12.3 ms, 8 tokens in 80.0 ms (100.0 tok/s)"
    log = ("image slice encoded in 2100 ms\nimage decoded (batch 1/1) in 9000 ms\n"
           "llama_perf_context_print: prompt eval time =   15150.00 ms /   237 tokens (   63.92 ms per token)\n"
           "llama_perf_context_print:        eval time =    4949.00 ms /    63 runs   (   78.56 ms per token)\n")
    assert from_mtmd_log("", log).to_dict() == {"encode_ms": 11100.0, "prefill_ms": 6150.0, "prompt_tokens": 237,
                                      "decode_ms": 4949.0, "decode_tokens": 63, "decode_tps": 12.7}
