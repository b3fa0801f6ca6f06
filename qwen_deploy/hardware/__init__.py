"""What a machine has: `types` (the Hardware the planner reads), `files` (hardware files), `catalog` (GPU
names and the --gpu/--vram/--ram/--cpus shorthands), `probe` (this machine). Import the one you need: the
planner imports only `types`."""
