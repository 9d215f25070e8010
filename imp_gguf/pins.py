"""The one pinned llama.cpp: the tree vendored in this llama-cpp-python source distribution.

The Python bindings (installed from the same version) and the tools built by `imp-gguf runtime build`
therefore run the same llama.cpp code.
"""

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_CPP_COMMIT = "0c1e57098"
