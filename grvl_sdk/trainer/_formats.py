"""Record formats the RL stage writes (listed in the core table :data:`grvl_sdk.data.versions.FORMATS`).

==================  =======  ====================================================================
format              version  files
==================  =======  ====================================================================
``rl-record``       1.0      ``train.jsonl`` / ``validation.jsonl`` lines of RL data (``rl_data``)
``rl-attempt``      1.0      ``attempts.jsonl`` lines of rejection sampling (``sampling``)
``rl-summary``      1.0      ``sampling_summary.json``, ``augment_summary.json``
``pipeline-state``  1.0      ``pipeline_state.json`` of a pipeline run folder
==================  =======  ====================================================================

They live in the core table (not added on import), so the set of known formats never depends on which
modules happen to be imported.
"""

from __future__ import annotations

from grvl_sdk.data.versions import FORMATS

__all__ = ["RL_FORMATS"]

#: The RL stage's formats and their current versions (a view of the core table).
RL_FORMATS: dict[str, str] = {
    kind: FORMATS[kind] for kind in ("rl-record", "rl-attempt", "rl-summary", "pipeline-state")
}
