"""What PaddleOCR-VL is and how its makers run it: the vLLM recipe and PaddleX's defaults, stated once.

A leaf module: plain constants, imported by planning (the launch and the budget) and by the proxy (what
each block request asks and how a page is laid out), so both sides agree on every number.
"""

from __future__ import annotations

from packaging.version import Version

# ------------------------------------------------------------------------------------- the model

ARCHITECTURE = "PaddleOCRVLForConditionalGeneration"
# vLLM serves the architecture natively from this release on.
NATIVE_SINCE = Version("0.11.1")
# The first release kept the VLM in this sub-directory of the repo; PaddleX prefers it when present.
EARLY_SUBDIR = "PaddleOCR-VL-0.9B"
VERSIONS: tuple[str, ...] = ("0.9B", "1.5", "1.6")
# The name PaddleX's own clients send as `model`, per version (served as an alias).
CANONICAL_NAMES: dict[str, str] = {
    "0.9B": "PaddleOCR-VL-0.9B",
    "1.5": "PaddleOCR-VL-1.5-0.9B",
    "1.6": "PaddleOCR-VL-1.6-0.9B",
}
# Our packaged chat template per version (1.5 and later end the prompt with "Assistant:\n").
CHAT_TEMPLATES: dict[str, str] = {
    "0.9B": "paddleocr_vl_0.9b.jinja",
    "1.5": "paddleocr_vl_1.5.jinja",
    "1.6": "paddleocr_vl_1.5.jinja",
}
LAYOUT_MODELS: tuple[str, ...] = ("PP-DocLayoutV2", "PP-DocLayoutV3")
DEFAULT_LAYOUT_MODEL: dict[str, str] = {"0.9B": "PP-DocLayoutV2", "1.5": "PP-DocLayoutV3", "1.6": "PP-DocLayoutV3"}
# Image tokens: one per 28x28 pixels (patch 14, spatial merge 2).
PIXELS_PER_IMAGE_TOKEN = 28 * 28

# ------------------------------------------------------------------------------- the vLLM recipe

# Tokens vLLM schedules in one step; its start-up profile of the image encoder (the largest transient of
# the budget) grows with it. vLLM's recipe for PaddleOCR-VL says 16384 (PaddleX's own server 131072); at
# 8192 a step of this 0.9B model is still a few large matmuls on any data-centre GPU, and the profile is
# half as large, which keeps an instance with its layout model on the same card inside 8 GiB at 64
# in-flight blocks. A user's --max-num-batched-tokens wins, and the budget follows it.
MAX_NUM_BATCHED_TOKENS = 8192
# vLLM's recipe for PaddleOCR-VL (vLLM recipes, PaddlePaddle/PaddleOCR-VL.md), with the batch above:
# the image encoder's profiling stays small, and caches that never hit for one-off page crops are off.
RECOMMENDED_FLAGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("--max-num-batched-tokens", (str(MAX_NUM_BATCHED_TOKENS),)),
    ("--no-enable-prefix-caching", ()),
    ("--mm-processor-cache-gb", ("0",)),
)
# vLLM's KV cache is paged in blocks of 16 tokens (CacheConfig.block_size default).
KV_BLOCK_TOKENS = 16

# --------------------------------------------------------------------- one block request (PaddleX)

# The prompt around one image: "<|begin_of_sentence|>User: <|IMAGE_START|>", "<|IMAGE_END|>", the task
# prompt ("Table Recognition:" is the longest) and "\nAssistant: " stay under 32 tokens.
PROMPT_TEXT_TOKENS = 32
# PaddleX's clients send max_completion_tokens 4096 unless told otherwise.
DEFAULT_MAX_NEW_TOKENS = 4096
DEFAULT_TEMPERATURE = 0.0
# mm_processor_kwargs PaddleX sends with every block crop (paddlex >= 3.4); spotting has its own range.
DEFAULT_MIN_PIXELS = 112_896
DEFAULT_MAX_PIXELS = 1_003_520
SPOTTING_PIXELS: tuple[int, int] = (112_896, 1_605_632)
LARGEST_CLIENT_PIXELS = SPOTTING_PIXELS[1]
# A block's answer rarely exceeds 1024 tokens (PaddleX's cap is 4096). KV blocks are allocated as tokens
# are generated and vLLM preempts and later resumes requests when the pool runs dry, so planning the KV
# cache for this many slows a burst of long answers down but never fails one.
PLANNING_NEW_TOKENS = 1024

# --------------------------------------------------------------------- layout detection (PaddleX)

# PP-DocLayoutV2 class ids, in order (PaddleX's label_list; PP-DocLayoutV3 has the same 25 in the same order).
PP_DOCLAYOUT_V2_LABELS: tuple[str, ...] = (
    "abstract", "algorithm", "aside_text", "chart", "content", "display_formula", "doc_title",
    "figure_title", "footer", "footer_image", "footnote", "formula_number", "header",
    "header_image", "image", "inline_formula", "number", "paragraph_title", "reference",
    "reference_content", "seal", "table", "text", "vertical_text", "vision_footnote",
)  # fmt: skip

# Labels PaddleX leaves out of the reading order (their boxes get order None).
UNORDERED_LABELS: frozenset[str] = frozenset({
    "figure_title", "vision_footnote", "image", "chart", "table", "header", "header_image",
    "footer", "footer_image", "footnote", "aside_text",
})  # fmt: skip
# PP-DocLayoutV2's reading-order inputs (the published config.json): the score a detection needs to
# enter the reading-order model, per class, and the reading-order model's own class id for each class.
PP_DOCLAYOUT_V2_CLASS_THRESHOLDS: tuple[float, ...] = (
    0.5, 0.5, 0.5, 0.5, 0.5, 0.4, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5,
    0.5, 0.5, 0.4, 0.5, 0.4, 0.5, 0.5, 0.45, 0.5, 0.4, 0.4, 0.5,
)  # fmt: skip
PP_DOCLAYOUT_V2_CLASS_ORDER: tuple[int, ...] = (
    4, 2, 14, 1, 5, 7, 8, 6, 11, 11, 9, 13, 10, 10, 1, 2, 3, 0, 2, 2, 12, 1, 2, 15, 6,
)  # fmt: skip
# The models' input: an 800 x 800 resize (bicubic, aspect not kept), pixels scaled to [0, 1].
LAYOUT_INPUT_SIZE = (800, 800)

# PaddleX's pipeline configuration for PaddleOCR-VL (PP-DocLayoutV2), used when a request sets nothing.
_LOWER_THRESHOLD = {"display_formula": 0.4, "doc_title": 0.4, "inline_formula": 0.4,
                    "paragraph_title": 0.4, "text": 0.4, "vertical_text": 0.4, "seal": 0.45}  # fmt: skip
_LARGE_MERGE = {"chart", "display_formula", "doc_title", "inline_formula", "paragraph_title"}
V2_DEFAULT_THRESHOLD: dict[int, float] = {
    i: _LOWER_THRESHOLD.get(label, 0.5) for i, label in enumerate(PP_DOCLAYOUT_V2_LABELS)
}
V2_DEFAULT_MERGE_BBOXES_MODE: dict[int, str] = {
    i: "large" if label in _LARGE_MERGE else "union" for i, label in enumerate(PP_DOCLAYOUT_V2_LABELS)
}
V3_DEFAULT_THRESHOLD = 0.3  # PaddleOCR-VL 1.5/1.6 with PP-DocLayoutV3
DEFAULT_UNCLIP_RATIO: tuple[float, float] = (1.0, 1.0)
DEFAULT_LAYOUT_NMS = True
MERGE_BBOXES_MODES: tuple[str, ...] = ("large", "small", "union")

# ------------------------------------------------------------------------------ pages (PaddleX)

# PDFs are rendered at scale 2.0 (about 144 dpi), lowered so a page stays under the pixel limit.
PDF_RENDER_SCALE = 2.0
MAX_PAGE_PIXELS = 178_956_970
# Labels a page's markdown leaves out unless the request says otherwise.
DEFAULT_MARKDOWN_IGNORE_LABELS: tuple[str, ...] = (
    "number", "footnote", "header", "header_image", "footer", "footer_image", "aside_text",
)  # fmt: skip
