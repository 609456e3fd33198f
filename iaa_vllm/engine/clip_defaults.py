"""Built-in CLIP ViT-L/14-336 settings, so a release checkpoint loads offline.

Plain data with no imports: `iaa-vllm init` writes the same values without paying
for transformers' config machinery at start-up.
"""

CLIP_L_336 = "openai/clip-vit-large-patch14-336"
CLIP_L_336_CONFIG = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
    num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
    hidden_act="quick_gelu", layer_norm_eps=1e-5,
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_L_336_PREPROCESSOR = dict(
    size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
    do_resize=True, do_center_crop=True, do_rescale=True, rescale_factor=1 / 255,
    do_normalize=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
    resample=3, do_convert_rgb=True,
)
