"""OpenPose body (+ optional hands and face) through controlnet_aux, with ControlNet's checkpoints.

Output: the skeleton(s) drawn in OpenPose colours on black, RGB, at the input's size. An image in which no person
is found gives reason "no_person_found": an empty skeleton is never passed off as a sample.

OpenPose's peak finding and limb grouping run per image on the CPU (numpy/scipy), so this annotator processes
one image at a time even on a GPU; the network is the smaller share of its time.

DWPose is not offered: controlnet_aux's DWPose needs the OpenMMLab stack (mmcv, mmdet, mmpose), and the ONNX ports
on PyPI are single-maintainer packages that would need ONNX graphs of YOLOX + RTMPose to test without downloads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from x2i.engine.registry import register_annotator

from .base import Annotation, Annotator, import_controlnet_aux, resize_short
from .edges import ANNOTATORS_REPO
from .weights import ResolvedWeights, WeightSpec


@dataclass
class OpenPoseOptions:
    include_hand: bool = False
    include_face: bool = False
    detect_resolution: int = 512
    min_parts: int = 4  # a "person" with fewer body keypoints is noise, not a person


class OpenPose(Annotator):
    kind = "pose"
    library = "controlnet_aux"
    uses_torch = True
    default_batch_size = 1
    Options = OpenPoseOptions
    description = "OpenPose body (+ hand, face) skeletons (controlnet_aux, CMU models; non-commercial licence)"

    def weight_specs(self) -> list[WeightSpec]:
        files = ["body_pose_model.pth"]
        if self.options.include_hand:
            files.append("hand_pose_model.pth")
        if self.options.include_face:
            files.append("facenet.pth")
        return [WeightSpec(ANNOTATORS_REPO, tuple(files), "CMU OpenPose academic/non-commercial")]

    def _load(self, weights: list[ResolvedWeights]) -> Any:
        import_controlnet_aux()
        from controlnet_aux.open_pose import OpenposeDetector
        from controlnet_aux.open_pose.body import Body
        from controlnet_aux.open_pose.face import Face
        from controlnet_aux.open_pose.hand import Hand

        w = weights[0]
        body = Body(str(w.path("body_pose_model.pth"))).to(self.device)
        hand = Hand(str(w.path("hand_pose_model.pth"))).to(self.device) if self.options.include_hand else None
        face = Face(str(w.path("facenet.pth"))).to(self.device) if self.options.include_face else None
        return OpenposeDetector(body, hand, face)

    def _annotate(self, images: list[Image.Image]) -> list[Annotation]:
        import cv2

        import_controlnet_aux()
        from controlnet_aux.open_pose import draw_poses

        o = self.options
        out = []
        for im in images:
            arr = resize_short(np.asarray(im), o.detect_resolution, 64)
            h, w = arr.shape[:2]
            poses = [p for p in self._model.detect_poses(arr, o.include_hand, o.include_face)
                     if p.body.total_parts >= o.min_parts]
            if not poses:
                out.append(Annotation(reason="no_person_found", detail=f"{self.name} found no person "
                                                                       f"with >= {o.min_parts} keypoints"))
                continue
            canvas = draw_poses(poses, h, w, draw_body=True, draw_hand=o.include_hand, draw_face=o.include_face)
            canvas = cv2.resize(canvas, im.size, interpolation=cv2.INTER_LINEAR)
            keypoints = [[None if k is None else [round(float(k.x), 4), round(float(k.y), 4)] for k in p.body.keypoints]
                         for p in poses]
            out.append(Annotation(Image.fromarray(canvas, "RGB"),
                                  info={"people": len(poses), "body_keypoints": keypoints}))
        return out


# The names this module serves (x2i/engine/registry.py); a preset is the options a name stands for.
register_annotator("openpose", OpenPose)
register_annotator("openpose_full", OpenPose, {"include_hand": True, "include_face": True})
