"""Typed configurations of every stage; YAML files in config/ map onto these dataclasses."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .typed_yaml import ConfigError

ENCODER_PRESETS: dict[str, dict[str, int]] = {     # transformer sizes of the named encoders
    "vit_s": {"dim": 384, "depth": 12, "heads": 6},
    "vit_t": {"dim": 192, "depth": 12, "heads": 3},
}

@dataclass
class ModelConfig:
    """Tokenizer + transformer encoder. `encoder` is a preset (vit_s, vit_t) or "custom"."""

    encoder: str = "vit_t"
    dim: int | None = None          # override the preset's width
    depth: int | None = None
    heads: int | None = None
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    num_groups: int = 64            # c: centers per cloud
    group_size: int = 32            # k: points per group
    in_channels: int = 3            # xyz (+ extra channels such as intensity)
    pos_every_layer: bool = True    # Point-JEPA adds the positional embedding before every block

    def __post_init__(self) -> None:
        if self.encoder != "custom" and self.encoder not in ENCODER_PRESETS:
            raise ConfigError(f"model.encoder {self.encoder!r} is unknown; use one of {sorted(ENCODER_PRESETS)} or custom")
        if self.encoder == "custom" and None in (self.dim, self.depth, self.heads):
            raise ConfigError("model.encoder=custom needs model.dim, model.depth and model.heads")
        for name in ("num_groups", "group_size", "in_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1")
        if self.in_channels < 3:
            raise ConfigError("model.in_channels must be >= 3 (x, y, z first)")


@dataclass
class DataConfig:
    """Where clouds come from. source: "synthetic" or a format of foundry_core.data.formats."""

    source: str = "synthetic"
    root: str = ""
    options: dict = field(default_factory=dict)   # extra loader keyword arguments
    num_points: int = 1024
    split: Literal["stratified", "loader"] = "stratified"
    test_fraction: float = 0.2
    split_seed: int = 0
    synthetic_shapes: int = 800
    synthetic_seed: int = 0
    augment: list[str] = field(default_factory=lambda: ["scale", "rotate_up"])
    with_seg: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError("data.test_fraction must be in (0, 1)")
        if self.num_points < 1:
            raise ConfigError("data.num_points must be >= 1")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    epochs: int = 10
    warmup_epochs: int = 1
    batch_size: int = 32
    grad_clip: float = 10.0         # 0 disables clipping
    backbone_lr_scale: float = 1.0  # fine-tuning: lr multiplier of the pre-trained backbone
    frozen_epochs: int = 0          # fine-tuning: backbone lr is 0 for the first epochs

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("optim.lr must be > 0, optim.epochs and optim.batch_size >= 1")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ConfigError("optim.warmup_epochs must be within [0, optim.epochs]")


@dataclass
class RunConfig:
    """Where and how a training run executes."""

    out_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    amp: bool = True                # mixed precision on CUDA only
    num_workers: int = 0
    eval_every: int = 1             # epochs between evaluations (0: only at the end)
    progress: bool = True


@dataclass
class JEPAConfig:
    """Point-JEPA: center sequencer, 4 target blocks, contiguous context, narrow predictor, EMA."""

    num_targets: int = 4
    target_scale: list[float] = field(default_factory=lambda: [0.15, 0.2])
    context_scale: list[float] = field(default_factory=lambda: [0.4, 0.75])
    predictor_dim: int = 192
    predictor_depth: int = 6
    predictor_heads: int = 6
    ema: list[float] = field(default_factory=lambda: [0.9995, 0.99999])
    loss_beta: float = 2.0
    min_context: int = 4
    export: Literal["target", "online"] = "target"   # which encoder becomes the teacher backbone
    # objective: "jepa" (predict the EMA target's tokens) or "mae" (Point-MAE control: reconstruct the
    # masked groups' points, Chamfer L2; same backbone, masks and predictor; no EMA, exports the encoder)
    objective: Literal["jepa", "mae"] = "jepa"
    # predictor positions: "absolute" centers, or "context_relative" (every center minus the mean of the
    # cloud's context centers, so absolute target positions alone cannot give the answer)
    predictor_pos: Literal["absolute", "context_relative"] = "absolute"
    target_pos_noise: float = 0.0       # std of Gaussian noise on the target positions the predictor sees
    # targets: "full" (the EMA target's LayerNorm'd tokens) or "position_residual" (each batch's least-squares
    # fit of the tokens from the target's own positional embedding subtracted first, so the part of a target
    # that its position alone gives is not asked for: the predictor must read content from the context)
    target: Literal["full", "position_residual"] = "full"
    context_tokens_only: bool = False   # online tokenizer embeds only the context groups (same groups, less work)
    predictor_batched: bool = False     # one predictor sequence per cloud for all target blocks (block-masked attention)
    cpu_bf16: bool = False              # bfloat16 autocast of the training step on CPU where it has AMX / AVX512-BF16
    #                                     (float32 elsewhere: emulated bf16 is ~10x slower; train/cpu_bf16.py)
    native_grouping: bool = False       # CPU: FPS by fpsample (vanilla kernel) and kNN by pykdtree at every size (same groups)
    # weight of VICReg's variance + covariance terms on the context encoder's output tokens (0: off), against
    # the low-rank features the per-stage probe found in the pre-trained blocks (docs/results.md §1)
    vc_weight: float = 0.0
    # targets from the last `target_layers` blocks of the EMA encoder: each block's output LayerNorm'd, then
    # averaged (data2vec's layer-averaged targets; 1: the last block only, Point-JEPA). Every averaged block
    # is asked to carry what the predictor must produce, not only the last.
    target_layers: int = 1
    # keep the tokenizer's positional embedding (an MLP of the center coordinates, added before every block) at
    # its random initialisation, in both encoders: max+mean pooled, those random features of the centers are
    # most of what makes a random encoder a strong linear-probe baseline (probe_by_layer.json: one random block
    # lifts the tokens from 41.8 to 61.7 %); pre-training then adds to them instead of replacing them
    freeze_pos_embed: bool = False
    # keep the encoder's first `frozen_blocks` blocks at their random initialisation, in both encoders (0: off):
    # the probe by layer found one random block the source of the random encoder's strength; pre-training then
    # learns only above it, so what the probe reads can add to those features instead of replacing them
    frozen_blocks: int = 0

    def __post_init__(self) -> None:
        if self.frozen_blocks < 0:
            raise ConfigError("jepa.frozen_blocks must be >= 0 (0: every block trains)")
        if self.target_layers < 1:
            raise ConfigError("jepa.target_layers must be >= 1 (1: the last block's output)")
        if self.target_pos_noise < 0:
            raise ConfigError("jepa.target_pos_noise must be >= 0")
        if not self.vc_weight >= 0:
            raise ConfigError("jepa.vc_weight must be >= 0")
        for name in ("target_scale", "context_scale", "ema"):
            if len(getattr(self, name)) != 2:
                raise ConfigError(f"jepa.{name} must be a list of two numbers [start, end]")
        lo, hi = self.target_scale
        if not 0 < lo <= hi < 1:
            raise ConfigError("jepa.target_scale must satisfy 0 < lo <= hi < 1")
        lo, hi = self.context_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError("jepa.context_scale must satisfy 0 < lo <= hi <= 1")
        if not 0 <= self.ema[0] <= self.ema[1] <= 1:
            raise ConfigError("jepa.ema must be [start, end] with 0 <= start <= end <= 1")


@dataclass
class ProbeConfig:
    """Linear probe on max+mean pooled tokens (quality check of a backbone)."""

    classifier: Literal["svm", "logistic"] = "svm"
    C: float = 0.012                    # the recipe's regularisation
    cv_grid: list[float] = field(default_factory=lambda: [0.003, 0.012, 0.05, 0.2, 1.0])  # C chosen by CV
    num_points: int = 1024


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    jepa: JEPAConfig = field(default_factory=JEPAConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    # more clouds for pre-training only (e.g. generated shapes next to INFOMR): the training split of
    # each source, labels ignored; the probe reads `data` alone
    extra_data: list[DataConfig] = field(default_factory=list)


@dataclass
class OperatingPoint:
    """One point of a scene model's compute range, cheapest first in a model's list: the points that
    reach the network, the token centers c and the encoder token budget of a gated student.

    Fine-tuning draws one per batch (so accuracy holds across the range); the exported model carries
    the list, the model card adds each point's held-out mIoU and latency, and the node's controller
    picks one per frame (foundry_ros/operating_points.py)."""

    name: str
    points: int                          # max points reaching the network (range-aware thinning above it)
    centers: int                         # max token centers c
    budget: int | None = None            # encoder token budget (gated students); None = every token
    fusion_threshold: float | None = 2.0  # gate threshold r; > 1: the budget alone decides the merges
    miou: float | None = None            # held-out mIoU % (written by the model card)
    latency_ms: float | None = None      # median latency on the model card's machine

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("operating point needs a name")
        if self.points < 1 or self.centers < 1:
            raise ConfigError(f"operating point {self.name}: points and centers must be >= 1")
        if self.budget is not None and self.budget < 1:
            raise ConfigError(f"operating point {self.name}: budget must be >= 1 or null")


@dataclass
class FinetuneConfig:
    """Supervised fine-tuning of a backbone (pre-trained checkpoint or random init) with a head."""

    task: Literal["cls", "partseg", "sceneseg"] = "cls"
    init: str = ""                  # backbone checkpoint; empty = random initialisation
    # init is a task model of this task, classes and head: continue from its head too (else a new head)
    init_head: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    label_smoothing: float = 0.1
    head_dropout: float = 0.5
    seg_layers: list[int] = field(default_factory=lambda: [4, 8, 12])
    seg_hidden: list[int] = field(default_factory=lambda: [512, 256])   # widths of the segmentation MLP
    seg_point_geometry: bool = False  # the segmentation MLP also reads each point's offset from its nearest center
    seg_local_shape_k: int = 0        # > 0: ... and its LocalShape descriptors from that many nearest points
    seg_local_shape_voxels: list[float] = field(default_factory=lambda: [0.0])   # their scales (0: the points)
    category_embedding: bool = True   # partseg: add a learned object-category embedding
    class_weighting: Literal["none", "inverse_sqrt", "inverse"] = "none"   # segmentation: weight rare classes up
    # compute range of the model (scene models): each training batch runs at one of these points
    # (points subsampled from data.num_points, c centers, budget); empty = the fixed model.num_groups
    operating_points: list[OperatingPoint] = field(default_factory=list)
    # relative frequency of each operating point among the training batches (one per point, > 0);
    # empty = uniform
    operating_point_weights: list[float] = field(default_factory=list)
    # with operating points: before every evaluation (so in the exported model too) the BatchNorm
    # statistics are recomputed over this many training batches, cycling through the points
    # (train/precise_batchnorm.py); 0: keep the running averages of the last batches
    bn_recalibration_batches: int = 32
    # the exported model also carries BatchNorm statistics of each operating point on its own batches
    # (bn_recalibration_batches each; models/batchnorm_bank.py), which the predictor switches to per frame
    bn_per_operating_point: bool = False

    def __post_init__(self) -> None:
        if self.bn_per_operating_point and (not self.operating_points or not self.bn_recalibration_batches):
            raise ConfigError("bn_per_operating_point needs operating_points and bn_recalibration_batches > 0")
        if self.bn_recalibration_batches < 0:
            raise ConfigError(f"bn_recalibration_batches must be >= 0 (0: off), got {self.bn_recalibration_batches}")
        if self.init_head and not self.init:
            raise ConfigError("init_head: true needs init (a task model checkpoint)")
        if self.seg_local_shape_k < 0:
            raise ConfigError(f"seg_local_shape_k must be >= 0 (0: off), got {self.seg_local_shape_k}")
        if not self.seg_local_shape_voxels or min(self.seg_local_shape_voxels) < 0:
            raise ConfigError(f"seg_local_shape_voxels must be one or more voxel sizes >= 0 (m; 0: the points "
                              f"themselves), got {self.seg_local_shape_voxels}")
        if len(self.seg_hidden) != 2 or min(self.seg_hidden) < 1:
            raise ConfigError(f"seg_hidden must be two widths >= 1, got {self.seg_hidden}")
        if self.operating_point_weights and (len(self.operating_point_weights) != len(self.operating_points)
                                             or min(self.operating_point_weights) <= 0):
            raise ConfigError(f"operating_point_weights must be one weight > 0 per operating point "
                              f"({len(self.operating_points)}), got {self.operating_point_weights}")
        names = [op.name for op in self.operating_points]
        if len(set(names)) != len(names):
            raise ConfigError(f"operating_points: names must be unique, got {names}")
        for op in self.operating_points:
            if op.points > self.data.num_points:
                raise ConfigError(f"operating point {op.name}: points {op.points} > data.num_points "
                                  f"{self.data.num_points} (the clouds training draws from)")


@dataclass
class TokenizerInitData:
    """More unlabelled clouds for the tokenizer-only distillation, grouped at their own density (e.g.
    scenes of 4,096 points with 128 centers, whose groups are ~3x smaller than an object's). Only the
    training split of `data` is read (its test split is never seen), labels are ignored."""

    data: DataConfig = field(default_factory=DataConfig)
    num_groups: int = 0                 # centers per cloud (0: the tokenizer's num_groups)
    repeats: int = 1                    # passes over these clouds per init epoch (each a fresh resample)

    def __post_init__(self) -> None:
        if self.num_groups < 0 or self.repeats < 1:
            raise ConfigError("student.tokenizer.init_data: num_groups must be >= 0 and repeats >= 1")


@dataclass
class StudentTokenizerConfig:
    """The student's tokenizer: the teacher's (a frozen copy) or a student tokenizer of its own (ours),
    a compact mini-PointNet (models/compact_pointnet.py) on the teacher's groups, trained to reproduce
    the teacher's tokens: token_loss_weight * SmoothL1(student tokens, teacher tokens) is added to the
    distillation loss, after init_epochs epochs of distilling the tokenizer alone (0: none)."""

    kind: Literal["teacher", "compact"] = "teacher"
    widths: list[int] = field(default_factory=lambda: [64, 128, 256])   # h1, h2 (local MLP), h3 (group MLP)
    group_points: int | None = None     # read the k' nearest points of each group; None = all k
    scale_free: bool = False            # groups at unit radius + log radius as an input (one code per density)
    token_loss_weight: float = 1.0      # weight of the token-level loss (kind compact)
    init_epochs: int = 0                # epochs of tokenizer-only distillation before the main loop
    init_lr: float = 1e-3
    # tokenizer-only distillation: each group's relative xyz scaled by a log-uniform factor in [lo, hi]
    # (teacher and student see the same scaled groups), so the student matches the teacher on the smaller
    # groups of denser clouds too (a scene of 4,096 points has groups ~3x smaller than an object of 1,024)
    init_group_scale: list[float] | None = None
    # tokenizer-only distillation: clouds of other densities next to the distillation data
    init_data: list[TokenizerInitData] = field(default_factory=list)
    # keep the tokenizer as the initialisation left it (no token loss, no drift in the main loop towards
    # the distillation data's density; needs init_epochs > 0)
    freeze_after_init: bool = False

    def __post_init__(self) -> None:
        if self.freeze_after_init and (self.kind == "teacher" or self.init_epochs < 1):
            raise ConfigError("student.tokenizer.freeze_after_init needs kind compact and init_epochs >= 1")
        if self.init_group_scale is not None:
            lo_hi = [float(v) for v in self.init_group_scale]
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
                raise ConfigError("student.tokenizer.init_group_scale must be [lo, hi] with 0 < lo <= hi, or null")
            self.init_group_scale = lo_hi
        if len(self.widths) != 3 or min(self.widths) < 1:
            raise ConfigError("student.tokenizer.widths must be three widths >= 1 [h1, h2, h3]")
        if self.group_points is not None and self.group_points < 1:
            raise ConfigError("student.tokenizer.group_points must be >= 1 or null")
        if self.token_loss_weight < 0 or self.init_epochs < 0 or self.init_lr <= 0:
            raise ConfigError("student.tokenizer: token_loss_weight and init_epochs must be >= 0, init_lr > 0")

    @property
    def pointnet(self) -> dict | None:
        """PointTokenizer's `pointnet` argument (None: the teacher's mini-PointNet)."""
        if self.kind == "teacher":
            return None
        spec = {"kind": self.kind, "widths": list(self.widths), "group_points": self.group_points}
        return {**spec, "scale_free": True} if self.scale_free else spec


@dataclass
class StudentConfig:
    """The Foundry student distilled from a teacher (DSO -> encoder -> CAU, optional Foundry-Gate)."""

    kind: Literal["foundry", "random", "fewer_centers", "tome", "kmeans"] = "foundry"  # baselines share the loop
    supertokens: int = 16               # s (foundry, kmeans) or tokens kept (random, fewer_centers, tome)
    model: ModelConfig | None = None    # student encoder size; None = the teacher's architecture
    frozen_student: bool = False        # keep the (teacher-initialised) encoder fixed
    freeze_tokenizer: bool = True
    gate: bool = False
    gate_lambda: float = 1e-11          # regulariser weight of -lambda * sum(pi)
    tau: float = 1.0                    # Gumbel-Softmax temperature
    hard: bool = True                   # False: soft assignment (ablation)
    qkv_bias: bool = False
    cau_out_norm: bool = False
    cau_skip: bool = False              # CAU adds the routed SuperToken output (zero-init MLP; see models/cau.py)
    # DSO similarity: "dot" (the paper) or "cosine" (centred keys, learnable scale; see models/dso.py)
    dso_similarity: Literal["dot", "cosine"] = "dot"
    tokenizer: StudentTokenizerConfig = field(default_factory=StudentTokenizerConfig)   # kind teacher: a frozen copy

    def __post_init__(self) -> None:
        if self.supertokens < 1:
            raise ConfigError("student.supertokens must be >= 1")
        if self.tau <= 0:
            raise ConfigError("student.tau must be > 0")


@dataclass
class DistillConfig:
    """Foundation Model Distillation of a pre-trained teacher into a Foundry student."""

    teacher: str = ""                   # exported teacher backbone (.safetensors); loss kl: a fine-tuned task model
    student: StudentConfig = field(default_factory=StudentConfig)
    # smooth_l1 / mse: Foundation Model Distillation (reconstruct the teacher's tokens, task-agnostic);
    # kl: a specialist (paper Table 2): KL divergence on one task's logits, teacher = that task's model
    loss: Literal["smooth_l1", "mse", "kl"] = "smooth_l1"
    temperature: float = 4.0            # softmax temperature of the kl loss
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    eval_probe: bool = True             # linear probe of the student at each evaluation (val loss always)
