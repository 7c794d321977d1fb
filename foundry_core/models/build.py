"""Building models from configs: task models (backbone + head) and distilled students / baselines.

The one place the stages (finetune, distill, evaluate), the exporter and the runtime build models."""
from __future__ import annotations

from ..configs import FinetuneConfig, StudentConfig
from .backbone import Backbone, PointBackbone
from .heads import ClassificationHead, SegmentationHead, TaskModel
from .student import FoundryStudent

BASELINE_SIZE_ARG = {"random": "num_keep", "fewer_centers": "num_centers", "tome": "target_tokens",
                     "kmeans": "num_prototypes"}      # student.kind -> constructor argument set by supertokens


def build_task_model(cfg: FinetuneConfig, backbone: Backbone, shapes) -> TaskModel:
    """Backbone + the head of cfg.task sized for the dataset's classes (shapes: classes, seg_classes)."""
    if cfg.task == "cls":
        head = ClassificationHead(backbone.dim, shapes.num_classes, cfg.head_dropout)
    else:
        if shapes.seg_classes is None:
            raise ValueError(f"task {cfg.task} needs per-point labels, but {shapes.name} has none")
        cats = shapes.num_classes if (cfg.task == "partseg" and cfg.category_embedding) else 0
        head = SegmentationHead(backbone.hidden_dim, len(shapes.seg_classes), cfg.seg_layers, cats, cfg.head_dropout,
                                hidden=cfg.seg_hidden, point_geometry=cfg.seg_point_geometry,
                                local_shape_k=cfg.seg_local_shape_k, local_shape_voxels=cfg.seg_local_shape_voxels)
    return TaskModel(backbone, head)


def head_options(cfg: FinetuneConfig) -> dict:
    """The FinetuneConfig fields that shape the head (stored with exported models)."""
    return {"seg_layers": list(cfg.seg_layers), "seg_hidden": list(cfg.seg_hidden),
            "seg_point_geometry": cfg.seg_point_geometry, "seg_local_shape_k": cfg.seg_local_shape_k,
            "seg_local_shape_voxels": list(cfg.seg_local_shape_voxels),
            "category_embedding": cfg.category_embedding, "head_dropout": cfg.head_dropout}


def build_student(sc: StudentConfig, teacher: PointBackbone, fit_data=None) -> Backbone:
    """The Foundry student, or a token-reduction baseline (same interface) when sc.kind says so,
    initialised from the teacher. fit_data: clouds the K-Means prototypes are fitted on (kmeans only)."""
    if sc.kind == "foundry":
        student = FoundryStudent.from_teacher(
            teacher, sc.supertokens, student_cfg=sc.model, gate=sc.gate, freeze_tokenizer=sc.freeze_tokenizer,
            qkv_bias=sc.qkv_bias, tau=sc.tau, hard=sc.hard, cau_out_norm=sc.cau_out_norm, cau_skip=sc.cau_skip,
            gate_reg_weight=sc.gate_lambda, dso_similarity=sc.dso_similarity,
            tokenizer_pointnet=sc.tokenizer.pointnet)
        return student.freeze_encoder(sc.frozen_student)
    from .baselines import BASELINES
    student = BASELINES[sc.kind].from_teacher(teacher, student_cfg=sc.model, freeze_tokenizer=sc.freeze_tokenizer,
                                              tokenizer_pointnet=sc.tokenizer.pointnet,
                                              **{BASELINE_SIZE_ARG[sc.kind]: sc.supertokens})
    if sc.kind == "kmeans":
        if fit_data is None:
            raise ValueError("K-Means prototypes need the training set to fit on")
        student.fit(None, fit_data)
    return student.freeze_encoder(sc.frozen_student)
