"""`medpt export` (command) and `medpt merge` (merge): a run's adapter for vLLM, SGLang, llama.cpp or Ollama, one
module per target (vllm, sglang, llamacpp, merged, gguf + gguf_writer), the plan of what each target accepts (plan),
the llama.cpp check (probe), and merging (the library both commands fold an adapter with)."""
