"""Everything that runs llama.cpp: the pinned source and its patches, the builds, the programs that run
its tools here or on a device, the Python bindings, and what those tools print. Each module's docstring
says what it holds; docs/architecture.md maps them."""
