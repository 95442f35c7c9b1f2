"""Every evaluation metric's one name, its definition, which way is better and what its chance
level is: metrics.json, the report, the model card, model selection and the README all read them
from here, so a metric is called the same everywhere."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    name: str  # the display name ({n_way}, {top_k} filled in from the protocol)
    better: str  # "higher" or "lower"
    definition: str
    chance: str  # how its chance level (or, where none is computed, its reference) is obtained


BEST_CONSTANT = "chance: the best constant guess, the share of the evaluated trials in the most frequent class"
MISMATCHED = ("chance: the same measure between each generated image and the stimulus of another trial (the next "
              "trial in key order whose image differs): what a generation unrelated to its own stimulus scores")

METRICS: dict[str, MetricInfo] = {
    "eeg_top1": MetricInfo(
        "EEG top-1 accuracy", "higher",
        "EEG classification: fraction of trials whose true class has the highest logit of the high-level encoder",
        BEST_CONSTANT),
    "eeg_top5": MetricInfo(
        "EEG top-5 accuracy", "higher",
        "EEG classification: fraction of trials whose true class is among the 5 highest logits",
        "chance: the best constant guess, the share of the evaluated trials in the 5 most frequent classes"),
    "generated_n_way_top_k": MetricInfo(
        "generated-image {n_way}-way top-{top_k} accuracy", "higher",
        "generated images classified by the fine-tuned teacher: for each image, the true class and n−1 random other "
        "classes are drawn; a hit when the true class is among the top-k of those n logits; averaged over draws",
        "chance: top_k / n_way"),
    "real_n_way_top_k": MetricInfo(
        "real-image {n_way}-way top-{top_k} accuracy", "higher",
        "the same n-way top-k judgement applied to the true images of the trials: the ceiling for the generated-image "
        "accuracy (a teacher near chance here makes that figure meaningless)",
        "chance: top_k / n_way"),
    "hist_intersection": MetricInfo(
        "colour-histogram intersection", "higher",
        "mean intersection of the joint HSV histograms (8×4×4 bins) of each generated image and its true image "
        "(1 = same colours, 0 = no colour in common)", MISMATCHED),
    "hue_emd": MetricInfo(
        "hue EMD", "lower",
        "mean circular earth mover's distance between the saturation-weighted hue histograms (36 bins) of each "
        "generated image and its true image, in turns (0 = same hues, at most 0.5)", MISMATCHED),
    "ssim": MetricInfo(
        "SSIM", "higher",
        "mean SSIM (torchmetrics: Gaussian 11×11, σ 1.5, data range 255) between each generated image and its true "
        "image (1 = identical)",
        "reference: none computed (it needs the images of other trials); unrelated images that share a background "
        "score well above 0, so compare models, not against 0"),
    "pixel_correlation": MetricInfo(
        "pixel correlation", "higher",
        "mean Pearson correlation of all pixel values between each generated image and its true image",
        "reference: none computed (it needs the images of other trials); 0 for unrelated images only when they share "
        "no layout"),
    "hue_error": MetricInfo(
        "hue error", "lower",
        "synthetic corpora: circular distance, in turns (0–0.5), between the dominant hue recovered from each "
        "generated image and the hue recorded for its true image", MISMATCHED),
    "saturation_error": MetricInfo(
        "saturation error", "lower",
        "synthetic corpora: absolute difference between the saturation of the dominant colour recovered from each "
        "generated image and the saturation recorded for its true image (0–1)", MISMATCHED),
    "brightness_error": MetricInfo(
        "brightness error", "lower",
        "synthetic corpora: absolute difference between the brightness (HSV value) of the dominant colour recovered "
        "from each generated image and the brightness recorded for its true image (0–1)", MISMATCHED),
    "inception_score": MetricInfo(
        "Inception score", "higher",
        "IS of the generated images: exp(E KL(p(y|x) || p(y))) over the FID Inception's 1008 logits, mean ± std over "
        "`is_splits` splits (torch-fidelity's definition)",
        "reference: 1 for identical predictions on every image; the real images' IS is the usual yardstick"),
    "fid": MetricInfo(
        "FID", "lower",
        "Fréchet distance between Inception pool3 (2048-d) Gaussians of the real reference images (each distinct "
        "image once; `protocol.reference`) and the generated images; images enter as uint8 and are resized to 299 "
        "with the TF-compatible bilinear resize of the original FID code (torch-fidelity), not torchmetrics>=1.8's "
        "antialiased resize",
        "reference: 0 for a generated set distributed as the reference set; depends on the number of images "
        "(`protocol.real_images`, `generated_images`): compare only at equal counts"),
    "kid": MetricInfo(
        "KID", "lower",
        "kernel inception distance: unbiased MMD² with the cubic polynomial kernel on pool3 features of the "
        "generated and the real reference images (each distinct image once), mean ± std over `kid_subsets` random "
        "subsets of `kid_subset_size`",
        "reference: 0 in expectation for a generated set distributed as the reference set (unbiased)"),
    "recon_pixcorr": MetricInfo(
        "PixCorr (MindEye)", "higher",
        "MindEye's PixCorr: mean Pearson correlation of all RGB values of each generated image and its stimulus, "
        "both resized to 256×256 and then to 425×425 (bilinear)", "reference: none computed; 1 = identical"),
    "recon_ssim": MetricInfo(
        "SSIM (MindEye)", "higher",
        "MindEye's SSIM: skimage's Gaussian SSIM (σ 1.5, population covariance, data range 1) of the rgb2gray images "
        "at 425×425 (via 256×256), mean over the interior, averaged over generated images",
        "reference: none computed; 1 = identical"),
    **{f"recon_{key}": MetricInfo(
        f"{net} 2-way identification", "higher",
        f"MindEye's 2-way identification with {net} features ({features}): for each generated image, the share of "
        "the other distinct stimuli whose features correlate (Pearson) less with its features than its own "
        "stimulus' do; several trials of one stimulus are never each other's distractors",
        "chance: 0.5")
       for key, net, features in (("alexnet2", "AlexNet(2)", "features.4, at 256×256"),
                                  ("alexnet5", "AlexNet(5)", "features.11, at 256×256"),
                                  ("inception", "InceptionV3", "avgpool, at 342×342"),
                                  ("clip", "CLIP ViT-L/14", "final image embedding, at 224×224"))},
    **{f"recon_{key}": MetricInfo(
        f"{net} distance", "lower",
        f"MindEye's {net} distance: mean correlation distance (1 − Pearson r, scipy) between the {features} "
        "features of each generated image and its stimulus",
        "chance: the same distance between each generated image and another trial's stimulus (the next trial in "
        "key order whose image differs)")
       for key, net, features in (("effnet", "EffNet-B", "EfficientNet-B1 avgpool (255×255)"),
                                  ("swav", "SwAV", "SwAV ResNet-50 avgpool (224×224)"))},
}


def better(metric: str) -> str:
    return METRICS[metric].better


def display_name(metric: str, n_way: int | str = "n", top_k: int | str = "k") -> str:
    return METRICS[metric].name.format(n_way=n_way, top_k=top_k)
