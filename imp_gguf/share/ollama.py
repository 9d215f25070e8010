"""An ollama Modelfile for a converted Imp: two FROM lines (language model, mmproj), the chat template in
ollama's Go template syntax, the stop token, sampling defaults.

Each Go template renders the conversations the Jinja template of the same name renders (imp_gguf.
chat_templates), for ollama's variables: `.System` (the system message, if any) and `.Messages` (every
message, system ones included, with `.Role` and `.Content`). tests/e2e/test_share.py renders both and
compares. The image: ollama places it in the user's turn itself; Jinja's "<__media__>\\n" is llama.cpp's.
"""

from __future__ import annotations

from imp_gguf.chat_templates import SYSTEM

GO_TEMPLATES = {
    # conv_phi2: "S USER: q ASSISTANT: a</s>USER: q2 ASSISTANT:"
    "imp_phi2": ('{{ if .System }}{{ .System }}{{ else }}' + SYSTEM + '{{ end }} '
                 '{{ range .Messages }}{{ if eq .Role "user" }}USER: {{ .Content }} '
                 '{{ else if eq .Role "assistant" }}ASSISTANT: {{ .Content }}</s>{{ end }}{{ end }}ASSISTANT:'),
    # ChatML
    "imp_qwen2": ('{{ if not .System }}<|im_start|>system\n' + SYSTEM + '<|im_end|>\n{{ end }}'
                  '{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
                  '<|im_start|>assistant\n'),
    "imp_phi3": ('{{ if not .System }}<|system|>\n' + SYSTEM + '<|end|>\n{{ end }}'
                 '{{ range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n'),
    "imp_phi3_nosys": '{{ range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n',
}

# A small model answering about an image: low temperature keeps it on the picture.
SAMPLING = {"temperature": 0.2, "top_p": 0.9}
MAX_CTX = 4096  # num_ctx: the model's context, at most this (ollama's memory estimate grows with it)


def modelfile(model: str, mmproj: str, template_name: str, stops: list[str], n_ctx: int | None,
              header: str) -> str:
    """The Modelfile text; `model`/`mmproj` are file names next to it."""
    lines = [header, f"FROM ./{model}", f"FROM ./{mmproj}", f'TEMPLATE """{GO_TEMPLATES[template_name]}"""']
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [f"PARAMETER {k} {v}" for k, v in SAMPLING.items()]
    if n_ctx:
        lines.append(f"PARAMETER num_ctx {min(n_ctx, MAX_CTX)}")
    return "\n".join(lines) + "\n"
