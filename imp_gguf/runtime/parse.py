"""Parsers for what llama.cpp's tools print: llama-mtmd-cli logs, llama-bench JSON, system_info, time -v.

llama-mtmd-cli is run with `-v --log-timestamps --log-jsonl`: every log entry (including each generated
token piece) becomes one JSON object on stdout with a microsecond timestamp. That matters because the
common logger is asynchronous and leaked at exit: the final `llama_perf_context_print` lines are
sometimes lost. When they are, decode speed and prompt time are rebuilt from the token timestamps.
Plain-text logs (without --log-jsonl) are parsed too.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

RE_ENCODE = [
    re.compile(r"image slice encoded in\s+(\d+(?:\.\d+)?)\s*ms"),  # mtmd-helper (one slice)
    re.compile(r"mtmd batch encoding done in\s+(\d+(?:\.\d+)?)\s*ms"),  # mtmd-cli batch encode (this pin)
]
RE_IMG_DECODE = re.compile(r"image decoded \(batch (\d+)/(\d+)\) in\s+(\d+(?:\.\d+)?)\s*ms")
RE_PROMPT = re.compile(r"prompt eval time\s*=\s*([\d.]+)\s*ms\s*/\s*(\d+)\s*tokens")
RE_EVAL = re.compile(r"(?<!prompt )eval time\s*=\s*([\d.]+)\s*ms\s*/\s*(\d+)\s*runs")
RE_SAMPLE = re.compile(r"sampling time\s*=\s*([\d.]+)\s*ms\s*/\s*(\d+)\s*runs")
RE_LOAD = re.compile(r"load time\s*=\s*([\d.]+)\s*ms")
RE_TOTAL = re.compile(r"total time\s*=\s*([\d.]+)\s*ms\s*/\s*(\d+)\s*tokens")
RE_SYSINFO = re.compile(r"system_info:\s*(.*)")
RE_BUFFER = re.compile(r"(\w+)\s+(model|KV|compute|output)\s+buffer size\s*=\s*([\d.]+)\s*MiB")
RE_CLIP_SIZE = re.compile(r"load_hparams: model size:\s*([\d.]+)\s*MiB")
RE_MAXRSS = re.compile(r"Maximum resident set size \(kbytes\):\s*(\d+)")
RE_MAXRSS_TOYBOX = re.compile(r"Max RSS \(KiB\):\s*(\d+)")  # Android toybox `time -v`
RE_VERSION = re.compile(r"version:\s*(\S+)\s*\(build (\d+), commit ([0-9a-f]+)\)")
RE_BUILT_WITH = re.compile(r"built with (.*)")


# Fields a llama.cpp tool printed, as it printed them (llama-bench's JSON rows, `--version`, the bandwidth
# probe's JSON): their keys belong to the tool's version, not to imp-gguf.
ToolFields = dict[str, Any]


@dataclass
class MtmdRun:
    """Timings of one llama-mtmd-cli run (ms unless named otherwise); None when not printed."""

    vision_encode_ms: float | None = None
    image_decode_ms: float | None = None  # LLM prefill of the image embeddings (part of prompt eval)
    prompt_eval_ms: float | None = None
    prompt_tokens: int | None = None
    eval_ms: float | None = None
    eval_runs: int | None = None
    sample_ms: float | None = None  # llama_perf_sampler_print: time in the sampler chain (outside eval)
    sample_runs: int | None = None
    load_ms: float | None = None
    n_generated: int = 0
    first_token_us: int | None = None  # log timestamps (µs since start)
    last_token_us: int | None = None
    encode_start_us: int | None = None
    ttft_ms: float | None = None
    timings_source: str = "perf"  # "perf" (llama_perf lines) or "timestamps" (rebuilt from token times)
    system_info: str | None = None
    buffers_mib: dict[str, float] = field(default_factory=dict)
    text: str = ""

    @property
    def prompt_tps(self) -> float | None:
        if self.prompt_eval_ms and self.prompt_tokens:
            return 1000.0 * self.prompt_tokens / self.prompt_eval_ms
        return None

    @property
    def decode_tps(self) -> float | None:
        if self.eval_ms and self.eval_runs:
            return 1000.0 * self.eval_runs / self.eval_ms
        return None

    @property
    def wall_decode_tps(self) -> float | None:
        """Decode as the user sees it: generated pieces over the time between the first and the last
        (eval + sampling + detokenizing + printing), from the log timestamps."""
        if self.first_token_us is not None and self.last_token_us is not None and self.n_generated >= 2:
            span = (self.last_token_us - self.first_token_us) / 1e6
            return (self.n_generated - 1) / span if span > 0 else None
        return None

    @property
    def sample_ms_per_token(self) -> float | None:
        return self.sample_ms / self.sample_runs if self.sample_ms is not None and self.sample_runs else None

    @property
    def total_s(self) -> float | None:
        """T_total as the paper defines it (model loading excluded): encode + prompt + decode."""
        parts = [self.vision_encode_ms, self.prompt_eval_ms, self.eval_ms]
        if any(p is None for p in parts):
            return None
        return sum(parts) / 1000.0  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(prompt_tps=self.prompt_tps, decode_tps=self.decode_tps, total_s=self.total_s,
                 wall_decode_tps=self.wall_decode_tps, sample_ms_per_token=self.sample_ms_per_token)
        return d


def _entries(text: str) -> list[tuple[int | None, str, str]]:
    """(timestamp_us, level, message) per log entry; plain lines get (None, '', line)."""
    out: list[tuple[int | None, str, str]] = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("{") and s.endswith("}"):
            try:
                obj = json.loads(s)
            except ValueError:
                obj = None
            if isinstance(obj, dict) and "msg" in obj:
                t = obj.get("time")
                out.append((int(t) if isinstance(t, (int, float)) and t else None, str(obj.get("level", "")),
                            str(obj["msg"])))
                continue
        out.append((None, "", line))
    return out


def parse_mtmd(stdout: str, stderr: str = "") -> MtmdRun:
    r = MtmdRun()
    entries = _entries(stdout) + _entries(stderr)
    tokens: list[tuple[int, str]] = []
    decode_started_us: int | None = None
    after_images = False
    img_dec = 0.0
    for t, level, msg in entries:
        for rx in RE_ENCODE:
            m = rx.search(msg)
            if m:
                r.vision_encode_ms = (r.vision_encode_ms or 0.0) + float(m.group(1))
        if "encoding mtmd batch" in msg and t is not None and r.encode_start_us is None:
            r.encode_start_us = t
        m = RE_IMG_DECODE.search(msg)
        if m:
            img_dec += float(m.group(3))
            r.image_decode_ms = img_dec
            if m.group(1) == m.group(2):
                after_images = True
                decode_started_us = t
        if (m := RE_PROMPT.search(msg)):
            r.prompt_eval_ms, r.prompt_tokens = float(m.group(1)), int(m.group(2))
        elif (m := RE_EVAL.search(msg)):
            r.eval_ms, r.eval_runs = float(m.group(1)), int(m.group(2))
        if (m := RE_SAMPLE.search(msg)):
            r.sample_ms, r.sample_runs = float(m.group(1)), int(m.group(2))
        if (m := RE_LOAD.search(msg)) and "llama_perf_context_print" in msg:
            r.load_ms = float(m.group(1))
        if (m := RE_SYSINFO.search(msg)):
            r.system_info = m.group(1).strip()
        if (m := RE_BUFFER.search(msg)):
            key = f"{m.group(1)}_{m.group(2)}"
            r.buffers_mib[key] = r.buffers_mib.get(key, 0.0) + float(m.group(3))
        if (m := RE_CLIP_SIZE.search(msg)):
            r.buffers_mib["clip_model"] = float(m.group(1))
        # generated pieces: level "none" entries after the image was decoded, before the perf lines
        if level == "none" and after_images and t is not None and "llama_perf" not in msg:
            if msg.strip() == "" and not tokens:
                continue  # the newline printed before generation starts
            if msg == "\n\n" and tokens:
                continue  # the blank lines printed after generation
            tokens.append((t, msg))
    r.n_generated = len(tokens)
    r.text = "".join(m for _, m in tokens)
    if tokens:
        r.first_token_us, r.last_token_us = tokens[0][0], tokens[-1][0]
    if r.encode_start_us is not None and r.first_token_us is not None:
        r.ttft_ms = (r.first_token_us - r.encode_start_us) / 1000.0
    if r.eval_ms is None and len(tokens) >= 2:
        # rebuild decode speed from token timestamps: (n-1) decode steps between first and last piece
        r.eval_ms = (tokens[-1][0] - tokens[0][0]) / 1000.0
        r.eval_runs = len(tokens) - 1
        r.timings_source = "timestamps"
    if r.prompt_eval_ms is None and decode_started_us is not None and r.first_token_us is not None:
        # text after the image + first sample; the image's own prefill is in image_decode_ms
        r.prompt_eval_ms = (r.first_token_us - decode_started_us) / 1000.0 + img_dec
        r.timings_source = "timestamps"
    return r


def parse_system_info(text: str) -> str | None:
    for _, _, msg in _entries(text):
        m = RE_SYSINFO.search(msg)
        if m:
            return m.group(1).strip()
    return None


def cpu_features(system_info: str | None) -> list[str]:
    """Features reported as `NAME = 1` in llama.cpp's system_info (e.g. NEON, DOTPROD, MATMUL_INT8)."""
    if not system_info:
        return []
    return [m.group(1) for m in re.finditer(r"([A-Z0-9_]+)\s*=\s*1\b", system_info)]


def parse_time_v(text: str) -> float | None:
    """Peak RSS in MB from GNU `time -v` output."""
    m = RE_MAXRSS.search(text) or RE_MAXRSS_TOYBOX.search(text)
    return round(int(m.group(1)) / 1024.0, 1) if m else None


def parse_version(text: str) -> ToolFields:
    m = RE_VERSION.search(text)
    b = RE_BUILT_WITH.search(text)
    out: dict[str, Any] = {}
    if m:
        out.update(version=m.group(1), build_number=int(m.group(2)), build_commit=m.group(3))
    if b:
        out["built_with"] = b.group(1).strip()
    return out


def parse_llama_bench(stdout: str) -> list[ToolFields]:
    """llama-bench -o json: a JSON array on stdout (logs go to stderr)."""
    s = stdout.strip()
    start = s.find("[")
    if start < 0:
        return []
    try:
        rows = json.loads(s[start:])
    except ValueError:
        # tolerate trailing noise: cut at the last closing bracket
        end = s.rfind("]")
        rows = json.loads(s[start:end + 1])
    return [r for r in rows if isinstance(r, dict)]


def parse_bandwidth(stdout: str) -> ToolFields | None:
    """The probe prints one JSON object."""
    for line in stdout.splitlines()[::-1]:
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


@dataclass
class ChatTurn:
    """One question of llama-mtmd-cli's chat mode, from its log timestamps (µs since the tool started)."""

    start_us: int  # the input prompt ("> ") after which the question was read
    vision_encode_ms: float | None = None  # an image encoded in this turn
    first_token_us: int | None = None
    last_token_us: int | None = None
    n_generated: int = 0
    text: str = ""

    @property
    def total_ms(self) -> float | None:
        """From reading the question to the answer's last piece (evaluation, image included, and decoding)."""
        return None if self.last_token_us is None else (self.last_token_us - self.start_us) / 1000.0

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token_us is None else (self.first_token_us - self.start_us) / 1000.0

    @property
    def decode_tps(self) -> float | None:
        if self.first_token_us is None or self.last_token_us is None or self.n_generated < 2:
            return None
        span = (self.last_token_us - self.first_token_us) / 1e6
        return (self.n_generated - 1) / span if span > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_ms": self.total_ms, "ttft_ms": self.ttft_ms, "decode_tps": self.decode_tps}


def parse_mtmd_chat(stdout: str, stderr: str = "") -> list[ChatTurn]:
    """The question turns of llama-mtmd-cli's chat mode (no -p; `/image PATH` then questions on stdin), run
    with `-lv 4 --log-timestamps --log-jsonl`. A turn starts at the input prompt its question was read at;
    its answer is the plain output (level "none") after the prompt was evaluated (the "\n" eval_message
    prints last) and before the next prompt. The log's last entries may be lost at exit (the logger is
    asynchronous): the last turn then ends at the last piece the log kept. A `/image` line makes no turn."""
    timed = [(t, level, msg) for t, level, msg in _entries(stdout) + _entries(stderr) if t is not None]
    entries = sorted(timed, key=lambda e: e[0])
    prompts = [i for i, (_, level, msg) in enumerate(entries) if level == "none" and msg.strip() == ">"]
    turns = []
    for a, b in zip(prompts, [*prompts[1:], len(entries)]):
        seg = entries[a + 1:b]
        evaluated = next((j for j, (_, level, msg) in enumerate(seg) if level == "none" and msg == "\n"), None)
        if evaluated is None:
            continue
        turn = ChatTurn(start_us=entries[a][0])
        for _, _, msg in seg[:evaluated]:
            for rx in RE_ENCODE:
                if (m := rx.search(msg)):
                    turn.vision_encode_ms = (turn.vision_encode_ms or 0.0) + float(m.group(1))
        pieces = [(t, msg) for t, level, msg in seg[evaluated + 1:] if level == "none" and "llama_perf" not in msg]
        while pieces and pieces[-1][1] in ("\n", "\n\n"):  # printed after the answer, not tokens
            pieces.pop()
        if pieces:
            turn.first_token_us, turn.last_token_us = pieces[0][0], pieces[-1][0]
        turn.n_generated = len(pieces)
        turn.text = "".join(m for _, m in pieces)
        turns.append(turn)
    return turns
