"""Running a model-based test (Hypothesis stateful testing) the way CI and ``make soak`` expect.

CI runs a bounded number of examples with a fixed seed; ``CRM_EXPORT_MODEL_SOAK=1`` draws a new seed each run
and prints it, to replay with ``CRM_EXPORT_MODEL_SEED``. The machine's class sets ``CRM_EXPORT_STREAMS_FILE``
for the code it drives; it is put back afterwards.
"""

from __future__ import annotations

import os
import random

from hypothesis import HealthCheck, seed, settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test


def run_model(machine: type[RuleBasedStateMachine], *, name: str, default_seed: int, examples: int, steps: int) -> None:
    chosen = default_seed if os.environ.get("CRM_EXPORT_MODEL_SOAK") is None else random.SystemRandom().randrange(2**32)
    print(f"{name}: seed {chosen} (replay: CRM_EXPORT_MODEL_SEED={chosen})", flush=True)
    seed(chosen)(machine)
    previous = os.environ.get("CRM_EXPORT_STREAMS_FILE")
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=examples,
                stateful_step_count=steps,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            ),
        )
    finally:
        if previous is None:
            os.environ.pop("CRM_EXPORT_STREAMS_FILE", None)
        else:
            os.environ["CRM_EXPORT_STREAMS_FILE"] = previous
