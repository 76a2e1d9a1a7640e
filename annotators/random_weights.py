"""Random weights in the exact file layout each annotator's loader reads (for tests, benchmarks and demos).

`write(name, directory)` builds the annotator's real network with random weights and saves it where a user's
download would be: controlnet_aux checkpoints as the `.pth`/`.pt` files ControlNet publishes (same state-dict
keys), transformers models as `save_pretrained` folders (config, safetensors, preprocessor config). Pointing an
annotator at the folder (explicit path, `$X2I_ANNOTATOR_DIR/<repo>/`, or a Hugging Face cache snapshot) then
exercises exactly the loading code a real checkpoint goes through.

`size="tiny"` shrinks the transformers configs (same classes, same files) so tests run in seconds on a CPU;
`size="real"` uses the published architecture sizes for benchmarks. controlnet_aux networks have fixed sizes.
Outputs of random weights are noise: they check plumbing, shapes and speed, never quality.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

Size = Literal["tiny", "real"]


def _save(state: dict, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in state.items()}, path)


def _strip_block(state: dict) -> dict:
    """CMU OpenPose checkpoints name layers without the block prefix (`conv1_1.weight`, not `model0.conv1_1...`)."""
    return {".".join(k.split(".")[1:]): v for k, v in state.items()}


def _controlnet_aux(name: str, d: Path) -> None:
    from .base import import_controlnet_aux

    import_controlnet_aux()
    if name == "hed":
        from controlnet_aux.hed import ControlNetHED_Apache2

        _save(ControlNetHED_Apache2().state_dict(), d / "ControlNetHED.pth")
    elif name == "lineart":
        from controlnet_aux.lineart import Generator

        _save(Generator(3, 1, 3).state_dict(), d / "sk_model.pth")
        _save(Generator(3, 1, 3).state_dict(), d / "sk_model2.pth")
    elif name == "depth_midas":
        from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

        _save(DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True).state_dict(),
              d / "dpt_hybrid-midas-501f0c75.pt")
    elif name in ("openpose", "openpose_full"):
        from controlnet_aux.open_pose.model import bodypose_model, handpose_model

        _save(_strip_block(bodypose_model().state_dict()), d / "body_pose_model.pth")
        if name == "openpose_full":
            from controlnet_aux.open_pose.face import FaceNet

            _save(_strip_block(handpose_model().state_dict()), d / "hand_pose_model.pth")
            _save(FaceNet().state_dict(), d / "facenet.pth")
    else:
        raise KeyError(name)


def _depth_anything(size: Size):
    from transformers import DepthAnythingConfig, Dinov2Config, DPTImageProcessor

    if size == "real":  # Depth-Anything-V2-Small
        backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14,
                                image_size=518, out_indices=[3, 6, 9, 12], reshape_hidden_states=False)
        config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=384,
                                     neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32)
        side = 518
    else:
        backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
                                patch_size=14, image_size=56, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
        config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32,
                                     neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8)
        side = 56
    processor = DPTImageProcessor(size={"height": side, "width": side}, keep_aspect_ratio=True, ensure_multiple_of=14,
                                  resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return config, processor, "DepthAnythingForDepthEstimation"


def _dpt(size: Size):
    from transformers import DPTConfig, DPTImageProcessor

    if size == "real":  # DPT-Large (ViT-L/16, 384)
        config = DPTConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                           image_size=384, patch_size=16, backbone_out_indices=[5, 11, 17, 23],
                           neck_hidden_sizes=[256, 512, 1024, 1024], fusion_hidden_size=256)
        side = 384
    else:
        config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                           image_size=64, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
                           neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_in_index=-1)
        side = 64
    processor = DPTImageProcessor(size={"height": side, "width": side}, keep_aspect_ratio=False,
                                  image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return config, processor, "DPTForDepthEstimation"


def _upernet(size: Size):
    from transformers import ConvNextConfig, SegformerImageProcessor, UperNetConfig

    stages = ["stage1", "stage2", "stage3", "stage4"]
    if size == "real":  # UperNet + ConvNeXt-S, ADE20K
        backbone = ConvNextConfig(depths=[3, 3, 27, 3], hidden_sizes=[96, 192, 384, 768], out_features=stages)
        config = UperNetConfig(backbone_config=backbone, hidden_size=512, auxiliary_in_channels=384, num_labels=150)
        side = 512
    else:
        backbone = ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], out_features=stages)
        config = UperNetConfig(backbone_config=backbone, hidden_size=16, auxiliary_in_channels=32,
                               auxiliary_channels=16, num_labels=150)
        side = 64
    config.id2label = {i: f"class_{i}" for i in range(150)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    processor = SegformerImageProcessor(size={"height": side, "width": side}, do_reduce_labels=False)
    return config, processor, "UperNetForSemanticSegmentation"


def _sam(size: Size):
    from transformers import (SamConfig, SamImageProcessor, SamMaskDecoderConfig, SamProcessor,
                              SamPromptEncoderConfig, SamVisionConfig)

    if size == "real":  # SAM ViT-B
        config = SamConfig()
        side = 1024
    else:
        vision = SamVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                                 output_channels=16, image_size=64, patch_size=16, window_size=2,
                                 global_attn_indexes=[1], num_pos_feats=8)
        prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4)
        decoder = SamMaskDecoderConfig(hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2,
                                       iou_head_hidden_dim=16)
        config = SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                           mask_decoder_config=decoder.to_dict())
        side = 64
    processor = SamProcessor(SamImageProcessor(size={"longest_edge": side}, pad_size={"height": side, "width": side},
                                               mask_size={"longest_edge": side // 4},
                                               mask_pad_size={"height": side // 4, "width": side // 4}))
    return config, processor, "SamModel"


def _grounding_dino(size: Size):
    """Grounding DINO with a BERT tokenizer over a small vocabulary (the published repo's file layout)."""
    import tempfile

    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoImageProcessor,
                              GroundingDinoProcessor, SwinConfig)

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "a", "an", "the", "red", "green", "blue",
             "yellow", "purple", "orange", "circle", "square", "triangle", "star", "object", "person", "animal"]
    words += list("abcdefghijklmnopqrstuvwxyz") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab = Path(tempfile.mkdtemp()) / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(vocab), do_lower_case=True)
    if size == "real":  # grounding-dino-tiny: Swin-T + BERT-base (the tokenizer here is still the small one)
        config = GroundingDinoConfig(text_config=BertConfig(vocab_size=len(words)))
        image = GroundingDinoImageProcessor()
    else:  # decoder_layers >= 2: the box heads of layers 1.. are tied to layer 0's
        backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                              window_size=4, out_indices=[2, 3, 4])
        text = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=64)
        config = GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1,
                                     decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                                     encoder_attention_heads=2, decoder_attention_heads=2, num_queries=20,
                                     encoder_n_points=2, decoder_n_points=2, max_text_len=32)
        image = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    return config, GroundingDinoProcessor(image_processor=image, tokenizer=tokenizer), "GroundingDinoForObjectDetection"


TRANSFORMERS_BUILDERS = {"grounding_dino": _grounding_dino, "depth_anything": _depth_anything, "depth_dpt": _dpt, "seg_upernet": _upernet, "sam": _sam}


def write(name: str, directory: str | Path, size: Size = "tiny", seed: int = 0) -> Path:
    """Write random weights for annotator `name` into `directory` (the folder its loader reads); returns it."""
    import torch

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if name in TRANSFORMERS_BUILDERS:
        import transformers

        config, processor, cls_name = TRANSFORMERS_BUILDERS[name](size)
        model = getattr(transformers, cls_name)(config).eval()
        model.save_pretrained(d)
        # Published repos hold the image processor's preprocessor_config.json (SAM's too), so write just that;
        # Grounding DINO's also hold its tokenizer, so it writes the whole processor.
        if name == "grounding_dino":
            processor.save_pretrained(d)
        else:
            getattr(processor, "image_processor", processor).save_pretrained(d)
    else:
        _controlnet_aux(name, d)
    return d


def supported() -> list[str]:
    return ["hed", "lineart", "depth_midas", "openpose", "openpose_full", *TRANSFORMERS_BUILDERS]
