"""Capability labelling of latents and category shifts between latent sets.

Modules: ``taxonomy`` (categories, the registry), ``capabilities`` (built-in
``capabilities-v1``), ``examples`` (reading ``examples.jsonl``), ``selection`` (which
latents to label), ``labels`` (the labels table), ``rules`` / ``llm`` / ``manual`` (the
labellers), ``prompts`` (the LLM prompt and answer validation), ``shift`` and ``charts``
(category shift and its chart), ``report_section`` (HTML for the analysis report),
``command`` / ``shift_command`` (the CLI). Nothing heavy is imported here.
"""
