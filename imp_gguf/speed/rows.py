"""The bench's result rows, one type per protocol, and what they are made of.

A row is a superset of llama-bench's JSON fields: `to_dict()` gives exactly what `bench --json` prints and
`bench --out` writes (keys and their order). It is called at the CLI edge and by the file writers only;
everything else reads the typed fields.

    PaperRow       --protocol paper (and each point of --sweep)
    LlamaBenchRow  --protocol llama-bench (one per llama-bench row: pp, then tg)
    FollowupRow    --protocol followup

Each holds the session's `DeviceFacts` (measured once per device), the `RowBase` of its model and
configuration, its protocol's figures, and the SoC default the device got (`soc_choice`); a sweep's rows
also their `sweep_point` and the whole `sweep_summary`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict, Union

from imp_gguf.runtime.parse import ChatTurn, MtmdRun, ToolFields
from imp_gguf.runtime.soc import SocChoice
from imp_gguf.speed.roofline import Roofline

SweepPoint = dict[str, str]  # axis -> value, e.g. {"threads": "4", "fa": "on"}


class PaperTable4(TypedDict):
    """The Imp paper's Table 4 row (protocols.PAPER_ROW): what the paper protocol is compared with."""

    source: str
    vision_encode_s: float
    prompt_tps: float
    decode_tps: float
    total_s: float
    n_text_tokens: int
    n_image_tokens: int
    n_gen: int


@dataclass(frozen=True)
class DeviceFacts:
    """What a bench session measures once per device (the first fields of every row)."""

    device: str
    device_kind: str
    device_arch: str
    emulated: bool
    n_cpus: int | None
    device_model: str | None
    android_version: str | None
    soc: str | None
    version: ToolFields  # runtime.devices.version_info: the build stamp's fields, llama-bench --version's
    cpu_info: str | None
    system_info: str | None
    cpu_features: list[str]
    bandwidth_gbps: float | None
    bandwidth_probe: ToolFields | None
    gpu_info: str = ""
    backends: str = "CPU"

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "device_kind": self.device_kind, "device_arch": self.device_arch,
                "emulated": self.emulated, "n_cpus": self.n_cpus, "device_model": self.device_model,
                "android_version": self.android_version, "soc": self.soc, "gpu_info": self.gpu_info,
                "backends": self.backends, **self.version, "cpu_info": self.cpu_info,
                "system_info": self.system_info, "cpu_features": self.cpu_features,
                "bandwidth_gbps": self.bandwidth_gbps, "bandwidth_probe": self.bandwidth_probe}

    @property
    def build_commit(self) -> str | None:
        return self.version.get("build_commit")


@dataclass(frozen=True)
class Tuning:
    """The flags llama-mtmd-cli and llama-bench shared (BenchConfig.tuning), as row fields."""

    type_k: str
    type_v: str
    flash_attn_flag: str  # on | off | auto | default
    cpu_mask: str | None
    cpu_strict: bool
    load_mode: str

    def to_dict(self) -> dict[str, Any]:
        return {"type_k": self.type_k, "type_v": self.type_v, "flash_attn_flag": self.flash_attn_flag,
                "cpu_mask": self.cpu_mask, "cpu_strict": self.cpu_strict, "load_mode": self.load_mode}


@dataclass(frozen=True)
class RowBase:
    """The model and configuration a row measured."""

    model_filename: str
    mmproj_filename: str
    model_type: str
    model_size: int
    mmproj_size: int
    model_n_params: int
    n_threads: int
    protocol: str
    test_time: str
    image_size: int
    n_image_tokens: int
    model_files_mb: float
    tuning: Tuning

    def to_dict(self) -> dict[str, Any]:
        return {"model_filename": self.model_filename, "mmproj_filename": self.mmproj_filename,
                "model_type": self.model_type, "model_size": self.model_size, "mmproj_size": self.mmproj_size,
                "model_n_params": self.model_n_params, "n_threads": self.n_threads, "protocol": self.protocol,
                "test_time": self.test_time, "image_size": self.image_size, "n_image_tokens": self.n_image_tokens,
                "model_files_mb": self.model_files_mb, **self.tuning.to_dict()}


@dataclass(frozen=True)
class PaperComparison:
    """The paper's Table 4 row and measured / paper ratios (>1 = faster for speeds, slower for times)."""

    paper: PaperTable4  # protocols.PAPER_ROW
    vision_encode_ratio: float | None
    prompt_tps_ratio: float | None
    decode_tps_ratio: float | None
    total_s_ratio: float | None

    def to_dict(self) -> dict[str, Any]:
        return {**self.paper, "vision_encode_ratio": self.vision_encode_ratio,
                "prompt_tps_ratio": self.prompt_tps_ratio, "decode_tps_ratio": self.decode_tps_ratio,
                "total_s_ratio": self.total_s_ratio}


@dataclass(frozen=True)
class DecodeCheck:
    """llama-bench tg at the paper run's depth, same session, threads and flags. When llama-bench failed,
    only `llama_bench_tg_tps` (None), `command` and `note` (why) are set."""

    llama_bench_tg_tps: float | None
    command: list[str]
    note: str | None
    llama_bench_tg_stddev: float | None = None
    depth: int | None = None
    ratio: float | None = None
    within_10pct: bool | None = None

    @property
    def failed(self) -> bool:
        return self.depth is None

    def to_dict(self) -> dict[str, Any]:
        if self.failed:
            return {"llama_bench_tg_tps": self.llama_bench_tg_tps, "command": self.command, "note": self.note}
        return {"llama_bench_tg_tps": self.llama_bench_tg_tps, "llama_bench_tg_stddev": self.llama_bench_tg_stddev,
                "depth": self.depth, "ratio": self.ratio, "within_10pct": self.within_10pct,
                "command": self.command, "note": self.note}


@dataclass(frozen=True)
class MeasuredRun:
    """One measured llama-mtmd-cli run and its peak RSS (`time -v`)."""

    run: MtmdRun
    peak_rss_mb: float | None

    def to_dict(self) -> dict[str, Any]:
        d = self.run.to_dict() | {"peak_rss_mb": self.peak_rss_mb}
        d.pop("text", None)
        return d


@dataclass(frozen=True)
class MeasuredChat:
    """One measured follow-up session (its two turns) and its peak RSS."""

    turns: list[ChatTurn]
    peak_rss_mb: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"turns": [t.to_dict() | {"text": None} for t in self.turns], "peak_rss_mb": self.peak_rss_mb}


@dataclass(frozen=True)
class SweepSummaryRow:
    """One configuration of a sweep: its flags and what the paper protocol measured under them."""

    point: SweepPoint
    threads: int | None
    fa: str
    cpu_mask: str | None
    kv: str
    decode_tps: float | None
    decode_tps_min: float | None
    decode_tps_max: float | None
    prompt_tps: float | None
    vision_encode_ms: float | None
    total_s: float | None
    peak_rss_mb: float | None
    args: list[str]  # the llama.cpp flags (threads first)

    def to_dict(self) -> dict[str, Any]:
        return {"point": self.point, "threads": self.threads, "fa": self.fa, "cpu_mask": self.cpu_mask,
                "kv": self.kv, "decode_tps": self.decode_tps, "decode_tps_min": self.decode_tps_min,
                "decode_tps_max": self.decode_tps_max, "prompt_tps": self.prompt_tps,
                "vision_encode_ms": self.vision_encode_ms, "total_s": self.total_s,
                "peak_rss_mb": self.peak_rss_mb, "args": self.args}


@dataclass
class _Row:
    """What every row has: the device, the model and configuration, and the SoC default the device got."""

    facts: DeviceFacts
    base: RowBase

    @property
    def protocol(self) -> str:
        return self.base.protocol

    @property
    def model_filename(self) -> str:
        return self.base.model_filename


@dataclass
class PaperRow(_Row):
    """--protocol paper: the Imp paper's Table 4 protocol (medians over the measured runs, [min, max])."""

    n_prompt: int
    n_gen: int
    n_text_tokens: int
    question: str
    avg_ts: float | None
    stddev_ts: float | None
    samples_ts: list[float | None]
    avg_ns: int | None
    samples_ns: list[int | None]
    vision_encode_ms: float | None
    vision_encode_ms_min: float | None
    vision_encode_ms_max: float | None
    prompt_tps: float | None
    prompt_tps_min: float | None
    prompt_tps_max: float | None
    decode_tps: float | None
    decode_tps_min: float | None
    decode_tps_max: float | None
    decode_tps_iqr: float | None
    total_s: float | None
    total_s_min: float | None
    total_s_max: float | None
    ttft_ms: float | None
    peak_rss_mb: float | None
    peak_rss_source: str | None
    rss_over_files_mb: float | None
    sampling_ms_per_token: float | None
    decode_wall_tps: float | None
    llama_buffers_mib: float | None
    image_decode_ms: float | None
    timings_source: list[str]
    n_generated: int | None
    runs: int
    warmup_runs: int
    roofline: Roofline
    target_tps: float
    verdict: str
    passed: bool | None
    protocol_note: str | None
    command: list[str]
    runs_detail: list[MeasuredRun]
    paper: PaperComparison
    n_ctx: int
    load_avg_1m: list[float | None]  # before each measured run: other work sharing the cores
    decode_check: DecodeCheck | None = None
    sweep_point: SweepPoint | None = None
    soc_choice: SocChoice | None = None
    sweep_summary: list[SweepSummaryRow] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            **self.facts.to_dict(), **self.base.to_dict(),
            "n_prompt": self.n_prompt, "n_gen": self.n_gen, "n_depth": 0, "n_text_tokens": self.n_text_tokens,
            "question": self.question, "avg_ts": self.avg_ts, "stddev_ts": self.stddev_ts,
            "samples_ts": self.samples_ts, "avg_ns": self.avg_ns, "samples_ns": self.samples_ns,
            "vision_encode_ms": self.vision_encode_ms, "vision_encode_ms_min": self.vision_encode_ms_min,
            "vision_encode_ms_max": self.vision_encode_ms_max,
            "prompt_tps": self.prompt_tps, "prompt_tps_min": self.prompt_tps_min, "prompt_tps_max": self.prompt_tps_max,
            "decode_tps": self.decode_tps, "decode_tps_min": self.decode_tps_min, "decode_tps_max": self.decode_tps_max,
            "decode_tps_iqr": self.decode_tps_iqr,
            "total_s": self.total_s, "total_s_min": self.total_s_min, "total_s_max": self.total_s_max,
            "ttft_ms": self.ttft_ms, "peak_rss_mb": self.peak_rss_mb, "peak_rss_source": self.peak_rss_source,
            "rss_over_files_mb": self.rss_over_files_mb, "sampling_ms_per_token": self.sampling_ms_per_token,
            "decode_wall_tps": self.decode_wall_tps, "llama_buffers_mib": self.llama_buffers_mib,
            "image_decode_ms": self.image_decode_ms, "timings_source": self.timings_source,
            "n_generated": self.n_generated, "runs": self.runs, "warmup_runs": self.warmup_runs,
            **self.roofline.to_dict(),
            "target_tps": self.target_tps, "verdict": self.verdict, "passed": self.passed,
            "protocol_note": self.protocol_note, "command": self.command,
            "runs_detail": [r.to_dict() for r in self.runs_detail], "paper": self.paper.to_dict(),
            "n_ctx": self.n_ctx, "load_avg_1m": self.load_avg_1m,
        }
        if self.decode_check is not None:
            d["decode_check"] = self.decode_check.to_dict()
        if self.sweep_point is not None:
            d["sweep_point"] = self.sweep_point
        if self.soc_choice is not None:
            d["soc_choice"] = self.soc_choice.to_dict()
        if self.sweep_summary is not None:
            d["sweep_summary"] = [s.to_dict() for s in self.sweep_summary]
        return d


@dataclass
class LlamaBenchRow(_Row):
    """--protocol llama-bench: one of llama-bench's rows (pp: prefill, tg: decode) with ours added. Its
    own fields replace same-named ones of the device and base in place (as llama-bench reports them)."""

    fields: ToolFields  # llama-bench's JSON row
    peak_rss_mb: float | None
    rss_over_files_mb: float | None
    peak_rss_source: str | None
    command: list[str]
    n_text_tokens: int
    load_avg_1m: list[float | None]
    prompt_tps: float | None
    decode_tps: float | None
    roofline: Roofline
    target_tps: float
    verdict: str
    passed: bool | None
    soc_choice: SocChoice | None = None

    @property
    def n_gen(self) -> int:
        return int(self.fields.get("n_gen") or 0)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            **self.facts.to_dict(), **self.base.to_dict(), **self.fields,
            "peak_rss_mb": self.peak_rss_mb, "rss_over_files_mb": self.rss_over_files_mb,
            "peak_rss_source": self.peak_rss_source, "command": self.command, "vision_encode_ms": None,
            "ttft_ms": None, "n_text_tokens": self.n_text_tokens, "load_avg_1m": self.load_avg_1m}
        d["model_filename"] = self.base.model_filename  # llama-bench prints the device path
        if self.n_gen:
            d.update(decode_tps=self.decode_tps, prompt_tps=self.prompt_tps)
        else:
            d.update(prompt_tps=self.prompt_tps, decode_tps=self.decode_tps)
        d.update(self.roofline.to_dict())
        d.update(target_tps=self.target_tps, verdict=self.verdict, passed=self.passed)
        if self.soc_choice is not None:
            d["soc_choice"] = self.soc_choice.to_dict()
        return d


@dataclass(frozen=True)
class FollowupPrediction:
    """What the paper's 8 Gen 3 rates give a first question and a follow-up that reuses the image."""

    source: str
    first_s: float
    followup_s: float
    ratio: float

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "first_s": self.first_s, "followup_s": self.followup_s, "ratio": self.ratio}


@dataclass
class FollowupRow(_Row):
    """--protocol followup: the paper's question, then a follow-up about the same image, one session."""

    n_ctx: int
    n_gen: int
    n_text_tokens: int
    question: str
    followup_question: str
    followup_text_tokens: int
    vision_encode_ms: float | None
    followup_vision_encode_ms: float | None
    first_total_s: float | None
    first_total_s_min: float | None
    first_total_s_max: float | None
    followup_total_s: float | None
    followup_total_s_min: float | None
    followup_total_s_max: float | None
    followup_ratio: float | None
    followup_ratio_min: float | None
    followup_ratio_max: float | None
    ttft_ms: float | None
    followup_ttft_ms: float | None
    decode_tps: float | None
    followup_decode_tps: float | None
    peak_rss_mb: float | None
    paper_prediction: FollowupPrediction
    followup_goal: float
    followup_goal_met: bool
    verdict: str
    runs: int
    warmup_runs: int
    command: list[str]
    stdin: str
    runs_detail: list[MeasuredChat]
    passed: bool | None = None  # never a device verdict
    soc_choice: SocChoice | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            **self.facts.to_dict(), **self.base.to_dict(), "n_ctx": self.n_ctx, "n_gen": self.n_gen,
            "n_text_tokens": self.n_text_tokens, "question": self.question,
            "followup_question": self.followup_question, "followup_text_tokens": self.followup_text_tokens,
            "vision_encode_ms": self.vision_encode_ms, "followup_vision_encode_ms": self.followup_vision_encode_ms,
            "first_total_s": self.first_total_s, "first_total_s_min": self.first_total_s_min,
            "first_total_s_max": self.first_total_s_max,
            "followup_total_s": self.followup_total_s, "followup_total_s_min": self.followup_total_s_min,
            "followup_total_s_max": self.followup_total_s_max,
            "followup_ratio": self.followup_ratio, "followup_ratio_min": self.followup_ratio_min,
            "followup_ratio_max": self.followup_ratio_max,
            "ttft_ms": self.ttft_ms, "followup_ttft_ms": self.followup_ttft_ms,
            "decode_tps": self.decode_tps, "followup_decode_tps": self.followup_decode_tps,
            "peak_rss_mb": self.peak_rss_mb, "paper_prediction": self.paper_prediction.to_dict(),
            "followup_goal": self.followup_goal, "followup_goal_met": self.followup_goal_met,
            "verdict": self.verdict, "passed": self.passed, "runs": self.runs, "warmup_runs": self.warmup_runs,
            "command": self.command, "stdin": self.stdin, "runs_detail": [r.to_dict() for r in self.runs_detail],
        }
        if self.soc_choice is not None:
            d["soc_choice"] = self.soc_choice.to_dict()
        return d


BenchRow = Union[PaperRow, LlamaBenchRow, FollowupRow]


def rows_json(rows: list[BenchRow]) -> list[dict[str, Any]]:
    """The rows as `bench --json` prints them and `bench --out` writes them."""
    return [r.to_dict() for r in rows]
