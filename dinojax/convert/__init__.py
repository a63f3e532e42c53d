"""PyTorch checkpoints <-> dinojax params, one module per model family, each in one shape:
`<family>_from_state_dict(sd, ...)` reads the official (or Hugging Face) state dict strictly (a missing or
unused key, or a shape that differs, is an error naming the key as the file spells it) and
`<family>_to_state_dict(params)` writes what the official code loads; `<family>_from_checkpoint(path,
...)` reads a file where the family has one. Where a file's shapes fix the architecture, the import
returns (module, params); where the caller builds the module, it takes it and returns params.

- `backbone`: DINOv2 ViTs, official or Hugging Face naming (the unprefixed `from_checkpoint`,
  `from_state_dict`, `state_dict_to_params`, `params_to_state_dict`);
- `heads`: DINO / iBOT heads and whole teachers of official training checkpoints;
- `classifier`, `segmenter`, `depther`: the released ImageNet, segmentation and depth heads;
- `talk2dino`: Talk2DINO's projection ψ; `clip_text`: CLIP text towers (Hugging Face or OpenAI naming);
- `dinotxt`: dino.txt's vision head and text encoder;
- `state_dicts`: reading and writing `.pth` / `.safetensors` files, and what the converters share.
"""

from dinojax.convert.backbone import (from_checkpoint, from_state_dict, infer_config, is_huggingface,
                                      params_to_state_dict, state_dict_to_params, to_official_naming)
from dinojax.convert.classifier import classifier_head_from_state_dict, classifier_head_to_state_dict
from dinojax.convert.clip_text import clip_text_from_state_dict, clip_text_to_state_dict, is_openai_clip
from dinojax.convert.depther import depther_head_from_state_dict
from dinojax.convert.dinotxt import (dinotxt_text_encoder_from_state_dict, dinotxt_text_encoder_to_state_dict,
                                     dinotxt_vision_head_from_state_dict, dinotxt_vision_head_to_state_dict)
from dinojax.convert.heads import dino_head_from_state_dict, teacher_from_checkpoint, teacher_from_state_dict
from dinojax.convert.segmenter import segmenter_head_from_state_dict
from dinojax.convert.state_dicts import StateDict, load_state_dict, save_state_dict
from dinojax.convert.talk2dino import talk2dino_from_checkpoint, talk2dino_from_state_dict, talk2dino_to_state_dict
