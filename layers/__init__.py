"""SSD layers: priors, box coding, matching, MultiBox loss, Detect, L2Norm (ssd.pytorch's names)."""
from layers.box_utils import center_size, decode, encode, jaccard, point_form
from layers.detection import Detect
from layers.l2norm import L2Norm
from layers.matching import match, match_targets
from layers.multibox_loss import MultiBoxLoss
from layers.prior_box import PriorBox

__all__ = ["Detect", "L2Norm", "MultiBoxLoss", "PriorBox", "center_size", "decode", "encode", "jaccard",
           "match", "match_targets", "point_form"]
