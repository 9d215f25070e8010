"""Imp's conversation formats as Jinja chat templates, with llama.cpp's media marker for the image.

Sources: MILVLG/imp `imp_llava/conversation.py` (conv_phi2, conv_qwen2, conv_phi3). llama-mtmd-cli
prepends the marker to a bare prompt ("<__media__>question"); Imp puts a newline after `<image>`,
so the templates insert it when it is missing. Content given as a list of parts (llama-server's
OpenAI-style messages) is flattened with the marker in place of each image.
"""

from __future__ import annotations

from imp_gguf.errors import BadInput

MEDIA_MARKER = "<__media__>"  # libmtmd's default marker: where the image goes in a prompt (the one copy)
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")

# Shared Jinja (inlined, no macros, to suit llama.cpp's own Jinja engine): set `c` to the message's
# text, with "\n" after a leading marker.
def _content(var: str) -> str:
    mk = MEDIA_MARKER
    return (
        "{%- if " + var + "['content'] is string -%}{%- set c = " + var + "['content'] -%}"
        "{%- else -%}{%- set ns = namespace(c='') -%}"
        "{%- for p in " + var + "['content'] -%}"
        "{%- if p['type'] == 'text' -%}{%- set ns.c = ns.c + p['text'] -%}"
        "{%- else -%}{%- set ns.c = ns.c + '" + mk + "' -%}{%- endif -%}"
        "{%- endfor -%}{%- set c = ns.c -%}{%- endif -%}"
        "{%- if c.startswith('" + mk + "') and not c.startswith('" + mk + "\\n') -%}"
        "{%- set c = '" + mk + "\\n' + c[" + str(len(mk)) + ":] -%}{%- endif -%}"
    )


_SYS = '"' + SYSTEM + '"'  # double-quoted: the text has an apostrophe

# conv_phi2: SeparatorStyle.TWO, sep " ", sep2 "</s>":  "S USER: q ASSISTANT: a</s>USER: q2 ASSISTANT:"
IMP_PHI2 = (
    "{%- if messages[0]['role'] == 'system' -%}" + _content("messages[0]") + "{{- c + ' ' -}}"
    "{%- else -%}{{- " + _SYS + " + ' ' -}}{%- endif -%}"
    "{%- for m in messages -%}" + _content("m") +
    "{%- if m['role'] == 'user' -%}{{- 'USER: ' + c + ' ' -}}"
    "{%- elif m['role'] == 'assistant' -%}{{- 'ASSISTANT: ' + c + '</s>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

# conv_qwen2: ChatML.
IMP_QWEN2 = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n' + " + _SYS + " + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- for m in messages -%}" + _content("m") +
    "{{- '<|im_start|>' + m['role'] + '\\n' + c + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# conv_phi3 (imp@8f1784c "fix imp-4b bug", 2024-08-14): "<s><|system|>\nS<|end|>\n<|user|>\nq<|end|>\n<|assistant|>\n".
# BOS comes from tokenizer.ggml.add_bos_token, not from the template (no double <s>).
# The default for the 4B: the maintainers' current code, whose fix names the 4B. The weights (May 2024)
# predate it; `--chat-template imp_phi3_nosys` gives the form the code had then.
IMP_PHI3 = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|system|>\\n' + " + _SYS + " + '<|end|>\\n' -}}{%- endif -%}"
    "{%- for m in messages -%}" + _content("m") +
    "{{- '<|' + m['role'] + '|>\\n' + c + '<|end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)

# conv_phi3 before 8f1784c: no system turn, "<s><|user|>\nq<|end|>\n<|assistant|>\n" (a system message given
# by the caller is still honoured).
IMP_PHI3_NOSYS = (
    "{%- for m in messages -%}" + _content("m") +
    "{{- '<|' + m['role'] + '|>\\n' + c + '<|end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)

TEMPLATES = {"imp_phi2": IMP_PHI2, "imp_qwen2": IMP_QWEN2, "imp_phi3": IMP_PHI3, "imp_phi3_nosys": IMP_PHI3_NOSYS}


def resolve_template(choice: str | None, default: str, others: tuple[str, ...] = ()) -> tuple[str, str]:
    """(name, Jinja text) for --chat-template: None (the family's default), the name of the default or of
    one of the family's `others`, or a .jinja file."""
    from pathlib import Path

    if choice is None:
        return default, TEMPLATES[default]
    if choice in TEMPLATES:
        if choice not in (default, *others):
            raise BadInput(f"--chat-template {choice} is not a template of this model (choose "
                           f"{' or '.join((default, *others))}, or a .jinja file)")
        return choice, TEMPLATES[choice]
    path = Path(choice)
    if not path.is_file():
        raise BadInput(f"--chat-template {choice!r}: neither a template name ({', '.join(TEMPLATES)}) nor a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"--chat-template {choice}: cannot read it as UTF-8 text") from exc
    if not text.strip():
        raise BadInput(f"--chat-template {choice} is empty")
    return path.name, text


def render(template: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Render like llama.cpp does (Jinja, trim/lstrip off), for the Python backend and tests."""
    import jinja2

    env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False, autoescape=False)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt)


def imp_prompt(template: str, question: str, *, image: bool = True) -> str:
    """The single-turn prompt Imp was trained on, with the media marker where `<image>` was."""
    content = f"{MEDIA_MARKER}\n{question}" if image else question
    return render(template, [{"role": "user", "content": content}])
