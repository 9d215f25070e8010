"""The bench entry point: check the pairs, open the device, pick the SoC's threads, run the protocol."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from imp_gguf.errors import BadInput
from imp_gguf.runtime.devices import Device, open_device, soc_choice
from imp_gguf.speed.protocols import BenchConfig, BenchSession, check_kv_type, model_facts
from imp_gguf.speed.roofline import COMPILERS, build_probe
from imp_gguf.speed.rows import BenchRow
from imp_gguf.speed.sweep import run_sweep


def bench(models: Sequence[str | Path], mmprojs: Sequence[str | Path], *, device: str = "local",
          cfg: BenchConfig | None = None, ssh_options: Sequence[str] = (), remote_target: str | None = None,
          remote_dir: str | None = None, log: Callable[[str], None] | None = None,
          dev: Device | None = None, sweep: dict[str, list[str]] | None = None) -> list[BenchRow]:
    """Bench each model (with its mmproj: one shared, or one per model) on `device`; returns the rows.

    Without threads or a CPU mask, the device's SoC default is used (imp_gguf.runtime.soc); `sweep`
    ({"threads": ["2", "4"], ...}) runs the paper protocol under each configuration instead."""
    cfg = cfg or BenchConfig()
    if not models:
        raise BadInput("give at least one --model")
    if len(mmprojs) not in (1, len(models)):
        raise BadInput(f"give one --mmproj, or one per --model ({len(models)}), not {len(mmprojs)}")
    pairs = [(Path(m), Path(mmprojs[0] if len(mmprojs) == 1 else mmprojs[i])) for i, m in enumerate(models)]
    facts = [model_facts(m, mm) for m, mm in pairs]  # each pair checked (pair.check_pair) before any work
    for f in facts:
        check_kv_type(f, cfg.kv_type)
    if cfg.image is not None and not Path(cfg.image).is_file():
        raise BadInput(f"--image {cfg.image} does not exist")
    dev = dev or open_device(device, ssh_options=ssh_options, remote_target=remote_target, remote_dir=remote_dir,
                             log=log)
    if "bandwidth" not in dev.tools and dev.target in COMPILERS:  # the probe goes where the tools went
        dev.add_tools({"bandwidth": build_probe(dev.target)}, log)
    soc = soc_choice(dev)
    if cfg.threads is None and cfg.cpu_mask is None:  # the SoC default: big cores only, pinned
        cfg = replace(cfg, threads=soc.threads, cpu_mask=soc.mask, cpu_strict=soc.mask is not None)
    session = BenchSession(dev, cfg, log)
    rows: list[BenchRow] = []
    if sweep:
        for f in facts:
            got, summary = run_sweep(session, f, sweep, soc, log or (lambda m: None))
            for paper in got:
                paper.soc_choice, paper.sweep_summary = soc, summary
            rows.extend(got)
        return rows
    for f in facts:
        rows.extend(session.run(f))
    for r in rows:
        r.soc_choice = soc
    return rows
