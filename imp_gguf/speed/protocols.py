"""The benchmark protocols and the result rows.

paper:       the Imp paper's Table 4 protocol (arXiv 2405.12107): one image, a fixed 41-token text
             prompt, 64 generated tokens (EOS ignored), greedy, model loading excluded. Runs
             llama-mtmd-cli and reads its own timing lines: T_VE (image encode), prompt tokens/s
             (text + image tokens), decode tokens/s, T_total = T_VE + prompt time + decode time.
followup:    the paper protocol's question, then a follow-up about the same image in the same session
             (llama-mtmd-cli's chat mode, questions on stdin, 64 tokens each): what each costs, their ratio,
             and what the paper's 8 Gen 3 rates predict for both (the image is encoded once).
llama-bench: `llama-bench -o json -p <text+image tokens> -n 64 -d <image tokens>`: pp and tg at a depth
             equal to the image-token count (text-only, no vision tower) and reports its rows.

Rows are a superset of llama-bench's JSON fields, plus vision_encode_ms, prompt_tps, decode_tps, ttft_ms,
peak_rss_mb, bandwidth_gbps, decode_efficiency, ceiling_tps, device, emulated, verdict.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, Keys

from imp_gguf.chat_templates import MEDIA_MARKER
from imp_gguf.speed.roofline import LmTraffic, lm_traffic, roofline
from imp_gguf.speed.rows import (BenchRow, DecodeCheck, DeviceFacts, FollowupPrediction, FollowupRow, LlamaBenchRow,
                                 MeasuredChat, MeasuredRun, PaperComparison, PaperRow, PaperTable4, RowBase, Tuning)
from imp_gguf.errors import BadInput, CheckFailed, InternalError
from imp_gguf.spelling import unknown
from imp_gguf.native_log import quiet_native_stderr
from imp_gguf.runtime.context import image_tokens, job_context
from imp_gguf.runtime.devices import Device, cpu_info, load_average, version_info
from imp_gguf.runtime.parse import (MtmdRun, ToolFields, cpu_features, parse_bandwidth, parse_llama_bench, parse_mtmd, parse_system_info,
                                    parse_time_v)
from imp_gguf.synthetic_images import photo_like
from imp_gguf.chat_templates import render
from imp_gguf.gguf_info import file_type_name, read_gguf_meta
from imp_gguf.images import load_image, mmproj_image_spec
from imp_gguf.pair import check_pair
from imp_gguf.runtime.parse import parse_mtmd_chat

PAPER_ROW: PaperTable4 = {
    "source": "Imp paper Table 4 (arXiv 2405.12107): Imp-3B@196, 4-bit, Snapdragon 8 Gen 3, llama.cpp",
    "vision_encode_s": 2.10, "prompt_tps": 15.64, "decode_tps": 12.73, "total_s": 22.72,
    "n_text_tokens": 41, "n_image_tokens": 196, "n_gen": 64,
}
PAPER_TEXT_TOKENS = 41
PAPER_GEN_TOKENS = 64
DEFAULT_TARGET_TPS = 13.0
PROTOCOLS = ("paper", "llama-bench", "followup")
# The follow-up protocol's second question (about the image the first one described).
FOLLOWUP_QUESTION = "Which object is the largest, and what colour is it?"
FOLLOWUP_GOAL = 0.3  # follow-up total / first question's total (issue 23)
FA = ("on", "off", "auto")
KV = ("f16", "q8_0", "q4_0")


def is_hex_mask(v: str) -> bool:
    try:
        return v.lower().startswith("0x") and int(v, 16) > 0
    except ValueError:
        return False

# Words used to pad the question to the protocol's token count (then " a" fills the last tokens).
QUESTION = ("What is in the image? Describe the objects, their colours, shapes and positions, the background, "
            "and anything unusual, in detail and in order from the left to the right of the picture, please.")

Log = Callable[[str], None]


# ----------------------------------------------------------------------------- model facts

@dataclass
class ModelFacts:
    path: Path
    mmproj: Path
    arch: str
    model_type: str
    model_size: int
    mmproj_size: int
    n_params: int
    chat_template: str | None
    add_bos: bool
    image_size: int
    n_image_tokens: int
    traffic: LmTraffic
    image_aspect: str = "square"
    head_dim: int = 0  # K/V row length per head: a quantized KV cache needs it divisible by the block


def model_facts(model: Path, mmproj: Path) -> ModelFacts:
    pair = check_pair(model, mmproj)  # both exist: a language model and its own mmproj
    meta, mm = read_gguf_meta(model), read_gguf_meta(mmproj)
    arch = str(meta.get(Keys.General.ARCHITECTURE, "?"))
    image_size, image_aspect = mmproj_image_spec(mm, f"--mmproj {mmproj}")
    traffic = lm_traffic(model)
    ft_name = file_type_name(meta.get(Keys.General.FILE_TYPE)) or str(meta.get(Keys.General.FILE_TYPE, "?"))
    size_label = meta.get(Keys.General.SIZE_LABEL) or "?B"
    return ModelFacts(
        path=Path(model), mmproj=Path(mmproj), arch=arch, model_type=f"{arch} {size_label} {ft_name}",
        model_size=Path(model).stat().st_size, mmproj_size=Path(mmproj).stat().st_size,
        n_params=traffic.n_params, chat_template=meta.get(Keys.Tokenizer.CHAT_TEMPLATE),
        add_bos=bool(meta.get(Keys.Tokenizer.ADD_BOS, False)), image_size=image_size,
        n_image_tokens=image_tokens(mm), traffic=traffic, image_aspect=image_aspect,
        head_dim=int(meta.get(Keys.Attention.KEY_LENGTH.format(arch=arch)) or 0)
        or pair.n_embd // max(1, int(meta.get(Keys.Attention.HEAD_COUNT.format(arch=arch)) or 1)),
    )


def check_kv_type(facts: ModelFacts, kv_type: str) -> None:
    """llama.cpp refuses a quantized KV cache whose block does not divide the head size (Phi-2: 80)."""
    block = GGML_QUANT_SIZES[GGMLQuantizationType[kv_type.upper()]][0]
    if facts.head_dim and facts.head_dim % block:
        raise BadInput(f"--kv-type {kv_type}: {facts.path.name} has heads of {facts.head_dim}, not a multiple of "
                       f"{kv_type}'s block of {block} (llama.cpp refuses such a cache); use f16")


# ----------------------------------------------------------------------------- the 41-token prompt

class TextCounter:
    """Counts the text tokens llama-mtmd-cli will feed for a question (chat template applied, marker split)."""

    def __init__(self, facts: ModelFacts) -> None:
        import llama_cpp

        self.facts = facts
        with quiet_native_stderr():  # llama.cpp warns about the context of a vocab-only load on stderr
            self.llm = llama_cpp.Llama(str(facts.path), vocab_only=True, verbose=False)

    def render(self, question: str) -> str:
        content = MEDIA_MARKER + question  # mtmd-cli prepends the marker when the prompt has none
        if not self.facts.chat_template:
            return content
        return render(self.facts.chat_template, [{"role": "user", "content": content}])

    def count(self, question: str) -> int:
        segments = self.render(question).split(MEDIA_MARKER)
        n = sum(len(self.llm.tokenize(s.encode(), add_bos=False, special=True)) for s in segments if s)
        return n + (1 if self.facts.add_bos else 0)

    def followup_count(self, question: str, followup: str, answer: str = "It is a photo.") -> int:
        """Text tokens llama-mtmd-cli's chat mode evaluates for `followup` after `question` was answered:
        the template's text after the conversation so far (common_chat_format_single's difference)."""
        if not self.facts.chat_template:
            return len(self.llm.tokenize(followup.encode(), add_bos=False, special=True))
        past = [{"role": "user", "content": MEDIA_MARKER + question}, {"role": "assistant", "content": answer}]
        before = render(self.facts.chat_template, past, add_generation_prompt=False)
        after = render(self.facts.chat_template, [*past, {"role": "user", "content": followup}])
        diff = ("\n" if before.endswith("\n") else "") + after[len(before):]
        return len(self.llm.tokenize(diff.encode(), add_bos=False, special=True))


def fit_question(counter: TextCounter, n_tokens: int = PAPER_TEXT_TOKENS, base: str = QUESTION) -> tuple[str, int]:
    """The longest prefix of `base` (whole words) within n_tokens, then ' a' fillers up to exactly n_tokens.

    Returns (question, text tokens). When the template alone is longer than n_tokens, the shortest
    question ("?") is used and its (larger) count returned: the report says so.
    """
    words = base.split(" ")
    q, n = "", counter.count("")
    if n >= n_tokens:
        return "?", counter.count("?")
    for w in words:
        cand = (q + " " + w) if q else w
        c = counter.count(cand)
        if c > n_tokens:
            break
        q, n = cand, c
    guard = 0
    while n < n_tokens and guard < 4 * n_tokens:
        c = counter.count(q + " a")
        if c > n_tokens:
            break
        q, n = q + " a", c
        guard += 1
    return q, n


# ----------------------------------------------------------------------------- statistics

@dataclass(frozen=True)
class Spread:
    """Median and spread of repeated measurements (None where no value was measured)."""

    median: float | None
    min: float | None
    max: float | None
    mean: float | None
    stddev: float | None
    iqr: float | None
    n: int


def spread(values: Sequence[float | None]) -> Spread:
    v = [float(x) for x in values if x is not None]
    if not v:
        return Spread(median=None, min=None, max=None, mean=None, stddev=None, iqr=None, n=0)
    q1, q3 = (np.percentile(v, [25, 75]).tolist() if len(v) > 1 else (v[0], v[0]))
    return Spread(median=statistics.median(v), min=min(v), max=max(v), mean=statistics.fmean(v),
                  stddev=statistics.stdev(v) if len(v) > 1 else 0.0, iqr=q3 - q1, n=len(v))


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


# ----------------------------------------------------------------------------- verdict

def verdict(dev: Device, decode_tps: float | None, target_tps: float) -> tuple[str, bool | None]:
    """(text, passed) where passed is None when the result is not a device result."""
    if decode_tps is None:
        return "no decode speed measured", None
    if dev.kind == "qemu" or dev.emulated:
        return f"emulated (qemu-aarch64): {decode_tps:.1f} tok/s, timings meaningless", None
    if dev.is_aarch64_device:
        ok = decode_tps >= target_tps
        word = "PASS" if ok else "MISS"
        return f"{word}: {dev.label}: decode {decode_tps:.2f} tok/s vs target {target_tps:g} tok/s", ok
    where = "host" if dev.kind == "local" else f"{dev.kind} host"
    return f"{where} {dev.arch}: {decode_tps:.1f} tok/s - not a device result", None


# ----------------------------------------------------------------------------- session

@dataclass
class BenchConfig:
    protocol: str = "paper"
    runs: int = 5
    warmup: int = 1
    threads: int | None = None
    target_tps: float = DEFAULT_TARGET_TPS
    n_text: int = PAPER_TEXT_TOKENS
    n_gen: int = PAPER_GEN_TOKENS
    image: Path | None = None
    bandwidth_mib: int = 1024
    bandwidth: bool = True
    timeout: float | None = 3600
    kv_type: str = "f16"  # KV cache type (-ctk/-ctv): f16, q8_0, q4_0
    flash_attn: str | None = None  # on | off | auto; None: llama.cpp's default (auto)
    cpu_mask: str | None = None  # hex affinity mask (-C), e.g. 0xfc: the big cores of an 8 Gen 3
    cpu_strict: bool = False  # --cpu-strict 1: one thread per CPU of the mask
    mmap: bool = False  # load the model by mmap (llama.cpp's default) or read it (-lm none; see tuning_args)
    llama_bench_check: bool = True  # paper protocol: also run llama-bench tg at the same depth, same flags

    def __post_init__(self) -> None:
        """Checked here, whoever builds it (CLI, sweep, profile, library): the values end up as tool flags."""
        if self.protocol not in PROTOCOLS:
            raise unknown("--protocol", self.protocol, PROTOCOLS)
        if self.runs < 1:
            raise BadInput("--runs must be at least 1")
        if self.kv_type not in KV:
            raise unknown("--kv-type", self.kv_type, KV)
        if self.flash_attn is not None and self.flash_attn not in FA:
            raise unknown("--fa", self.flash_attn, FA)
        if self.cpu_mask is not None and not is_hex_mask(self.cpu_mask):
            raise BadInput(f"--cpu-mask {self.cpu_mask}: expected a hex CPU mask such as 0xfc")

    def tuning_args(self) -> list[str]:
        """Flags llama-mtmd-cli and llama-bench share (same spelling in both at this pin).

        -lm none: with mmap, the weights llama.cpp repacks at load (Q4_0, Q4_K, Q6_K, Q8_0 on x86 and
        ARM) are resident twice, once as mapped file pages and once repacked: reading them instead keeps
        the peak RSS near the model's size."""
        args = ["-ctk", self.kv_type, "-ctv", self.kv_type]
        if self.flash_attn:
            args += ["-fa", self.flash_attn]
        if self.cpu_mask:
            args += ["-C", self.cpu_mask, "--cpu-strict", "1" if self.cpu_strict else "0"]
        if not self.mmap:
            args += ["-lm", "none"]
        return args

    def tuning(self) -> Tuning:
        """The same, as row fields."""
        return Tuning(type_k=self.kv_type, type_v=self.kv_type, flash_attn_flag=self.flash_attn or "default",
                      cpu_mask=self.cpu_mask, cpu_strict=self.cpu_strict,
                      load_mode="mmap" if self.mmap else "read (-lm none)")


@dataclass(frozen=True)
class _ImageJob:
    """One image question's set-up on the device (BenchSession._image_job)."""

    counter: TextCounter
    question: str
    n_text: int
    model: str  # paths on the device
    mmproj: str
    image: str
    common: DeviceFacts


class BenchSession:
    """One device, several models: probe bandwidth once, then run the protocol per model."""

    def __init__(self, dev: Device, cfg: BenchConfig, log: Log | None = None) -> None:
        self.dev, self.cfg = dev, cfg
        self.log = log or (lambda m: None)
        self.threads = cfg.threads or dev.default_threads()
        self.tmp = Path(tempfile.mkdtemp(prefix="imp-gguf-bench-"))
        self._bandwidth: ToolFields | None = None
        self._common: DeviceFacts | None = None

    # -- once per device
    def bandwidth(self) -> ToolFields | None:
        if self._bandwidth is None and self.cfg.bandwidth and "bandwidth" in self.dev.tools:
            self.log(f"bandwidth probe ({self.threads} threads, {self.cfg.bandwidth_mib} MiB)...")
            mib = self.cfg.bandwidth_mib if not self.dev.emulated else min(self.cfg.bandwidth_mib, 256)
            proc = self.dev.run([self.dev.tools["bandwidth"], "-t", str(self.threads), "-s", str(mib), "-r", "5"],
                                timeout=600)
            self._bandwidth = parse_bandwidth(proc.stdout) or {}
        return self._bandwidth or None

    def common(self, facts: ModelFacts, model_dev: str) -> DeviceFacts:
        if self._common is None:
            # system_info (CPU features as llama.cpp sees them): llama-perplexity prints it right after load
            # (one 16-token chunk: it must run to the end, or the async logger may drop the line at exit)
            version = version_info(self.dev)
            cpu = cpu_info(self.dev)
            proc = self.dev.run([self.dev.tools["llama-perplexity"], "-m", model_dev, "-p", "imp gguf " * 40,
                                 "-c", "16", "-b", "16", "--chunks", "1", "-t", str(self.threads)], timeout=900)
            si = parse_system_info((proc.stderr or "") + (proc.stdout or ""))
            bw = self.bandwidth()
            self._common = DeviceFacts(
                device=self.dev.label, device_kind=self.dev.kind, device_arch=self.dev.arch,
                emulated=self.dev.emulated, n_cpus=self.dev.nproc, device_model=self.dev.info.get("model"),
                android_version=self.dev.info.get("android"), soc=self.dev.info.get("soc"), version=version,
                cpu_info=cpu, system_info=si, cpu_features=cpu_features(si),
                bandwidth_gbps=_r(bw.get("gbps")) if bw else None, bandwidth_probe=bw)
        return self._common

    def _row_base(self, facts: ModelFacts) -> RowBase:
        return RowBase(model_filename=facts.path.name, mmproj_filename=facts.mmproj.name,
                       model_type=facts.model_type, model_size=facts.model_size, mmproj_size=facts.mmproj_size,
                       model_n_params=facts.n_params, n_threads=self.threads, protocol=self.cfg.protocol,
                       test_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       image_size=facts.image_size, n_image_tokens=facts.n_image_tokens,
                       model_files_mb=round((facts.model_size + facts.mmproj_size) / 1e6, 1),
                       tuning=self.cfg.tuning())

    # -- protocol: paper
    def _prepared_image(self, facts: ModelFacts) -> Path:
        src_img = self.cfg.image or photo_like(self.tmp / "default-image.png", 448, 336)
        prepared = self.tmp / f"image-{facts.image_size}.png"
        # as Imp prepares it (padded if the mmproj says so, squash-resized): clip.cpp copies it unchanged
        load_image(src_img, facts.image_size, facts.image_aspect).save(prepared)
        return prepared

    def _image_job(self, facts: ModelFacts) -> _ImageJob:
        """What the paper and follow-up protocols share: the question fitted to the paper's text length,
        the model, mmproj and prepared image staged on the device, and the device's facts."""
        counter = TextCounter(facts)
        question, n_text = fit_question(counter, self.cfg.n_text)
        dev = self.dev
        model, mmproj = dev.stage(facts.path), dev.stage(facts.mmproj)
        image = dev.stage(self._prepared_image(facts), "images", always=True)
        return _ImageJob(counter, question, n_text, model, mmproj, image, self.common(facts, model))

    def run_paper(self, facts: ModelFacts) -> PaperRow:
        cfg, dev = self.cfg, self.dev
        job = self._image_job(facts)
        question, n_text, model_dev, mmproj_dev, image_dev, common = (job.question, job.n_text, job.model, job.mmproj,
                                                                      job.image, job.common)
        n_ctx = job_context(n_text + facts.n_image_tokens, cfg.n_gen)
        argv = [dev.tools["llama-mtmd-cli"], "-m", model_dev, "--mmproj", mmproj_dev, "--image", image_dev,
                "-p", question, "--jinja", "-n", str(cfg.n_gen), "--ignore-eos", "--temp", "0", "--top-k", "1", "--seed", "0",
                "-t", str(self.threads), "-c", str(n_ctx), *cfg.tuning_args(),
                "-lv", "4", "--log-timestamps", "--log-jsonl"]
        runs, loads = [], []
        for i in range(cfg.warmup + cfg.runs):
            label = "warm-up" if i < cfg.warmup else f"run {i - cfg.warmup + 1}/{cfg.runs}"
            self.log(f"{facts.path.name}: {label}")
            load = load_average(dev)
            proc = dev.run(argv, timed=True, timeout=cfg.timeout)
            if proc.returncode != 0:  # the tool's last words, not `time -v`'s report (tab-indented)
                tail = "\n".join([ln for ln in (proc.stderr or proc.stdout or "").strip().splitlines()
                                  if ln.strip() and not ln.startswith(("\t", "Command being timed"))][-3:])
                raise InternalError(f"llama-mtmd-cli failed (exit {proc.returncode}) on {dev.label}: {tail[-400:]}")
            run = parse_mtmd(proc.stdout, proc.stderr)
            rss = parse_time_v(proc.stderr)
            if i >= cfg.warmup:
                runs.append((run, rss))
                loads.append(load)
        row = self._paper_row(facts, common, runs, question, n_text, argv, n_ctx=n_ctx, loads=loads)
        if cfg.llama_bench_check and "llama-bench" in dev.tools:
            row.decode_check = self._decode_check(facts, model_dev, row)
        return row

    def _decode_check(self, facts: ModelFacts, model_dev: str, row: PaperRow) -> DecodeCheck:
        """llama-bench tg at the paper run's depth, threads, model and flags, in the same session: the
        paper decode should land within 10% of it; what it is not is said (sampling, the wall clock)."""
        cfg, dev = self.cfg, self.dev
        depth = int(row.n_prompt)
        argv = [dev.tools["llama-bench"], "-m", model_dev, "-o", "json", "-p", "0", "-n", str(cfg.n_gen),
                "-d", str(depth), "-t", str(self.threads), "-r", str(cfg.runs), *cfg.tuning_args()]
        self.log(f"{facts.path.name}: llama-bench tg{cfg.n_gen} @ d{depth} (decode check)")
        proc = dev.run(argv, timeout=cfg.timeout)
        tg = [r for r in parse_llama_bench(proc.stdout) if r.get("n_gen")] if proc.returncode == 0 else []
        if not tg:
            return DecodeCheck(llama_bench_tg_tps=None, command=argv,
                               note=f"llama-bench failed (exit {proc.returncode}): {(proc.stderr or '').strip()[-200:]}")
        ref = float(tg[0]["avg_ts"])
        ratio = row.decode_tps / ref if row.decode_tps else None
        samp = row.sampling_ms_per_token
        notes = []
        if ratio is not None and abs(ratio - 1) > 0.10:
            notes.append(f"paper decode is {ratio:.0%} of llama-bench tg{cfg.n_gen} @ d{depth}")
        if samp:
            notes.append(f"sampling {samp:.2f} ms/token is outside both (llama_perf eval time)")
        wall = row.decode_wall_tps
        if wall and row.decode_tps:
            notes.append(f"as printed (eval + sampling + output): {wall:.2f} tok/s")
        return DecodeCheck(llama_bench_tg_tps=_r(ref), llama_bench_tg_stddev=_r(tg[0].get("stddev_ts")), depth=depth,
                           ratio=_r(ratio), within_10pct=None if ratio is None else abs(ratio - 1) <= 0.10,
                           command=argv, note="; ".join(notes) or None)

    def _paper_row(self, facts: ModelFacts, common: DeviceFacts, runs: list[tuple[MtmdRun, float | None]],
                   question: str, n_text: int, argv: list[str], *, n_ctx: int,
                   loads: list[float | None]) -> PaperRow:
        cfg = self.cfg
        for r, _ in runs:  # perf line lost (async logger): the prompt is the text + image tokens we fed
            if r.prompt_tokens is None:
                r.prompt_tokens = n_text + facts.n_image_tokens
        ve = spread([r.vision_encode_ms for r, _ in runs])
        pp = spread([r.prompt_tps for r, _ in runs])
        tg = spread([r.decode_tps for r, _ in runs])
        tot = spread([r.total_s for r, _ in runs])
        ttft = spread([r.ttft_ms for r, _ in runs])
        rss = spread([m for _, m in runs])
        first = runs[0][0] if runs else None
        n_prompt = first.prompt_tokens if first and first.prompt_tokens else n_text + facts.n_image_tokens
        bw = common.bandwidth_gbps
        depth = n_prompt + cfg.n_gen / 2
        roof = roofline(tg.median, bw, facts.traffic, depth)
        text, passed = verdict(self.dev, tg.median, cfg.target_tps)
        samples_ts = [_r(r.decode_tps) for r, _ in runs]
        samples_ns = [int(r.eval_ms * 1e6) if r.eval_ms else None for r, _ in runs]
        est_mem = None
        if first and first.buffers_mib:
            est_mem = round(sum(first.buffers_mib.values()), 1)
        return PaperRow(
            facts=common, base=self._row_base(facts),
            n_prompt=n_prompt, n_gen=cfg.n_gen, n_text_tokens=n_text, question=question,
            avg_ts=_r(tg.mean), stddev_ts=_r(tg.stddev), samples_ts=samples_ts,
            avg_ns=int(statistics.fmean([s for s in samples_ns if s])) if any(samples_ns) else None,
            samples_ns=samples_ns,
            vision_encode_ms=_r(ve.median, 1), vision_encode_ms_min=_r(ve.min, 1),
            vision_encode_ms_max=_r(ve.max, 1),
            prompt_tps=_r(pp.median), prompt_tps_min=_r(pp.min), prompt_tps_max=_r(pp.max),
            decode_tps=_r(tg.median), decode_tps_min=_r(tg.min), decode_tps_max=_r(tg.max),
            decode_tps_iqr=_r(tg.iqr),
            total_s=_r(tot.median), total_s_min=_r(tot.min), total_s_max=_r(tot.max),
            ttft_ms=_r(ttft.median, 1),
            peak_rss_mb=_r(rss.median, 1),
            peak_rss_source="time -v" if rss.n else None,
            rss_over_files_mb=(None if rss.median is None else
                               _r(rss.median - (facts.model_size + facts.mmproj_size) / 1e6, 1)),
            sampling_ms_per_token=_r(spread([r.sample_ms_per_token for r, _ in runs]).median, 3),
            decode_wall_tps=_r(spread([r.wall_decode_tps for r, _ in runs]).median),
            llama_buffers_mib=est_mem,
            image_decode_ms=_r(spread([r.image_decode_ms for r, _ in runs]).median, 1),
            timings_source=sorted({r.timings_source for r, _ in runs}),
            n_generated=first.n_generated if first else None,
            runs=len(runs), warmup_runs=cfg.warmup,
            roofline=roof,
            target_tps=cfg.target_tps, verdict=text, passed=passed,
            protocol_note=(None if n_text == cfg.n_text else
                           f"chat template alone is {n_text} text tokens: the {cfg.n_text}-token prompt "
                           f"cannot be matched with this tokenizer"),
            command=argv,
            runs_detail=[MeasuredRun(r, m) for r, m in runs],
            paper=paper_comparison(_r(ve.median, 1), _r(pp.median), _r(tg.median), _r(tot.median)),
            n_ctx=n_ctx, load_avg_1m=loads)

    # -- protocol: llama-bench
    def run_llama_bench(self, facts: ModelFacts) -> list[LlamaBenchRow]:
        cfg, dev = self.cfg, self.dev
        counter = TextCounter(facts)
        _, n_text = fit_question(counter, cfg.n_text)
        model_dev = dev.stage(facts.path)
        common = self.common(facts, model_dev)
        n_prompt = n_text + facts.n_image_tokens
        argv = [dev.tools["llama-bench"], "-m", model_dev, "-o", "json", "-p", str(n_prompt), "-n", str(cfg.n_gen),
                "-d", str(facts.n_image_tokens), "-t", str(self.threads), "-r", str(cfg.runs), *cfg.tuning_args()]
        self.log(f"{facts.path.name}: llama-bench -p {n_prompt} -n {cfg.n_gen} -d {facts.n_image_tokens} -r {cfg.runs}")
        load = load_average(dev)
        proc = dev.run(argv, timed=True, timeout=cfg.timeout)
        if proc.returncode != 0:
            raise InternalError(f"llama-bench failed (exit {proc.returncode}) on {dev.label}: "
                                f"{(proc.stderr or '').strip()[-400:]}")
        rows = parse_llama_bench(proc.stdout)
        if not rows:
            raise InternalError(f"llama-bench printed no JSON rows on {dev.label}")
        rss = parse_time_v(proc.stderr)
        bw = common.bandwidth_gbps
        out = []
        for r in rows:
            ts = r.get("avg_ts")
            if r.get("n_gen"):
                prompt_tps, decode_tps = None, _r(ts)
                roof = roofline(ts, bw, facts.traffic, (r.get("n_depth") or 0) + cfg.n_gen / 2)
                text, passed = verdict(dev, ts, cfg.target_tps)
            else:
                prompt_tps, decode_tps = _r(ts), None
                roof = roofline(None, bw, facts.traffic, r.get("n_depth") or 0)
                text, passed = "prefill row (verdict is on the tg row)", None
            out.append(LlamaBenchRow(
                facts=common, base=self._row_base(facts), fields=r, peak_rss_mb=rss,
                rss_over_files_mb=None if rss is None else _r(rss - (facts.model_size + facts.mmproj_size) / 1e6, 1),
                peak_rss_source="time -v" if rss else None, command=argv, n_text_tokens=n_text, load_avg_1m=[load],
                prompt_tps=prompt_tps, decode_tps=decode_tps, roofline=roof, target_tps=cfg.target_tps,
                verdict=text, passed=passed))
        return out

    # -- protocol: followup
    def run_followup(self, facts: ModelFacts) -> FollowupRow:
        """The paper protocol's question, then FOLLOWUP_QUESTION, in one llama-mtmd-cli chat session."""
        cfg, dev = self.cfg, self.dev
        job = self._image_job(facts)
        question, n_text, model_dev, mmproj_dev, image_dev, common = (job.question, job.n_text, job.model, job.mmproj,
                                                                      job.image, job.common)
        n_new = job.counter.followup_count(question, FOLLOWUP_QUESTION)
        n_ctx = job_context(n_text + facts.n_image_tokens + n_new, 2 * cfg.n_gen)
        # no -p and no --image: the chat mode; the image is loaded by the first input line
        argv = [dev.tools["llama-mtmd-cli"], "-m", model_dev, "--mmproj", mmproj_dev, "--jinja", "-n", str(cfg.n_gen),
                "--ignore-eos", "--temp", "0", "--top-k", "1", "--seed", "0", "-t", str(self.threads),
                "-c", str(n_ctx), *cfg.tuning_args(), "-lv", "4", "--log-timestamps", "--log-jsonl"]
        stdin = f"/image {image_dev}\n{question}\n{FOLLOWUP_QUESTION}\n"
        runs = []
        for i in range(cfg.warmup + cfg.runs):
            label = "warm-up" if i < cfg.warmup else f"run {i - cfg.warmup + 1}/{cfg.runs}"
            self.log(f"{facts.path.name}: follow-up {label}")
            for _attempt in range(6):
                proc = dev.run(argv, timed=True, timeout=cfg.timeout, input=stdin)
                turns = parse_mtmd_chat(proc.stdout, proc.stderr)
                # A run that exits at once after its last answer can lose that answer's log entries
                # (the logger is asynchronous and abandoned at exit; with a tiny model that is often):
                # run it again, five times at most.
                if proc.returncode != 0 or len(turns) == 2 and all(t.total_ms is not None for t in turns):
                    break
                self.log(f"{facts.path.name}: the log lost the last turn at exit; running again")
            if proc.returncode != 0 or len(turns) != 2 or any(t.total_ms is None for t in turns):
                tail = (proc.stderr or proc.stdout or "").strip()[-400:]
                raise InternalError(f"llama-mtmd-cli chat (exit {proc.returncode}) gave {len(turns)} of 2 turns on "
                                    f"{dev.label}: {tail}")
            if i >= cfg.warmup:
                runs.append((turns, parse_time_v(proc.stderr)))
        totals = [(t[0].total_ms or 0.0, t[1].total_ms or 0.0) for t, _ in runs]  # both set: checked above
        first = spread([a / 1000 for a, _ in totals])
        follow = spread([b / 1000 for _, b in totals])
        ratio = spread([b / a for a, b in totals])
        predicted = followup_prediction(facts.n_image_tokens, n_text, n_new, cfg.n_gen)
        r = _r(ratio.median)
        met = r is not None and r <= FOLLOWUP_GOAL
        where = "device" if dev.is_aarch64_device else ("emulated, timings meaningless" if dev.emulated else "host")
        return FollowupRow(
            facts=common, base=self._row_base(facts), n_ctx=n_ctx, n_gen=cfg.n_gen, n_text_tokens=n_text,
            question=question, followup_question=FOLLOWUP_QUESTION, followup_text_tokens=n_new,
            vision_encode_ms=_r(spread([t[0].vision_encode_ms for t, _ in runs]).median, 1),
            followup_vision_encode_ms=_r(spread([t[1].vision_encode_ms or 0.0 for t, _ in runs]).median, 1),
            first_total_s=_r(first.median), first_total_s_min=_r(first.min), first_total_s_max=_r(first.max),
            followup_total_s=_r(follow.median), followup_total_s_min=_r(follow.min),
            followup_total_s_max=_r(follow.max),
            followup_ratio=r, followup_ratio_min=_r(ratio.min), followup_ratio_max=_r(ratio.max),
            ttft_ms=_r(spread([t[0].ttft_ms for t, _ in runs]).median, 1),
            followup_ttft_ms=_r(spread([t[1].ttft_ms for t, _ in runs]).median, 1),
            decode_tps=_r(spread([t[0].decode_tps for t, _ in runs]).median),
            followup_decode_tps=_r(spread([t[1].decode_tps for t, _ in runs]).median),
            peak_rss_mb=_r(spread([m for _, m in runs]).median, 1),
            paper_prediction=predicted, followup_goal=FOLLOWUP_GOAL, followup_goal_met=met,
            verdict=f"follow-up x{r} of the first question ({where}; goal <= {FOLLOWUP_GOAL}: "
                    f"{'met' if met else 'missed'}); the paper's 8 Gen 3 rates predict x{predicted.ratio}",
            runs=len(runs), warmup_runs=cfg.warmup, command=argv, stdin=stdin,
            runs_detail=[MeasuredChat(turns, m) for turns, m in runs])

    def run(self, facts: ModelFacts) -> list[BenchRow]:
        if self.cfg.protocol == "followup":
            return [self.run_followup(facts)]
        if self.cfg.protocol == "paper":
            return [self.run_paper(facts)]
        if self.cfg.protocol == "llama-bench":
            return [*self.run_llama_bench(facts)]
        raise BadInput(f"--protocol must be one of {', '.join(PROTOCOLS)}")


def followup_prediction(n_image: int, n_text: int, n_new: int, n_gen: int) -> FollowupPrediction:
    """What the paper's 8 Gen 3 rates (PAPER_ROW) give a first question (image encode, image + text prefill,
    n_gen decoded) and a follow-up that reuses the image (its n_new text tokens prefilled, n_gen decoded)."""
    p = PAPER_ROW
    first = p["vision_encode_s"] + (n_image + n_text) / p["prompt_tps"] + n_gen / p["decode_tps"]
    follow = n_new / p["prompt_tps"] + n_gen / p["decode_tps"]
    return FollowupPrediction(source=str(p["source"]), first_s=round(first, 2), followup_s=round(follow, 2),
                              ratio=round(follow / first, 3))


def paper_comparison(vision_encode_ms: float | None, prompt_tps: float | None, decode_tps: float | None,
                     total_s: float | None) -> PaperComparison:
    """Measured / paper ratios (>1 = faster for speeds, slower for times)."""
    def ratio(a: float | None, b: float) -> float | None:
        return None if a is None else round(a / b, 3)

    ve_s = vision_encode_ms / 1000 if vision_encode_ms is not None else None
    return PaperComparison(paper=PAPER_ROW.copy(),
                           vision_encode_ratio=ratio(ve_s, PAPER_ROW["vision_encode_s"]),
                           prompt_tps_ratio=ratio(prompt_tps, PAPER_ROW["prompt_tps"]),
                           decode_tps_ratio=ratio(decode_tps, PAPER_ROW["decode_tps"]),
                           total_s_ratio=ratio(total_s, PAPER_ROW["total_s"]))


def exit_code(rows: Sequence[BenchRow]) -> int:
    """CheckFailed's status (3) if any device result missed its target; 0 otherwise (off-device results
    never fail)."""
    return CheckFailed.exit_code if any(r.passed is False for r in rows) else 0
