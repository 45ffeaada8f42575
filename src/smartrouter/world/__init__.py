"""The synthetic payments world: a deterministic history of one merchant's card attempts, its
routing log and static rules, plus the oracle of true approval probabilities (evaluation only).

    from smartrouter.world import World, WorldParams
    world = World(WorldParams.small(seed=7))
    for chunk in world.iter_days():          # one DayChunk per day, memory bounded
        chunk.attempts, chunk.routing_log    # frames with catalog.ATTEMPT_COLUMNS / ROUTING_LOG_COLUMNS
    world.rules_frame()                      # VW_ROUTING_MERCHANT_RULE rows
    world.oracle().probability_matrix(rows)  # truth; never a column
    world.oracle().joint_probability_matrix(rows)  # truth of every (processor, message configuration)

Message configurations (CIT/MIT, AVS data, MCC; smartrouter.messages) are part of every attempt:
the merchant's default outside the experiment arm, uniform over the eligible ones inside it.
"""

from smartrouter.world.generate import DayChunk, World, calibration_report
from smartrouter.world.oracle import Oracle
from smartrouter.world.params import PROFILES, WorldParams

__all__ = ["PROFILES", "DayChunk", "Oracle", "World", "WorldParams", "calibration_report"]
