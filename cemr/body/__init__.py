"""SMPL body model (smplx wrapper with SPIN's 49 and H3.6M's 17 joints), GMM pose prior, procedural model."""

from cemr.body.prior import MaxMixturePrior
from cemr.body.smpl import GENDER_CODES, BodyModel, BodyOutput, load_body_model, normalize_gender
from cemr.body.synthetic import make_synthetic_body_model

__all__ = [
    "GENDER_CODES",
    "BodyModel",
    "BodyOutput",
    "MaxMixturePrior",
    "load_body_model",
    "make_synthetic_body_model",
    "normalize_gender",
]
