"""Models: `types` (ModelSpec, Artifact: what the planner reads), and the loaders — `profiles` (built-in),
`hf` (a Hugging Face folder), `gguf` (a GGUF file, through `gguf_header`), `resolve` (--model to a spec)."""
