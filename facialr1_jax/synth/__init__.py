"""Stage 3 (docs/METHOD.md section 8): the model annotates labelled records, an automatic check
keeps the answers that match the ground truth, and the kept records feed the next round of
SFT -> GRPO.

Modules, in the order data flows through them:
  settings     the `synth` config section, checked (`SynthSettings`)
  attempts     one record's synthesis prompt and the cumulative feedback of its rejected attempts
  generation   prompts -> candidate answers with the rollout engine (greedy or K samples)
  checks       the configurable acceptance check (the oracle's rules plus AU F1, hedges, duplicates)
  shards       atomic accepted-/rejected-<block>.jsonl shards and the resumable manifest
  stats        the yield report of a round (JSON, Markdown, PNG)
  run          `run_synthesis(config, workdir)`: the stage ("synth" in `facialr1_jax.stages`)
  verify       re-checking a finished run's shards with the oracle
  pipeline     `run_pipeline(config, workdir)`: rounds of SFT -> GRPO -> evaluation -> synthesis

Nothing here is imported by the package itself, so importing `facialr1_jax.synth` loads no JAX.
"""
