"""Values several packages need and that must agree everywhere."""

# ImageNet RGB statistics: the input normalisation of every model here (also used for depth, replicated to 3 channels).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# What a dataset tree scan takes for a video file and for a frame image (lower-case suffixes).
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# The modalities a manifest record, a shard and a run can carry.
MODALITIES = ("rgb", "depth")

# The most classes a label may index (labels 0 .. MAX_CLASSES - 1). Above every action data set (Kinetics-700,
# Something-Something's 174) and ImageNet-21k's 21,841; a larger label is a raw id, not a class index, and would give
# a classifier head of that many rows.
MAX_CLASSES = 100_000
