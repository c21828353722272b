"""Feed-forward style-transfer students.

Every student maps (B, 3, H, W) float RGB in [0, 1] to a stylised image of
the same shape and range.  Build them by name::

    from students import create_student, list_students
    model = create_student("johnson")
    multi = create_student("fast", styles=["candy", "udnie"])   # multi(images, style_weights)

Importing this package registers all built-in students.
"""

from .registry import create_student, list_students, register_student
from .checkpoint import (
    StudentCheckpointError,
    load_student,
    read_student_metadata,
    save_student,
)

# Imported for their @register_student side effect.
from .fast import FastStudent
from .johnson import JohnsonNet
from .timm_encoder import TimmEncoderStudent

__all__ = [
    "FastStudent",
    "JohnsonNet",
    "StudentCheckpointError",
    "TimmEncoderStudent",
    "create_student",
    "list_students",
    "load_student",
    "read_student_metadata",
    "register_student",
    "save_student",
]
