"""Skip-TS: teacher-student anomaly detection with skip connections for medical images.

Liu et al., "Anomaly Detection for Medical Images Using Teacher-Student Model With Skip Connections
and Multiscale Anomaly Consistency", IEEE TIM 2024.
"""

from .lightning_model import SkipTS
from .loss import SkipTSLoss
from .torch_model import SkipTSModel, TeacherWeightsError

__all__ = ["SkipTS", "SkipTSLoss", "SkipTSModel", "TeacherWeightsError"]
