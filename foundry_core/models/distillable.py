"""What every distillable backbone shares (the Foundry student and the token-reduction baselines):
freezing the tokenizer / encoder, and building an encoder initialised from a teacher."""
from __future__ import annotations

import copy

import torch

from ..configs import ModelConfig
from .backbone import Backbone, PointBackbone, encoder_kwargs
from .encoder import TransformerEncoder


def encoder_from_teacher(teacher: PointBackbone, cfg: ModelConfig | None, init: bool = True
                         ) -> tuple[TransformerEncoder, ModelConfig, list[str]]:
    """A student encoder of config `cfg` (default: the teacher's) initialised from the teacher's
    encoder wherever a tensor of the same name and shape exists (same preset: full copy; shallower:
    the first blocks; narrower: only what still matches). Returns (encoder, cfg, copied names)."""
    cfg = cfg or teacher.cfg
    encoder = TransformerEncoder(**encoder_kwargs(cfg))
    copied: list[str] = []
    if init:
        src = teacher.encoder.state_dict()
        with torch.no_grad():
            for name, value in encoder.state_dict().items():
                if name in src and src[name].shape == value.shape:
                    value.copy_(src[name])
                    copied.append(name)
    return encoder, cfg, copied


class FreezableBackbone(Backbone):
    """A backbone distilled from a teacher (Foundry student, baselines): `tokenizer` and `encoder` can
    be frozen (no gradients, kept in eval mode so BatchNorm statistics and drop path stay fixed while
    the rest trains), and `init_kwargs` + the tokenizer geometry rebuild it from checkpoint metadata."""

    tokenizer_frozen: bool = False
    encoder_frozen: bool = False

    @classmethod
    def from_teacher(cls, teacher: PointBackbone, *args, student_cfg: ModelConfig | None = None,
                     freeze_tokenizer: bool = True, init_encoder: bool = True, tokenizer_pointnet: dict | None = None,
                     **kwargs):
        """A student / baseline on a deep copy of the teacher's tokenizer (frozen by default, same
        grouping, so teacher and student see the same tokens) and an encoder built from student_cfg
        (default: the teacher's config) initialised from the teacher's encoder wherever a tensor of
        the same name and shape exists. With the teacher's own config a baseline is the "inference
        from baseline" model (no training needed); the same module is what FMD trains. Extra
        arguments go to the constructor; teacher_dim defaults to the teacher's width.
        tokenizer_pointnet: a student tokenizer of its own instead of the copy (same grouping, the
        teacher's positional embedding copied, this group encoder fresh; see
        models/compact_pointnet.py); it is never frozen (distillation trains it)."""
        encoder, cfg, copied = encoder_from_teacher(teacher, student_cfg, init_encoder)
        kwargs.setdefault("teacher_dim", teacher.dim)
        if tokenizer_pointnet is None:
            tokenizer = copy.deepcopy(teacher.tokenizer)
        else:
            tokenizer, freeze_tokenizer = teacher.tokenizer.with_pointnet(tokenizer_pointnet), False
        model = cls(tokenizer, encoder, *args, cfg=cfg, **kwargs)
        model.copied_from_teacher = copied
        model.freeze_tokenizer(freeze_tokenizer)
        return model

    @property
    def tokenizer_is_teachers(self) -> bool:
        """The tokenizer is the teacher's frozen copy (so the teacher's tokens are the student's)."""
        return self.tokenizer_frozen and self.tokenizer.pointnet_spec is None

    def rebuild_meta(self) -> dict:
        """Tokenizer geometry, constructor arguments and (baselines) the method's name."""
        tok = self.tokenizer
        geometry = {"dim": tok.dim, "num_groups": tok.num_groups, "group_size": tok.group_size,
                    "in_channels": tok.in_channels}
        if tok.pointnet_spec is not None:         # a student tokenizer of its own (absent: the teacher's)
            geometry["pointnet"] = tok.pointnet_spec
        return {"tokenizer": geometry, "student": dict(self.init_kwargs), "baseline": getattr(self, "kind", None)}

    def freeze_tokenizer(self, frozen: bool = True):
        self.tokenizer_frozen = frozen
        self.tokenizer.requires_grad_(not frozen)
        self.train(self.training)
        return self

    def freeze_encoder(self, frozen: bool = True):
        """Frozen-student variant: the encoder is fixed; DSO/CAU/gate (or the baseline's own parts) learn."""
        self.encoder_frozen = frozen
        self.encoder.requires_grad_(not frozen)
        self.train(self.training)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if self.tokenizer_frozen:
            self.tokenizer.eval()
        if self.encoder_frozen:
            self.encoder.eval()
        return self
