"""Physics of the RIS system: geometry, steering, channel, codebooks (one home each)."""

from risloc.physics.channel import draw_channel, rician_channel
from risloc.physics.codebooks import draw_codes, quantize_phase
from risloc.physics.geometry import (
    angles_from_direction,
    angular_separation,
    direction,
    element_positions,
    source_position,
)
from risloc.physics.steering import (
    SteeringJacobian,
    far_field_response,
    path_difference,
    steering,
    steering_derivatives,
    steering_jacobian,
    ula_response,
)

__all__ = [
    "SteeringJacobian", "angles_from_direction", "angular_separation", "direction",
    "draw_channel", "draw_codes",
    "element_positions", "far_field_response", "path_difference", "quantize_phase",
    "rician_channel", "source_position", "steering", "steering_derivatives", "steering_jacobian",
    "ula_response",
]
