"""`imp-gguf bench`: run Imp GGUFs with the built llama.cpp tools where they will run, and measure them.

    from imp_gguf.speed.bench import bench
    from imp_gguf.speed.protocols import BenchConfig
    rows = bench(["model.gguf"], ["mmproj.gguf"], device="ssh://u0_a1@phone:8022", cfg=BenchConfig(runs=5))
    rows[0].decode_tps, rows[0].to_dict()  # typed fields; the JSON `bench --json` prints

Modules: bench (the entry point), protocols (paper / llama-bench / follow-up protocols, verdict), rows (the
result rows: one dataclass per protocol, `to_dict()` is their JSON), roofline (bandwidth probe, bytes per
token), report (tables, JSON), plot (PNG), sweep (thread and CPU-mask sweeps, the device profile).
Where it runs is imp_gguf.runtime.devices; llama.cpp's output is parsed by imp_gguf.runtime.parse; full-size
checkpoints for speed figures: imp_gguf.synthetic_checkpoints.fullsize. The repository's top-level `bench/`
holds the scripts that ran these and their recorded results, not code the package imports.
"""
