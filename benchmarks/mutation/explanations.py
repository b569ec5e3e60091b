"""Why each mutant of the mutation run was not killed: ``equivalent`` or ``gap``, with the reason.

``report.py`` imports ``explain`` and calls ``explain(name, file, status, diff)`` for every mutant
mutmut did not kill (survived, timeout, no tests, ...); ``diff`` is the ``+``/``-`` lines of
``mutmut show NAME``. It returns ``(kind, why)``:

* ``equivalent``: the mutant cannot change what the program computes, so no test can kill it. Claimed
  only with the reason: the same computation (a keyword set to its own default, a slice or dimension
  that names the same elements for the shapes the function takes), or a difference that cannot occur
  for any call the repository makes, given an invariant its callers guarantee (validated config
  ranges, every caller passing the argument, square crops, HxWx3 images), named in the reason. A
  case the code handles on purpose (a ``None`` fallback, ``k % 4`` for any k, a dtype promotion)
  is behaviour even where training never reaches it: breaking it is a gap.
* ``gap``: the mutant changes behaviour and no fast method test notices. The reason names the case
  the tests miss; these are the candidates for new tests. Numerical changes (eps, float rounding,
  dtype promotion for non-fp32 data, device placement that only matters on a GPU, a tie of a
  continuous random draw) are gaps even where no realistic test could observe them, and so are
  timeouts (the tests hang rather than fail); the reason then says so.

Lookup order in ``explain``: ``SPECIFIC`` (mutants examined one by one, keyed by mutmut's name),
then ``RULES`` (families verified on the mutants each rule's comment lists, matched on the mutated
function and the diff), then the status (timeouts, no covering test), then ``DEFAULT``.

mutmut names a mutant ``<module>.x_<function>__mutmut_<n>`` or
``<module>.x\u01c1<Class>\u01c1<method>__mutmut_<n>``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT", "RULES", "SPECIFIC", "explain"]

Explanation = tuple[str, str]

EQ, GAP = "equivalent", "gap"
SEP = "\u01c1"  # mutmut's separator between class and method in mutant names

DEFAULT: Explanation = (GAP, "changes behaviour; no fast method test exercises it (not examined one by one)")

# ---------------------------------------------------------------------------------------------------------------
# reasons shared by several mutants
GPU_ONLY: Explanation = (
    GAP, "Only a device placement changes (the tensor is made on the default device, the CPU, instead of beside its "
         "inputs): on a GPU run it mixes devices and fails or copies; the fast tests run on the CPU and cannot see it.")
SINKHORN_SCALE: Explanation = (
    GAP, "Mathematically a no-op: it rescales q uniformly before a normalisation (rows or columns) that removes any "
         "uniform scale, so it changes only float rounding and which near-zero sums hit the 1e-30 clamps; unobservable"
         " at any sane tolerance, but numbers do change.")
GTSA_BIG: Explanation = (
    GAP, "GTSA's 'big' switch (student map > roi_tokens tokens -> roi_size[0] / num_matches[0]) is never exercised: "
         "the tests use maps of at most 4 tokens and roi_size = num_matches = (1, 1), so which entry is picked is "
         "invisible.")
CONV_PROJECTOR: Explanation = (
    GAP, "The GTSA ConvProjector is only checked by output shape, and every test builds it with in_dim == dim "
         "(embed_dim = projector_dim = 4): its values, its residuals and the first block's in_dim -> dim case are "
         "never compared with a hand computation.")
ROTATION_HEAD: Explanation = (
    GAP, "rotation_head's layer stack (Linear-LN-GELU twice, Linear-LN, Linear) is checked only by its output shape "
         "and first layer's width; the tests use equal widths (4) or replace the head.")
EXPORT_AFFINE: Explanation = (
    GAP, "export_affine's (s, tx, ty) is never pinned by hand: the tests compare the baked embedding and the "
         "crop-agnostic positions with export_affine(cfg) itself, so any change cancels; 'mean' with Beta(2, 5) -> "
         "(2/7, 5/14, 5/14) and 'full' / augment off -> (1, 0, 0) would kill it.")
PATCH_MAP: Explanation = (
    GAP, "patch_map's token layout is checked only with D = 1 (SCRL's by-hand test, where (B, N, 1) and (B, 1, N) "
         "share memory order) or against roi_align, which itself calls patch_map.")
SCRL_REGRESSION_DIM: Explanation = (
    EQ, "_regression only gets 2-D (boxes, D) rows (q[0], z[0] in SCRL.forward; scrl_loss documents (R, D)), where "
        "F.normalize's default dim=1, dim=+1 and sum(+1) all name the last dimension.")
IBOT_2D: Explanation = (
    EQ, "iBOT logits and targets are (M, K), 2-D (documented; PatchSites passes token rows), where dim=+1, dim=-1 and "
        "softmax's implicit dim (1 for 2-D input, with only a warning) are the same dimension.")
CENTER_SHAPE: Explanation = (
    EQ, "update_center's batch sum without keepdim is (K,) instead of (1, K); divided by the (1,) count and added to "
        "the (1, K) centre it broadcasts to the same (1, K) values.")
COUNT_INT: Explanation = (
    EQ, "Without dtype=float32 the count is an int64 tensor; batch_sum / count.clamp_min(1) promotes it to float32 "
        "exactly (counts < 2**24) and count > 0 is unchanged.")
CONV_INIT: Explanation = (
    GAP, "The ConvProjector/ConvPredictor init scale (normal, std 0.02) is not checked by any test: only shapes and "
         "losses with replaced or monkeypatched parts are.")
FLOAT_ARANGE: Explanation = (
    EQ, "torch.arange(n) + 0.5 without dtype=float32 is an int64 range promoted by the Python float to the default "
        "dtype float32 (the project never changes it): the same values.")
PAIR_DIST: Explanation = (
    GAP, "A KoLeo eps change: it shifts the nearest-neighbour distance by ~1e-6 or less, visible only for "
         "near-duplicate features at tolerances tighter than the tests use.")
SP_NO_HOST: Explanation = (
    GAP, "The no-host fallback of SpatialPrediction.view_sampler (called before setup()) is never tested; the training"
         " host always calls setup() first, so only direct API use reaches it.")
SCRL_OWN_SPEC: Explanation = (
    GAP, "SCRL's own-pair ViewSpec photometric probabilities are not asserted: the test checks size, scale and flip_p "
         "only, and its crops set every probability to 0 (blur_p/solarize_p 0 equal ViewSpec's defaults).")
DDP_SPAWN: Explanation = (
    GAP, "Single-process in every test mutmut ran for it: test_method_ddp checks it across two gloo ranks, but only "
         "inside spawned workers, which mutmut's per-function test selection (in-process calls) does not see, so that "
         "test never ran against this mutant.")
TOO_SMALL_BOUNDARY: Explanation = (
    GAP, "The too-small-image boundary (a 2-pixel short side still works; < 2 raises) is not tested in the fast "
         "selection.")
INTERSECTION_TEST: Explanation = (
    GAP, "In the hand-worked intersection test the first box has x0 ~= y0 in both argument orders (0.1 or 0.4, up to 1"
         " ulp), so max(ca[1], cb[0]) still gives 0.4; a box with x0 != y0 would kill it.")
IMAGE_TO_VIEW_TEST: Explanation = (
    GAP, "The hand-worked image_to_view test uses a view whose corners have x0 = 0.3 and y0 = 0.30000000000000004, so "
         "reading v[1] for v[0] changes the result by 1 ulp; a view with x0 != y0 would kill it.")

MASK_RNG_TAIL: Explanation = (
    GAP, "The mask comes out the same, but the extra loop turn draws from the sample's generator, so every later draw "
         "of that sample (the next crops' masks) shifts; no test pins masks draw for draw.")
BLOCK_MIN_AREA: Explanation = (
    GAP, "block_mask's default minimum block area ((min(gh, gw) // 3)^2) is not pinned: the count tests pass whatever "
         "blocks are drawn (the random top-up makes the count exact), and the one-block test passes min_area "
         "explicitly.")
BLOCK_SHAPE: Explanation = (
    GAP, "block_mask's block shapes and placement are not checked: the counts are exact whatever blocks are drawn "
         "(random top-up), and the one-block test only bounds the bounding box of a 9-site block.")
CROSS_CHOICE: Explanation = (
    GAP, "cross_mask's row/column choice and its 'next line still fits' rule are checked only loosely (whole lines, 4 "
         "to 10 sites on a 4x6 grid, a 4- or 6-site first line), which rows-only or columns-only masks also pass.")
TIE_2_53: Explanation = (
    GAP, "A '<' -> '<=' change on a continuous random draw: the two differ only when the draw equals the threshold "
         "exactly (probability about 2**-53 per draw), so no test can reasonably kill it, but it is not impossible.")
COLOUR_UNTESTED: Explanation = (
    GAP, "_colour's contrast, saturation and hue steps are not checked by hand: the only by-hand colour test uses "
         "brightness alone (c = s = h = 0) on a pure red ramp, and the other tests compare shapes or run whole "
         "pipelines.")
QUARTER_SHORTCUT: Explanation = (
    GAP, "apply_transform's exact quarter-turn shortcut (np.rot90 when there is no translation) is taken less often; "
         "for the square views the cv2.warpAffine path gives the same pixels at quarter turns, so the tests cannot "
         "tell, but a non-square image would keep its W x H frame instead of turning.")
WARP_DEFAULT: Explanation = (
    EQ, "cv2.warpAffine's defaults are flags=INTER_LINEAR, borderMode=BORDER_CONSTANT, borderValue=0 and dsize=None "
        "(the source size, W x H here); None or a dropped argument gives the same call (checked against OpenCV).")
EQUI_DECODER: Explanation = (
    GAP, "EquiDecoder's layer widths, activations and token layout are checked only by output shape "
         "(test_equivariance_decoder_shapes); the loss tests only need finite values.")
EQUI_PROJECTION: Explanation = (
    GAP, "features: 'projection' (d_equi defaults to a quarter of the embedding) is never set up in the fast tests; "
         "only features: 'head' is.")
EQUI_DECOUPLED: Explanation = (
    GAP, "The decoupled mode is never built through the plug-in in the fast tests (EquiViewSampler is tested "
         "directly); view_sampler and data_hook are only seen in faithful mode.")
EQUI_PERSISTENT: Explanation = (
    GAP, "The mean/std buffers become persistent: the plug-in's state_dict (and every checkpoint) gains two keys, "
         "which breaks strict loading of older checkpoints; no test checks the plug-in's state-dict keys.")
GTSA_BOXES: Explanation = (
    GAP, "sample_gtsa_boxes is checked only by its overlap rule (area > need), which a stricter rule also satisfies "
         "and GTSA's large default global crops meet by a wide margin; the exact thresholds, the crops' scale and "
         "aspect ranges are not checked.")
POSFIELD_NO_AUGMENT: Explanation = (
    GAP, "The augment: false branch of PosFieldHook (identity affine) is not run by any fast test.")

MASKED_FORWARD: Explanation = (
    GAP, "The student's masked forward is not checked: with iBOT's content masks dropped on the way to the backbone "
         "every fast test still passes, since the masked-forward test only asserts loss/ibot > 0 and the no-mask test "
         "compares the unmasked forward with itself.")
PROVIDER_INPUTS: Explanation = (
    GAP, "Positional inputs through the host (a provider's positions, positional masks and their token) are not "
         "exercised by the tests mutmut ran for this function: none runs the host with the posfield plug-in.")
SAME_SIZE_GROUPS: Explanation = (
    GAP, "Embedding several view groups of one input size in one backbone call (e.g. local and SP crops of the same "
         "size) is never exercised by the tests mutmut ran for embed_views: their groups all differ in size.")
NO_PLAN: Explanation = (
    GAP, "TeacherNetwork.forward without a plan (its default) now fails or loses the plan's channels; no test calls it"
         " without one.")
TOTAL_LOSS: Explanation = (
    GAP, "The returned total's composition (weight times term, summed) is not checked: the tests read the per-term "
         "logs, not the total (the one end-to-end check is a slow test).")
KOLEO_OFF: Explanation = (
    GAP, "KoLeo is never enabled in the fast tests' host configs (koleo_weight 0), so the branch that adds it to the "
         "total does not run.")
WATCH_VALUE: Explanation = (
    GAP, "The collapse-watch entropies (logged, and read by the study summary) are not checked by any test.")
WATCH_KEY: Explanation = (
    GAP, "A logged key the study summary (study/runner.py) reads is renamed; no fast test checks the log keys.")
STEP_CONTEXT_UNUSED: Explanation = (
    GAP, "StepContext.teacher_temp / teacher_head / teacher_patch_head are handed to plug-ins, but none in the "
         "repository reads them, so no test can tell; a third-party plug-in would get None.")
DINO_HEAD_NORM: Explanation = (
    GAP, "DINOHead's l2 normalisation of the bottleneck is not checked by hand: the tests compare the head with itself"
         " (channel slices against the full output) or feed its logits to losses that accept any logits.")
TIMEOUT_LOOP: Explanation = (
    GAP, "Timed out: the stall counter can no longer reach 10, so the loop runs until blocks alone fill the target, if"
         " ever; the tests hang instead of failing (no per-test timeout kills it).")

HOSTSPEC_UNUSED: Explanation = (
    GAP, "A HostSpec field handed to plug-ins is set wrong (None, or its negation), but no plug-in in the repository "
         "reads it, so no test can tell; a third-party plug-in would get the wrong value.")
HEAD_CONFIG: Explanation = (
    GAP, "The DINO/iBOT heads' architecture from the config (hidden and bottleneck widths, layer count, "
         "norm_last_layer) is not asserted: the tests only need heads that give out_dim logits.")
HOST_BUFFERS_PERSISTENT: Explanation = (
    GAP, "The normalisation buffers become persistent: SSLMetaArch's state_dict (and every checkpoint) gains mean/std,"
         " which breaks strict loading of older checkpoints; no test checks the state-dict keys.")
HOST_NORMALISE_CONST: Explanation = (
    GAP, "Wrong normalisation constants: _normalise is checked only against itself (the no-mask test builds its "
         "reference with meta._normalise).")
N_LOCAL_ZERO: Explanation = (
    GAP, "The host with no local crops (n_local = 0), or with exactly one, is never run through forward_losses in the "
         "fast tests.")
SCRL_DRAW_BOX: Explanation = (
    GAP, "SCRL's box drawing is checked only through loose properties (boxes inside both views, matched between views,"
         " at least min_size in the default grid mode); the non-grid mode's sizes and the placement inside a grid cell"
         " are not.")
SCRL_OVERLAP: Explanation = (
    GAP, "SCRL's overlap avoidance is checked only loosely: the test measures the sampled boxes with box_iou_xyxy "
         "itself and asks just 90% of pairs to be under the threshold, which a weaker or wrong IoU check still meets.")

# ---------------------------------------------------------------------------------------------------------------
SPECIFIC: dict[str, Explanation] = {}


def _key(module: str, func: str, n: int) -> str:
    """mutmut's name of mutant ``n`` of ``func`` ("name" or "Class.method") in ``wherevit.train.<module>``."""
    if "." in func:
        cls, meth = func.split(".")
        return f"wherevit.train.{module}.x{SEP}{cls}{SEP}{meth}__mutmut_{n}"
    return f"wherevit.train.{module}.x_{func}__mutmut_{n}"


def _add(module: str, func: str, numbers: tuple[int, ...], explanation: Explanation) -> None:
    for n in numbers:
        SPECIFIC[_key(module, func, n)] = explanation


# --- backbone.py
_add("backbone", "BackboneFeatures.pooled", (1, 2), (
    EQ, "A default-argument change: every caller passes kind (SP its cfg.embedding, the downstream heads and the "
        "spatial evaluation 'mean'); no call in the repository relies on the default."))
_add("backbone", "BackboneFeatures.patch_map", (11,), PATCH_MAP)
_add("backbone", "TokenInputs.cat", (21, 25), (
    GAP, "The neutral mask fill becomes float zeros, so the joined mask is promoted to float; the test compares "
         "values with assert_array_equal (0.0 == False), while forward_tokens' torch.where needs a bool mask."))
_add("backbone", "TokenInputs.cat", (22, 26), GPU_ONLY)
_add("backbone", "patch_grid", (2,), (
    GAP, "Always using grid_size is wrong for a dynamic-size model fed another size (a local crop); the tests call "
         "patch_grid only with the model's native input size, where dynamic_feat_size(hw) == grid_size."))
_add("backbone", "patch_grid", (3,), (
    EQ, "Differs only for a fixed-size model (dynamic_img_size False), which timm builds with strict_img_size: it "
        "runs only at img_size, where dynamic_feat_size(hw) = img_size // patch = grid_size (a padded, non-divisible "
        "img_size cannot run at all: its pos_embed holds grid_size tokens)."))

# --- clipping.py
_add("clipping", "_norm", (3, 5), GPU_ONLY)
_add("clipping", "_norm", (10,), (
    GAP, "Drops the bf16/fp16 -> fp32 promotion of the per-gradient norms: identical for fp32 gradients (all the "
         "tests, and training, whose bf16 is autocast over fp32 parameters), wrong for low-precision parameters."))
_add("clipping", "clip_gradients", (6, 17), GPU_ONLY)
_add("clipping", "clip_gradients", (8,), (
    EQ, "The fallback device is used only when no group has a gradient; torch.zeros(device=None) then makes the same "
        "CPU tensor as device='cpu' (the project never changes torch's default device)."))
_add("clipping", "clip_gradients", (52, 54), (
    EQ, "That branch runs only when norms is empty, i.e. no groups at all, so device is the CPU fallback anyway; and "
        "its total is never used, since its scope has no gradients (the 'if gs' skips it)."))
_add("clipping", "clip_gradients", (61,), (
    GAP, "The clip coefficient keeps the norm's dtype instead of the gradients': identical for fp32 (and fp64) "
         "gradients, a rounding difference for bf16/fp16 parameters, which no test (and no training run) has."))

# --- data/geometry.py
_add("data.geometry", "sample_disentangled_pair", (2,), (
    EQ, "The start value of best_iou only has to exceed any IoU: box_iou is in [0, 1], so 2.0 and 3.0 both lose to "
        "the first rejected pair, and best_iou is never returned."))
_add("data.geometry", "sample_disentangled_pair", (32,), (
    GAP, "On an IoU tie among rejected pairs (possible: boxes are pixel-snapped) the later pair replaces the first; "
         "the replay test's draws contain no tie."))
_add("data.geometry", "box_corners", (3,), (
    EQ, "A Box is a (4,) array (views.Box; every caller passes one), so box[:5] and box[:4] are the same four values."))
_add("data.geometry", "box_corners", (5, 7), (
    EQ, "The array is built from four Python floats, which NumPy stores as float64 without the explicit dtype."))
_add("data.geometry", "intersection", (10,), INTERSECTION_TEST)
_add("data.geometry", "intersection", (33,), (
    GAP, "Tests out[3] > out[0] instead of out[2] > out[0]: in the test's cases that are empty in x the "
         "intersection's y1 is also <= its x0 (0.5 vs 0.7 and 0.5), so the wrong comparison still says None."))
_add("data.geometry", "intersection", (37,), (
    GAP, "The test's 'touching at y = 0.7' box is 1 ulp apart in float (0.8 - 0.2 / 2 = 0.7000000000000001 > 0.4 + "
         "0.6 / 2 = 0.7), so the > vs >= boundary is never hit."))
_add("data.geometry", "image_to_view", (7, 10, 14, 17), IMAGE_TO_VIEW_TEST)
_add("data.geometry", "image_to_view", (39, 41), (
    EQ, "v comes from box_corners as float64, so x0..y1 are float64 scalars (any real region operand promotes to "
        "float64) and np.array infers float64 without the explicit dtype."))

# --- data/masking.py
_add("data.masking", "random_mask", (17,), (
    EQ, "Caps the target at gw * gw instead of gh * gw, which differ only for a non-square grid; every mask in the "
        "repository is drawn on the square (g, g) grid of the square global crops (ContentMasker, PosFieldHook)."))

# --- losses.py
_add("losses", "sinkhorn_knopp", (14,), (
    GAP, "+inf as an empty input's shift: harmless alone (q is empty), but under DDP an empty rank (no masked tokens)"
         " wins the MAX all-reduce and every rank's q becomes 0/0 = NaN; the DDP test's ranks hold 3 and 5 rows."))
_add("losses", "sinkhorn_knopp", (18,), (
    GAP, "A SUM all-reduce of the shift instead of MAX: only a different uniform scale unless the ranks' maxima are "
         "large (exp underflows to 0 -> NaN) or a rank is empty (-inf); the DDP test's small logits on two non-empty "
         "ranks cannot see it."))
_add("losses", "sinkhorn_knopp", (23, 31, 34, 46), SINKHORN_SCALE)
_add("losses", "sinkhorn_knopp", (56, 58), (
    EQ, "Without keepdim the column sums are (B,) instead of (1, B); dividing the (K, B) matrix broadcasts them along"
        " the last dimension exactly as before."))
_add("losses", "KoLeoLoss.forward", (3, 7), (
    EQ, "F.normalize's default p is 2, and p=None computes the same 2-norm (Tensor.norm(None) is the 2-norm)."))
_add("losses", "KoLeoLoss.forward", (8, 11), (
    EQ, "KoLeo's input is 2-D (B, D) (x @ x.t() and fill_diagonal_ need it), where F.normalize's default dim=1 and "
        "dim=+1 are dim=-1."))
_add("losses", "KoLeoLoss.forward", (9,), (
    GAP, "F.normalize's eps becomes its default 1e-12 instead of self.eps (1e-8): it matters only for feature norms "
         "below 1e-8, which no test feeds."))
_add("losses", "KoLeoLoss.forward", (16,), (
    EQ, "The diagonal only has to lose the argmax: dot products of l2-normalised (or zero) rows are in [-1, 1], so -2"
        " and -3 both lose to every other entry."))
_add("losses", "KoLeoLoss.forward", (27,), (
    EQ, "F.pairwise_distance's default p is 2.0: the same call."))
_add("losses", "KoLeoLoss.forward", (28, 32), PAIR_DIST)
_add("losses", "IBOTPatchLoss.teacher_probs", (11, 13, 16), IBOT_2D)
_add("losses", "IBOTPatchLoss.forward", (3, 5, 7, 17), IBOT_2D)
_add("losses", "IBOTPatchLoss.forward", (23,), (
    EQ, "n_crops is the number of global crops of the batch, V * B with n_global >= 2 (CropConfig.validate), so "
        "max(n_crops, 1) == max(n_crops, 2)."))
_add("losses", "IBOTPatchLoss.update_center", (5, 7), CENTER_SHAPE)
_add("losses", "IBOTPatchLoss.update_center", (10, 13), COUNT_INT)
_add("losses", "IBOTPatchLoss.update_center", (11, 14), GPU_ONLY)
_add("losses", "IBOTPatchLoss.update_center", (24,), (
    GAP, "Divides the batch sum by max(count, 2): differs only when exactly one masked token exists over all ranks "
         "(count 0 keeps the centre either way); the tests have more tokens or none."))

# --- meta_arch.py
_add("meta_arch", "PatchSites.__init__", (7,), (
    GAP, "Never reports a mask field missing from the global group (a data hook that did not add it); the error path "
         "is not tested, and the field would then be silently left out of the union."))
_add("meta_arch", "PatchSites.__init__", (18,), (
    EQ, "teacher_probs is a placeholder: forward_losses assigns it right after building PatchSites, before any "
        "loss(), and nothing compares it with None."))

# --- plugins/equivariance.py
_add("plugins.equivariance", "EquiViewSampler.__call__", (2,), (
    EQ, "Images are HxWx3 (the image sources return RGB), so min(H, W, 3) < 2 exactly when min(H, W) < 2."))
_add("plugins.equivariance", "EquiViewSampler.__call__", (3, 4), TOO_SMALL_BOUNDARY)

# --- plugins/gtsa.py
_add("plugins.gtsa", "GTSAViewSampler.__init__", (13,), (
    EQ, "ratio=(3/4, 4/3) is ViewSpec's default, and make_view is given the boxes, so the ratio is not even read."))
_add("plugins.gtsa", "GTSAViewSampler.__call__", (44,), (
    EQ, "rng.integers(4) is rng.integers(0, 4): the same range and the same draw from the generator."))
_add("plugins.gtsa", "GTSAViewSampler.__call__", (47,), (
    GAP, "Rotation labels 0..4 instead of 0..3 (k = 4 is an unrotated view labelled as a fifth class that the 4-way "
         "head cannot predict); no test asserts every label is below 4 over many draws."))
_add("plugins.gtsa", "GTSAViewSampler.__call__", (65, 67), (
    GAP, "Without np.int64 the labels take NumPy's default int: int64 with NumPy >= 2 and on 64-bit Linux/macOS (so "
         "unkillable here), int32 with NumPy 1.x on Windows, which cross_entropy refuses; pyproject allows "
         "numpy>=1.24."))
_add("plugins.gtsa", "ConvProjector.forward", (4, 5, 6, 7, 8, 9), CONV_PROJECTOR)
_add("plugins.gtsa", "ConvProjector.__init__", (1,), (
    GAP, "GTSA builds its projector with the default n_blocks, so this adds a third block; the tests check only "
         "shapes, which a third dim -> dim block keeps."))
_add("plugins.gtsa", "ConvProjector.__init__", (3, 8, 9, 10, 11), CONV_PROJECTOR)
_add("plugins.gtsa", "_init_conv", (4, 5), CONV_INIT)
_add("plugins.gtsa", "rotation_head", (1, 2), (
    EQ, "A default-argument change: GTSA (and every test) passes hidden and bottleneck explicitly."))
_add("plugins.gtsa", "rotation_head", (13, 14, 15, 16, 17, 19), ROTATION_HEAD)
_add("plugins.gtsa", "rot90_per_sample", (35,), (
    EQ, "x is (B, C, H, W) (documented, and torch.where with the (B, 1, 1, 1) k needs 4-D), so dims=(+2, -1) is "
        "dims=(-2, -1)."))
_add("plugins.gtsa", "crop_rois", (10, 12), GPU_ONLY)
_add("plugins.gtsa", "crop_loss", (7, 12), (
    EQ, "F.normalize's default dim is 1, the channel dimension named here."))
_add("plugins.gtsa", "crop_loss", (8,), (
    GAP, "Normalises the student RoIs over rows instead of channels; the by-hand test's student cells are one-hot "
         "((1, 0) and (0, 2)), which normalise the same over any axis, and the other tests monkeypatch crop_loss."))
_add("plugins.gtsa", "nearest_matches", (38,), (
    EQ, "best is 2-D (B, N) (a max over dim 2 of the (B, N, M) similarities), where topk's default dim=-1 is dim=1."))
_add("plugins.gtsa", "GTSA._views", (7,), (
    EQ, "gtsa_global is always in student_views (n_local == 0 drops only gtsa_local, the last group), so break and "
        "continue both end the loop exactly when a group is skipped."))
_add("plugins.gtsa", "GTSA.__init__", (2,), (
    EQ, "Plugin.__init__ only stores embed_dim as self.embed_dim, which GTSA never reads (it builds its heads from "
        "the argument); only the Equivariance plug-in reads self.embed_dim."))
_add("plugins.gtsa", "GTSA.__init__", (28, 29, 30), (
    GAP, "Shifts or drops rotation_head's widths; the tests use embed_dim == rot_hidden == rot_bottleneck == 4, so "
         "the head keeps its shapes (the default bottleneck 128 is also only seen through shapes)."))
_add("plugins.gtsa", "GTSA.forward", (31, 32, 33, 34, 35, 36, 37, 59, 60, 61, 77, 78, 79), GTSA_BIG)
_add("plugins.gtsa", "GTSA.forward", (115,), (
    GAP, "forward(ctx=None) now fails (ctx.progress on None); the signature allows it, but no test calls GTSA without"
         " a StepContext (the host always passes one)."))
_add("plugins.gtsa", "GTSA.forward", (117,), (
    EQ, "progress is only compared with pc_warmup, which GTSAConfig.validate keeps in [0, 1]: 1.0 and 2.0 are both >="
        " pc_warmup."))
_add("plugins.gtsa", "GTSA.forward", (124,), (
    GAP, "Subtracts the rotation term; the one test with rot_weight > 0 drives the rotation loss to ~0 (one-hot "
         "logits of 50), so its sign is invisible at the test's tolerance."))

# --- plugins/posfield.py
_add("plugins.posfield", "export_affine", tuple(range(1, 21)), EXPORT_AFFINE)
_add("plugins.posfield", "PositionalField.positions", (50,), (
    EQ, "repeat(V, 2) tiles the (B, 3) affine to (V*B, 6) = [s, tx, ty, s, tx, ty]; its only reader, field_grid, uses"
        " columns 0..2, which are unchanged."))
_add("plugins.posfield", "PositionalField.forward", (2,), (
    GAP, "'or' -> 'and': forward(ctx=None) fails, and with a ctx whose ibot_loss_fn is None the plug-in asks for the "
         "iBOT loss; neither case is tested (training always passes ctx, and pos_mask_share > 0 requires iBOT)."))
_add("plugins.posfield", "PositionalField.forward", (7,), (
    GAP, "The 'field only' loss becomes pos_mask_token.sum() instead of 0; the test checks it only at initialisation,"
         " where the token is zeros, not its gradient (ones instead of zeros) or a trained token."))
_add("plugins.posfield", "patch_centres", (18, 21, 27, 30), GPU_ONLY)
_add("plugins.posfield", "patch_centres", (19, 22, 28, 31), FLOAT_ARANGE)
_add("plugins.posfield", "patch_centres", (52,), (
    EQ, "boxes are (M, 4), so boxes[:, 3:5] is boxes[:, 3:4]."))
_add("plugins.posfield", "field_grid", (26,), (
    EQ, "affine is (M, 3) at every caller (positions, agnostic_positions, export), so affine[:, 1:4] is affine[:, "
        "1:3]."))
_add("plugins.posfield", "sample_field", (8, 13), (
    EQ, "align_corners=None means False in F.grid_sample (torch's default since 1.3; it only adds a UserWarning)."))
_add("plugins.posfield", "sample_field", (11,), (
    EQ, "mode='bilinear' is F.grid_sample's default."))
_add("plugins.posfield", "sample_field", (12,), (
    GAP, "Zero padding instead of border: differs for sample points beyond the outermost field-cell centres (a crop "
         "at the image edge, or an affine reaching outside); the tests' points stay inside."))
_add("plugins.posfield", "sample_field", (28,), (
    GAP, "The grid keeps its own dtype (float32) instead of the field's: identical for the fp32 field of training, a "
         "dtype error for a half-precision or fp64 field, which no test uses."))
_add("plugins.posfield", "PositionalField.agnostic_positions", (2, 5, 7, 24, 26), GPU_ONLY)

# --- plugins/roi.py
_add("plugins.roi", "rotate_xyxy", (10,), (
    GAP, "k % 5 equals k % 4 for the quarter turns 0..3 that GTSA draws and the tests use; it differs for k >= 4 or "
         "negative k, which the function reduces mod 4 and no test passes."))

# --- plugins/scrl.py
_add("plugins.scrl", "GlobalBatchNorm1d.forward", (36,), (
    GAP, "Divides by the BN weight instead of multiplying: the by-hand tests keep the initial weight 1, and the one "
         "test with other weights (test_method_ddp) compares two runs of the same mutated code, so it cancels."))
_add("plugins.scrl", "SCRLHead.__init__", (11,), (
    EQ, "nn.Linear(bias=None) tests 'if bias', so None is bias=False."))
_add("plugins.scrl", "SCRLHead.__init__", (14, 15), (
    GAP, "Gives fc2 a bias (BYOL's head has none); the tests check loss properties that hold with a bias too, and "
         "none asserts fc2.bias is None."))
_add("plugins.scrl", "_regression", (10, 11, 16, 17, 19), SCRL_REGRESSION_DIM)
_add("plugins.scrl", "SCRLBoxHook.__call__", (26, 34), (
    EQ, "ndarray.astype(None) converts to float64, the dtype named here."))
_add("plugins.scrl", "_world_size", (1,), DDP_SPAWN)
_add("plugins.scrl", "global_count", (2,), DDP_SPAWN)
_add("plugins.scrl", "SCRL.__init__", (2,), (
    EQ, "Plugin.__init__ only stores embed_dim as self.embed_dim, which SCRL never reads (it sizes its heads from the"
        " argument); only the Equivariance plug-in reads self.embed_dim."))
_add("plugins.scrl", "SCRL.__init__", (15,), (
    GAP, "A missing predictor would fail in forward, but every test that runs SCRL.forward first replaces the "
         "predictor with nn.Identity(); none checks it is an SCRLHead."))
_add("plugins.scrl", "SCRL.setup", (5, 6, 9, 10), (
    GAP, "Changes only the wording of the refusal message ('why' stays a non-empty string, so the logic is intact); "
         "test_plugin_train.py (outside the fast selection) matches that wording, so it is tested behaviour, not "
         "method behaviour."))
_add("plugins.scrl", "SCRL.setup", (7,), (
    GAP, "Ignores host_views_altered (another plug-in transforming the host's global views, e.g. EC's faithful mode):"
         " views 'auto' would keep the wrong boxes and 'host' would not be refused; only "
         "test_plugin_train.py::test_bad_plugin_settings_name_the_key (outside the fast selection) covers it."))
_add("plugins.scrl", "SCRL.setup", (14, 15), (
    GAP, "views: 'host' is no longer refused when the host's boxes do not describe its views; only "
         "test_plugin_train.py::test_bad_plugin_settings_name_the_key (outside the fast selection) asserts the "
         "refusal."))
_add("plugins.scrl", "SCRL.view_sampler", (16, 17, 18, 19), SCRL_OWN_SPEC)
_add("plugins.scrl", "SCRL.data_hook", (1,), (
    GAP, "The hook gets cfg None and would fail on its first sample; the test checks only its group and size and "
         "never runs it."))
_add("plugins.scrl", "SCRL._roi", (3,), (
    EQ, "roi_align reads only the rows named by the batch index (v * B + b < 2B), so slicing 3B rows instead of 2B "
        "only keeps rows that are never read."))
_add("plugins.scrl", "SCRL._roi", (13, 15), GPU_ONLY)
_add("plugins.scrl", "SCRL.forward", (81,), (
    GAP, "Divides by the world size instead of multiplying: the same for one process, which is every test that runs "
         "SCRL.forward; the DDP test checks the pieces (global_count, _world_size), not this combination."))
_add("plugins.scrl", "SCRL.forward", (83,), (
    GAP, "Averages over max(n, 2) boxes: differs only when exactly one box is kept over all ranks; the tests keep "
         "several (or none)."))

# --- plugins/sp.py
_add("plugins.sp", "SPViewSampler.__init__", (2,), (
    GAP, "The default grayscale_p (used by view_sampler's no-host fallback) becomes 1.2 (always grey); the test "
         "checks color_jitter_p's default but not grayscale_p's."))
_add("plugins.sp", "SPViewSampler.__init__", (13,), (
    EQ, "spec.ratio is never read: __call__ gives make_view the boxes of sample_disentangled_pair (which reads "
        "cfg.ratio), and make_view reads spec.ratio only when no box is given."))
_add("plugins.sp", "SpatialPrediction.__init__", (2,), (
    EQ, "Plugin.__init__ only stores embed_dim as self.embed_dim, which SP never reads (its head is sized from the "
        "argument); only the Equivariance plug-in reads self.embed_dim."))
_add("plugins.sp", "SpatialPrediction.view_sampler", (3, 6), SP_NO_HOST)
_add("plugins.sp", "SpatialPrediction.predict", (7,), (
    EQ, "z_a and z_b are 2-D (pairs * B, D) (reshaped in forward), where dim=+1 is the last dimension."))


# --- data/geometry.py (sp_inverse: exported, used only by the tests)
_add("data.geometry", "sp_inverse", (4,), (
    GAP, "A torch input is computed with NumPy (np.exp / np.stack on tensors) and comes back as an ndarray; "
         "sp_inverse is tested on NumPy input only."))
_add("data.geometry", "sp_inverse", (17, 33), (
    GAP, "Stacks along axis 0 instead of -1: the same for one (4,) target, which is all the tests pass; a batch (N, "
         "4) would come back as (4, N)."))

# --- data/masking.py
_add("data.masking", "block_mask", (19, 23, 24, 29, 30), BLOCK_MIN_AREA)
_add("data.masking", "block_mask", (20,), (
    GAP, "An explicit min_area is ignored for the default; the one test passing min_area uses 9 on a 9x9 grid, where "
         "the default (9 // 3)^2 is also 9."))
_add("data.masking", "block_mask", (37,), (
    GAP, "One attempt fewer before the random top-up (9 stalls instead of 10): a different mix of blocks and random "
         "sites, which the count tests accept."))
_add("data.masking", "block_mask", (39,), MASK_RNG_TAIL)
_add("data.masking", "block_mask", (105,), (
    GAP, "The stall counter restarts at 1 after a placed block: one attempt fewer before the random top-up, a "
         "different mix of blocks and random sites, which the count tests accept."))
_add("data.masking", "block_mask", (38,), (
    GAP, "Timed out: with 'or' the loop keeps drawing while the target is not reached even after 10 stalls, and may "
         "never end when no block fits the remaining budget; the tests hang instead of failing (no per-test timeout "
         "kills it)."))
_add("data.masking", "block_mask", (100, 103), (
    GAP, "Timed out: blocks are never written (None or False), so every draw 'fits' again, the stall counter keeps "
         "resetting and the loop runs until ten misses in a row happen by chance, if ever; the tests hang instead of "
         "failing."))
_add("data.masking", "block_mask", (76, 85), (
    EQ, "rng.integers(n) is rng.integers(0, n): the same range and the same draw from the generator."))
_add("data.masking", "block_mask", (64, 66, 68, 69, 71, 81, 89, 90, 92, 95, 97, 98, 99), BLOCK_SHAPE)
_add("data.masking", "block_mask", (67, 70), (
    EQ, "h (w) = 0 needs area * ar (area / ar) < 0.25, impossible with min_area >= 1 and the aspect range (0.3, "
        "1/0.3) that every caller uses (make_mask passes no aspect): both round to at least 1."))
_add("data.masking", "cross_mask", (12,), (
    GAP, "Stops as soon as the rows or the columns run out instead of going on with the other kind; the tests' "
         "targets are reached after at most a few lines."))
_add("data.masking", "cross_mask", (13, 14, 15, 16, 17, 19, 22, 25, 26, 32), CROSS_CHOICE)
_add("data.masking", "cross_mask", (18,), TIE_2_53)
_add("data.masking", "cross_mask", (38,), MASK_RNG_TAIL)
_add("data.masking", "stratified_ratios", (4, 24), (
    GAP, "The position=None path (i.i.d. quantiles for a data set used outside the step sampler) now fails; no fast "
         "test calls stratified_ratios or MaskPlan.ratios without a position."))
_add("data.masking", "stratified_ratios", (19,), (
    EQ, "ks is only indexed by c < n_crops, so a slice two crops long has the same first n_crops entries."))
_add("data.masking", "stratified_ratios", (36,), TIE_2_53)
_add("data.masking", "ContentMasker.__init__", (1, 2), (
    EQ, "A default-argument change: the one caller (SSLMetaArch.data_hooks) always passes ibot.mask_pattern."))
_add("data.masking", "ContentMasker.__init__", (3, 4, 11, 12, 13, 14), (
    EQ, "make_mask(..., n_target=0) returns the zero mask before reading pattern, rng or grid, and the result is "
        "discarded. (So this 'fail early' check never fails: unknown patterns surface only at the first sample.)"))
_add("data.masking", "ContentMasker.__init__", (15,), (
    GAP, "With n_target=1 the early check really validates the pattern (the original, with 0, never does): an unknown"
         " pattern now fails at construction; no test constructs a ContentMasker with an unknown pattern."))
_add("data.masking", "ContentMasker.__call__", (3,), (
    EQ, "grid[1] * grid[1] equals grid[0] * grid[1] on the square (g, g) grid the one caller passes."))

# --- losses.py
_add("losses", "IBOTPatchLoss.update_center", (35,), (
    GAP, "Skips the update when exactly one masked token exists over all ranks; the tests have more tokens or none."))

# --- plugins/base.py
_add("plugins.base", "Plugin.add_ema_target", (13,), (
    GAP, "Misuse path only: when online is not a submodule, next() raises StopIteration instead of the PluginError "
         "that says what to do; no test registers an EMA target for an unregistered module."))

# --- plugins/equivariance.py
_add("plugins.equivariance", "sample_transform", (4, 6), (
    EQ, "np.zeros' default dtype is float64, the dtype named here."))
_add("plugins.equivariance", "sample_transform", (16, 26, 29, 30, 45, 55), (
    GAP, "Changes a parameter's range or shape (an upper bound of 1.0, a one-sided or degenerate range, one shared "
         "draw for tx and ty); the range test checks only bounds, and transform: 'all' draws are not checked for each"
         " part's spread."))
_add("plugins.equivariance", "sample_transform", (18, 19, 32, 33), (
    GAP, "Drops the translation or colour part of g_theta; the test of the kinds checks only that excluded parts are "
         "zero, not that included ones are drawn."))
_add("plugins.equivariance", "_colour", (3, 15, 17, 38), (
    GAP, "Computes in float64 instead of float32: rounding can differ at the rint / uint8 steps for a few pixels; the"
         " one by-hand colour test is too simple to show it."))
_add("plugins.equivariance", "_colour", (9, 11, 18, 19, 20, 23, 24, 31, 34, 35, 36, 44, 45, 46, 47, 48, 49, 50, 51),
     COLOUR_UNTESTED)
_add("plugins.equivariance", "_colour", (53,), (
    EQ, "cv2 returns uint8; as float64 instead of float32 these are the same integers, and the function ends with "
        "rint, clip and uint8."))
_add("plugins.equivariance", "_colour", (61, 62, 68), (
    EQ, "out is already in [0, 255] here (the saturation step clips it, and the hue branch returns uint8 values), so "
        "the final clip's bounds never act."))
_add("plugins.equivariance", "apply_transform", (10, 14, 15, 16, 18), QUARTER_SHORTCUT)
_add("plugins.equivariance", "apply_transform", (20,), TIE_2_53)
_add("plugins.equivariance", "apply_transform", (21,), (
    GAP, "Without translation every angle snaps to the nearest quarter turn (30 deg becomes no rotation); no test "
         "applies a non-quarter rotation without translation (transform: rotation) and checks the pixels."))
_add("plugins.equivariance", "apply_transform", (26,), (
    GAP, "Negative quarter turns are reduced mod 5 (-90 deg -> 4 -> no turn, -180 deg -> 3); the tests use positive "
         "quarter turns only."))
_add("plugins.equivariance", "apply_transform", (53,), (
    GAP, "The y translation is divided by H instead of multiplied (about no y shift); no test checks translated "
         "pixels."))
_add("plugins.equivariance", "apply_transform", (57, 58, 59, 60, 64, 65, 66), WARP_DEFAULT)
_add("plugins.equivariance", "apply_transform", (68, 69), (
    GAP, "The colour step is skipped when only saturation or hue (68) or only contrast (69) is non-zero, i.e. with "
         "brightness and contrast (or brightness, saturation and hue) configured to 0; no test does."))
_add("plugins.equivariance", "EquiFaithfulHook.__call__", (38, 39, 40, 41), (
    GAP, "Overwrites a crop_agnostic flag another plug-in's hook set before instead of adding to it; no in-repository"
         " hook sets one first, and no test runs two such hooks."))
_add("plugins.equivariance", "EquiFaithfulHook.__call__", (45, 47), (
    EQ, "The flags become 0.0/1.0 floats instead of bools; the only reader (PositionalField.positions) converts them "
        "with .bool()."))
_add("plugins.equivariance", "EquiFaithfulHook.__call__", (77,), (
    EQ, "Nothing reads sample['equi']['params'] (the forward uses targets and images only), so its dtype is unused."))
_add("plugins.equivariance", "EquiDecoder.__init__", (28, 35, 36, 63), EQUI_DECODER)
_add("plugins.equivariance", "EquiDecoder.forward", (17,), EQUI_DECODER)
_add("plugins.equivariance", "Equivariance.__init__", (12,), (
    EQ, "setup() always replaces self.decoders before anything reads it, and None and an empty ModuleList hold the "
        "same (no) parameters until then."))
_add("plugins.equivariance", "Equivariance.__init__", (13,), (
    EQ, "setup() assigns d_equi in both feature branches before anything reads it."))
_add("plugins.equivariance", "Equivariance.__init__", (23, 47), (
    EQ, "register_buffer tests 'if persistent', so persistent=None is persistent=False."))
_add("plugins.equivariance", "Equivariance.__init__", (26, 44, 50, 68), EQUI_PERSISTENT)
_add("plugins.equivariance", "Equivariance.__init__", (34, 35, 58, 59), (
    EQ, "_pixels only gets (B, K, 3, S, S) images, where a (1, 3, 1, 1) mean/std right-aligns with the channel "
        "dimension exactly as (1, 1, 3, 1, 1) does; the buffers are not persistent, so no state dict sees the shape."))
_add("plugins.equivariance", "Equivariance.setup", (1,), (
    EQ, "self.host is only stored: Equivariance reads the host through setup's argument and never through self.host."))
_add("plugins.equivariance", "Equivariance.setup", (4, 5, 6), (
    GAP, "The decoupled crop_size / patch-size check is inverted or never fires; only test_plugin_train.py (outside "
         "the fast selection) asserts the refusal, and the fast tests use crop sizes divisible by the patch."))
_add("plugins.equivariance", "Equivariance.setup", (17,), (
    GAP, "The d_equi floor becomes 2: differs only for patch heads narrower than 8 channels, which no test builds."))
_add("plugins.equivariance", "Equivariance.setup", (20,), (
    GAP, "d_equi equal to the whole patch head is no longer refused (the error path is untested)."))
_add("plugins.equivariance", "Equivariance.setup", (23, 24, 25, 26, 27, 28, 29, 30), EQUI_PROJECTION)
_add("plugins.equivariance", "Equivariance.view_sampler", (1, 3, 5, 6), EQUI_DECOUPLED)
_add("plugins.equivariance", "Equivariance.data_hook", (2,), EQUI_DECOUPLED)
_add("plugins.equivariance", "Equivariance.equivariant_features", (3,), (
    GAP, "Only the error path changes: without ctx or a patch head it fails with AttributeError/TypeError instead of "
         "the PluginError; the host always passes a patch head, and no test checks the error."))
_add("plugins.equivariance", "Equivariance.equivariant_features", (10, 12), (
    EQ, "slice(None, d) and slice(d) are slice(0, d)."))
_add("plugins.equivariance", "Equivariance.forward", (20, 64), (
    GAP, "Differs only in faithful mode with more than two global crops (n_global > 2), where an extra view enters; "
         "every test uses two."))
_add("plugins.equivariance", "Equivariance.forward", (66, 67, 68), (
    GAP, "The logged copy_baseline metric (not part of the loss) is computed differently; no test checks its value."))
_add("plugins.equivariance", "Equivariance.forward", (69, 70), (
    EQ, "Only the name of a logged metric changes; nothing in the repository reads that key."))

# --- plugins/gtsa.py (sample_gtsa_boxes)
_add("plugins.gtsa", "sample_gtsa_boxes", (6, 7), (
    GAP, "The too-small-image boundary (a 2-pixel short side still works; < 2 raises) is not tested: the test uses a "
         "1-pixel side."))
_add("plugins.gtsa", "sample_gtsa_boxes", (13, 14, 19, 20, 21, 23, 35, 36, 38, 39, 45, 46), GTSA_BOXES)

# --- plugins/posfield.py (hook, init)
_add("plugins.posfield", "PosFieldHook.__call__", (15, 16, 17, 18), POSFIELD_NO_AUGMENT)
_add("plugins.posfield", "PosFieldHook.__call__", (25, 27), (
    EQ, "The affine is stored as float64 instead of float32; its only reader (PositionalField.positions) applies "
        ".float(), which rounds to the same float32 values."))
_add("plugins.posfield", "PosFieldHook.__call__", (40, 42), (
    EQ, "pos_mask_share > 0 requires iBOT (check_run_config), whose ContentMasker always writes masks first; with a "
        "share of 0 the loop never masks and only draws from the hook's own generator, which nothing reads after."))
_add("plugins.posfield", "PosFieldHook.__call__", (46,), (
    EQ, "grid[1] * grid[1] equals grid[0] * grid[1] on the square (g, g) grid data_hook passes."))
_add("plugins.posfield", "PosFieldHook.__call__", (55, 69), TIE_2_53)
_add("plugins.posfield", "PosFieldHook.__call__", (65,), (
    EQ, "Assigning None to a row of a bool array stores False, as before."))
_add("plugins.posfield", "PosFieldHook.__call__", (84,), (
    GAP, "At least 2 positional sites instead of 1: differs only when ratio * sites rounds below 2 (tiny grids); the "
         "tests' grids are larger."))
_add("plugins.posfield", "PositionalField.__init__", (2,), (
    EQ, "Plugin.__init__ only stores embed_dim as self.embed_dim, which PositionalField never reads (it sizes its "
        "token from the argument); only the Equivariance plug-in reads self.embed_dim."))
_add("plugins.posfield", "PositionalField.__init__", (6,), (
    GAP, "pos_mask_token becomes an empty parameter; its (embed_dim,) shape is not asserted, and the tests mutmut ran"
         " never embed a positionally masked view with the plug-in's token (sum() * 0.0 of an empty token is 0 too)."))
_add("plugins.posfield", "PositionalField.data_hook", (10,), (
    GAP, "The hook gets its default mask_ratio (0.1, 0.5) instead of the host's ibot.mask_ratio; the tests' iBOT "
         "ratio is that same default."))

# --- backbone.py (token path)
_add("backbone", "patch_pos_embed", (10, 14), (
    EQ, "Without old_size timm infers a square grid from the token count, which is patch_embed.grid_size for the "
        "square img_size (an int in ModelConfig) of every model here."))
_add("backbone", "forward_tokens", (19,), (
    GAP, "A fixed-size model's features get grid None; the token-path tests compare cls and patch tokens with "
         "forward_features but never read .grid on the fixed-size branch."))
_add("backbone", "forward_tokens", (34, 77), (
    GAP, "The mask token keeps its own dtype instead of the tokens': the same on the CPU in fp32, but under bf16 "
         "autocast the masked tokens would promote the token tensor to fp32; no test runs under autocast."))
_add("backbone", "forward_tokens", (50, 51, 52, 53, 54, 55, 56, 57), (
    GAP, "The branch for models without a positional embedding (pos_embed None) is only tested for its refusal of "
         "overrides; no test embeds such a model's tokens."))
_add("backbone", "forward_tokens", (101,), (
    GAP, "Forces activation checkpointing on every forward: the same values in the tests, but extra compute, and with"
         " reentrant checkpointing a fully frozen input (optim.freeze_blocks > 0) would cut the blocks' gradients."))
_add("backbone", "forward_tokens", (102, 103, 104, 105, 106, 107), (
    GAP, "The grad-checkpointing branch (timm's model.grad_checkpointing) is never switched on in the repository or "
         "its tests, so breaking or skipping it goes unseen."))

# --- data/masking.py (_top_up, make_mask)
_add("data.masking", "_top_up", (4,), (
    EQ, "With short == 0 the branch picks nothing: rng.choice(size=0) returns no index and draws nothing from the "
        "generator (checked), so mask and generator are unchanged."))
_add("data.masking", "_top_up", (9, 11, 15), (
    EQ, "NumPy reads reshape(None) as the same shape and any negative size (-2) as the unknown dimension, so the view"
        " is the same (np.flatnonzero flattens anyway)."))
_add("data.masking", "_top_up", (18,), (
    EQ, "Generator.choice tests 'if replace', so replace=None samples without replacement, the same draw."))
_add("data.masking", "block_mask", (107, 108), TIMEOUT_LOOP)
_add("data.masking", "make_mask", (1,), (
    GAP, "A target of 0 now reaches the pattern: cross_mask then takes a whole line (it always takes the first), and "
         "an unknown pattern raises; no test asks make_mask for 0 sites with a non-block pattern."))
_add("data.masking", "make_mask", (4, 6), (
    EQ, "The zero mask becomes float zeros; every caller writes it into a bool array (ContentMasker, PosFieldHook) or"
        " discards it, where 0.0 is False."))

# --- heads.py
_add("heads", "DINOHead.forward", (3, 10, 11), DINO_HEAD_NORM)
_add("heads", "DINOHead.forward", (4, 7, 20), (
    EQ, "F.normalize's defaults are p=2 and dim=1, and p=None computes the same 2-norm."))
_add("heads", "DINOHead.forward", (6, 9), (
    GAP, "Normalises over dim 1: the same for the 2-D inputs of the DINO and iBOT losses, but Equivariance passes (B,"
         " N, D) patch tokens, where dim 1 is the token axis; no test checks those features' values."))
_add("heads", "DINOHead.forward", (24,), (
    GAP, "Divides by the learned prototype scale instead of multiplying: the same at its initial value 1, which every"
         " test with norm_last_layer=False uses."))

# --- losses.py (DINOLoss, IBOTPatchLoss defaults)
_add("losses", "DINOLoss.teacher_probs", (9,), (
    GAP, "The configured sinkhorn_iterations reaches Sinkhorn only when it is not 3 (both defaults); no fast test "
         "sets another value on DINOLoss."))
_add("losses", "DINOLoss.teacher_probs", (11, 13, 16), (
    EQ, "DINO's teacher logits are (N, K), 2-D, where dim=+1, dim=-1 and softmax's implicit dim (1 for 2-D input, "
        "with only a warning) are the same dimension."))
_add("losses", "DINOLoss.forward", (3, 5, 7, 24), (
    EQ, "DINO's student logits and targets are (N, K) chunks, 2-D, where dim=+1, dim=-1 and the implicit dim (1 for "
        "2-D input) are the same dimension."))
_add("losses", "DINOLoss.update_center", (5, 7), CENTER_SHAPE)
_add("losses", "DINOLoss.update_center", (10, 13), COUNT_INT)
_add("losses", "DINOLoss.update_center", (11, 14), GPU_ONLY)
_add("losses", "IBOTPatchLoss.__init__", (2, 5), (
    EQ, "A default-argument change: the one caller (SSLMetaArch) passes center_momentum and sinkhorn_iterations."))

# --- meta_arch.py
_add("meta_arch", "embed_views", (7, 8), (
    EQ, "Views are (N, 3, H, W), so shape[2:] is shape[-2:], and shape[-3:] = (3, H, W) groups the same views (every "
        "view has 3 channels)."))
_add("meta_arch", "embed_views", (12, 14), (
    EQ, "torch.cat of a single view is a copy with the same values."))
_add("meta_arch", "embed_views", (11, 13, 15, 22, 23, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41,
                                  42, 43, 44, 58, 62), SAME_SIZE_GROUPS)
_add("meta_arch", "embed_views", (19, 24, 48), MASKED_FORWARD)
_add("meta_arch", "embed_views", (21,), (
    EQ, "forward_tokens starts with 'inputs = inputs or TokenInputs()', so an empty string is no inputs, as None."))
_add("meta_arch", "embed_views", (50, 55), PROVIDER_INPUTS)
_add("meta_arch", "_token_inputs", (3, 4, 10, 11, 36, 37, 40), MASKED_FORWARD)
_add("meta_arch", "_token_inputs", (13, 14, 16, 17, 18, 20, 21, 23, 24, 26, 27, 28, 29, 30, 31, 32, 33, 34, 38, 39,
                                    41, 42), PROVIDER_INPUTS)
_add("meta_arch", "StudentNetwork.forward", (2, 8, 15, 27), MASKED_FORWARD)
_add("meta_arch", "StudentNetwork.forward", (1, 3, 6, 7, 16, 17, 22, 23, 29, 34, 50, 51, 52, 53, 54, 55),
     PROVIDER_INPUTS)
_add("meta_arch", "StudentNetwork.forward", (41,), (
    EQ, "patch_logits is read only by the iBOT loss, which forward_losses computes only when sites is not None, "
        "exactly when patch_logits is assigned."))
_add("meta_arch", "TeacherNetwork.forward", (1,), (
    EQ, "embed_views starts with 'inputs = inputs or {}', so an empty string is no inputs, as None."))
_add("meta_arch", "TeacherNetwork.forward", (2, 33), NO_PLAN)
_add("meta_arch", "TeacherNetwork.forward", (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 22, 25),
     PROVIDER_INPUTS)
_add("meta_arch", "SSLMetaArch.data_hooks", (24,), (
    GAP, "ibot.mask_pattern reaches the ContentMasker only when it is not 'block' (the masker's default); no fast "
         "test sets another pattern through the host."))
_add("meta_arch", "SSLMetaArch._normalise", (11, 12, 16), (
    GAP, "_normalise is checked only against itself (the no-mask test builds its reference with meta._normalise), so "
         "a wrong view order, layout or mean goes unseen."))
_add("meta_arch", "SSLMetaArch.forward_losses", (1,), (
    EQ, "A default-argument change: the training loop, the one caller outside the tests, always passes step."))
_add("meta_arch", "SSLMetaArch.forward_losses", (15,), PROVIDER_INPUTS)
_add("meta_arch", "SSLMetaArch.forward_losses", (44, 46, 48, 55), STEP_CONTEXT_UNUSED)
_add("meta_arch", "SSLMetaArch.forward_losses", (91, 92, 96, 97, 98, 100, 101, 102, 105, 106, 108), WATCH_VALUE)
_add("meta_arch", "SSLMetaArch.forward_losses", (94, 95, 103, 104), WATCH_KEY)
_add("meta_arch", "SSLMetaArch.forward_losses", (111, 124, 125, 146, 147), TOTAL_LOSS)
_add("meta_arch", "SSLMetaArch.forward_losses", (133,), (
    GAP, "With koleo_weight 0 KoLeo is computed anyway and logged as loss/koleo (the total is unchanged: 0 * koleo); "
         "no test checks that the log has no koleo entry."))
_add("meta_arch", "SSLMetaArch.forward_losses", (134, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144), KOLEO_OFF)
_add("meta_arch", "SSLMetaArch.forward_losses", (150, 151, 152), (
    GAP, "logs['loss'] (the total the progress bar and metrics file show) is not read by any fast test."))

# --- plugins/roi.py
_add("plugins.roi", "intersect", (4,), (
    GAP, "Torch boxes go through np.maximum / np.minimum: on the CPU torch's __array_wrap__ hands back tensors with "
         "the same numbers, so the tests pass; a CUDA tensor (or one that requires grad) cannot go through NumPy."))
_add("plugins.roi", "roi_tokens", (7,), (
    EQ, "The batch index stays int64; torch.cat with the float boxes promotes it to their dtype exactly (small "
        "integers), and the result is cast to float32 anyway."))
_add("plugins.roi", "roi_tokens", (19, 24), (
    EQ, "roi_align's sampling_ratio <= 0 means adaptive (ceil(bin size)) samples: -1 (its default) and -2 are the "
        "same."))
_add("plugins.roi", "roi_tokens", (23,), (
    GAP, "One sample per bin instead of the adaptive ceil(bin size): the same for bins at most one token wide, which "
         "is what the tests' RoIs use; larger bins would average fewer points."))

# --- plugins/scrl.py (box_iou_xyxy)
_add("plugins.scrl", "box_iou_xyxy", (6, 12, 13, 18, 19, 25, 37, 38, 41, 42, 43, 44, 45, 47, 48, 51, 54, 55, 58),
     SCRL_OVERLAP)

# --- meta_arch.py (construction)
_add("meta_arch", "StudentNetwork.__init__", (1,), (
    EQ, "A default-argument change: the one caller (SSLMetaArch) always passes mask_token=ibot.enabled."))
_add("meta_arch", "SSLMetaArch.__init__", (6, 8), (
    GAP, "model.pretrained: true no longer loads timm's weights; the fast tests never use pretrained weights (they "
         "would need a download)."))
_add("meta_arch", "SSLMetaArch.__init__", (12, 14), (
    EQ, "timm's create_model tests 'if pretrained', so None and the default False are the explicit False."))
_add("meta_arch", "SSLMetaArch.__init__", (19,), (
    GAP, "The teacher gets drop_path_rate 1.0 instead of 0 (it runs in the module's train mode during training); no "
         "fast test checks the teacher's drop path (the host tests run in eval mode or do not compare teacher "
         "features)."))
_add("meta_arch", "SSLMetaArch.__init__", (29, 32, 33, 34, 35), HEAD_CONFIG)
_add("meta_arch", "SSLMetaArch.__init__", (38, 43, 44, 45, 46), N_LOCAL_ZERO)
_add("meta_arch", "SSLMetaArch.__init__", (60,), (
    GAP, "A plug-in configured with weight 0 is kept (its views, hooks and forward run, adding 0 * loss); no test "
         "configures weight 0."))
_add("meta_arch", "SSLMetaArch.__init__", (64, 66, 67, 68, 71, 72, 73, 74, 95), HOSTSPEC_UNUSED)
_add("meta_arch", "SSLMetaArch.__init__", (77, 91), (
    GAP, "host_views_altered is never set, so SCRL does not learn that EC's faithful mode alters the global views; "
         "only test_plugin_train.py (outside the fast selection) combines the two."))
_add("meta_arch", "SSLMetaArch.__init__", (93,), (
    EQ, "timm's patch_size is a square (p, p) tuple (ModelConfig.patch_size is an int), so index 1 is index 0."))
_add("meta_arch", "SSLMetaArch.__init__", (96, 97), (
    GAP, "patch_head_dim always takes the DINO (96) or the iBOT (97) width: the same unless ibot.out_dim differs from"
         " dino.out_dim, which no fast test sets."))
_add("meta_arch", "SSLMetaArch.__init__", (141, 143), (
    GAP, "The DINO loss's reserved-channel offset with a separate iBOT head (0: the DINO head keeps all channels) is "
         "not checked; the reserved-channel tests use a shared head."))
_add("meta_arch", "SSLMetaArch.__init__", (149, 154), (
    GAP, "dino.sinkhorn_iterations does not reach the DINO loss (None, or the default 3); no fast test runs the DINO "
         "loss through the host with centering: sinkhorn and another iteration count."))
_add("meta_arch", "SSLMetaArch.__init__", (156,), KOLEO_OFF)
_add("meta_arch", "SSLMetaArch.__init__", (173, 197), (
    EQ, "register_buffer tests 'if persistent', so persistent=None is persistent=False."))
_add("meta_arch", "SSLMetaArch.__init__", (176, 194, 200, 218), HOST_BUFFERS_PERSISTENT)
_add("meta_arch", "SSLMetaArch.__init__", (179, 193, 203, 217), HOST_NORMALISE_CONST)
_add("meta_arch", "SSLMetaArch.__init__", (184, 208), (
    EQ, "_normalise's input is (N, 3, H, W), where a (3, 1, 1) buffer right-aligns with the channel dimension as (1, "
        "3, 1, 1) does; the buffers are not persistent, so no state dict sees the shape."))
_add("meta_arch", "SSLMetaArch.__init__", (220,), (
    EQ, "self.dino_groups is stored but never read: the plan and the group lists use the local dino_groups."))
_add("meta_arch", "SSLMetaArch.__init__", (230, 231), (
    EQ, "A repeated 'global' in teacher_groups changes nothing: its only readers turn it into a set or a dict keyed "
        "by group."))

# --- plugins/base.py
_add("plugins.base", "Plugin.__init__", (3,), (
    GAP, "Before setup() self.host is '' instead of None, which breaks the only 'is None' check (SP's no-host "
         "fallback); the host always calls setup() first, and no test uses that fallback."))

# --- plugins/scrl.py (box drawing)
_add("plugins.scrl", "_draw_box", (9, 19), (
    EQ, "NumPy's integers truncates a float upper bound, and floor(int_w / min_size + 1) is int_w // min_size + 1 for"
        " positive integers (the same draws, checked)."))
_add("plugins.scrl", "_draw_box", (68, 82, 86, 87, 88, 89, 94, 95, 96, 97, 107, 108, 117, 118), SCRL_DRAW_BOX)
_add("plugins.scrl", "scrl_box_pairs", (1, 2, 3, 4, 5), (
    EQ, "A default-argument change: the one caller (SCRLBoxHook) passes n_boxes, min_size, iou_threshold, max_tries "
        "and grid from its config."))
_add("plugins.scrl", "scrl_box_pairs", (21, 23, 26, 28), (
    GAP, "Drops the float64 cast of a crop box: the hook already passes float64 and so do the tests, but a float32 "
         "box from a direct call would be computed in float32."))
_add("plugins.scrl", "scrl_box_pairs", (55, 56, 57), (
    EQ, "A pair that is apart (or touching) in one axis only gets a non-positive intersection width or height, so the"
        " next check (min_size >= int_w or int_h, min_size >= 1) returns the same empty, invalid result."))
_add("plugins.scrl", "scrl_box_pairs", (84, 90), (
    GAP, "The +1e-9 guard of the frame size matters when (ir - il) * smin is a whole number (common with "
         "pixel-snapped crops): the frame would lose a pixel; the tests do not pin the frame size."))
_add("plugins.scrl", "scrl_box_pairs", (96, 97), (
    GAP, "An intersection exactly min_size wide (or tall) becomes valid, with one full-size box; the boundary is not "
         "tested."))
_add("plugins.scrl", "scrl_box_pairs", (107,), (
    GAP, "Always draws in the non-grid mode (grid None); the tests cannot tell the two modes apart (both give boxes "
         "inside the intersection of at least min_size)."))
_add("plugins.scrl", "scrl_box_pairs", (116, 117), (
    GAP, "With iou_threshold exactly 1.0 (allowed: (0, 1]) the overlap check would run and redraw boxes identical to "
         "a kept one; no test uses 1.0."))
_add("plugins.scrl", "scrl_box_pairs", (120, 121, 127, 128, 129, 130, 131, 132, 133, 135), SCRL_OVERLAP)

# --- heads.py (construction)
_add("heads", "mlp", (18,), (
    GAP, "The last hidden activation is dropped (two linear layers meet without a GELU) for n_layers >= 2; the heads'"
         " layer stacks are checked only by their output shapes (DINO, iBOT and SP heads alike)."))
_add("heads", "DINOHead.__init__", (1, 2, 3, 4), (
    EQ, "A default-argument change: the one caller (SSLMetaArch's make_head) passes hidden_dim, bottleneck_dim, "
        "n_layers and norm_last_layer from the config."))
_add("heads", "DINOHead.__init__", (20, 21), (
    GAP, "last_layer gets a bias that forward never uses (F.linear with the normalised weight only): the same logits,"
         " but an extra state-dict key and a parameter that never gets a gradient (DDP's unused-parameter check); no "
         "test lists the head's parameters."))
_add("heads", "DINOHead._init", (4, 5), (
    GAP, "The heads' init scale (truncated normal, std 0.02) is not checked by any test."))

# --- losses.py (DINOLoss defaults)
_add("losses", "DINOLoss.__init__", (1, 2), (
    EQ, "A default-argument change: the one caller (SSLMetaArch) passes student_temp and center_momentum from the "
        "config."))

# --- meta_arch.py (channels)
_add("meta_arch", "SSLMetaArch.__init__", (251, 256), (
    EQ, "Without reserved channels the slice is slice(0, None), which selects every channel exactly as None does "
        "(DINOHead indexes its weight rows and scale with it)."))
_add("meta_arch", "SSLMetaArch._reserved_channels", (3,), (
    GAP, "A plug-in reserving exactly one channel (d_equi = 1) would be ignored; no test reserves a single channel."))
_add("meta_arch", "SSLMetaArch._reserved_channels", (5, 6), (
    GAP, "The refusals (two plug-ins reserving channels; a reservation as wide as the head) no longer fire for the "
         "boundary case; only one in-repository plug-in reserves channels, and it refuses d_equi >= width itself."))

# ---------------------------------------------------------------------------------------------------------------
# pattern rules for verified families


def _sides(diff: str) -> tuple[str, str]:
    """The removed and the added source of a mutmut diff, each joined to one whitespace-normalised line."""
    old = " ".join(ln[1:].strip() for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---"))
    new = " ".join(ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++"))
    return old, new


def _strip_device(code: str) -> str:
    code = re.sub(r",?\s*device=[\w.]+(\([^()]*\))?", "", code)  # device=x.device, device=None, device=torch.device(..)
    code = re.sub(r"\.to\((None|[\w.]+\.device)\)", ".to()", code)  # .to(x.device) -> .to(None)
    return re.sub(r"\s+", "", code).replace(",)", ")")


def _only_device_changed(diff: str) -> bool:
    old, new = _sides(diff)
    if not old or old == new or "device" not in old:
        return False
    new_has_none = "device=None" in new or ".to(None)" in new or new.count("device=") < old.count("device=")
    return new_has_none and _strip_device(old) == _strip_device(new)


@dataclass(frozen=True)
class Rule:
    """``func`` (regex over ``module:function``) and ``diff`` (regex over the diff) must both match (None: any);
    ``check`` is an extra predicate over the diff."""

    name: str
    explanation: Explanation
    func: str | None = None
    diff: str | None = None
    check: Callable[[str], bool] | None = None

    def matches(self, func: str, diff: str) -> bool:
        if self.func is not None and not re.search(self.func, func):
            return False
        if self.diff is not None and not re.search(self.diff, diff):
            return False
        return self.check is None or self.check(diff)


# keywords whose mutation to "dropped" or "None" leaves the call the same: (callee, keyword, value, the mutant
# forms that keep it). Each entry is verified on the mutants named. report.py passes only the +/- lines, so a call
# spread over several lines is seen only where its first line is part of the diff.
DEFAULT_KEYWORDS: list[tuple[str, str, str, frozenset[str]]] = [
    ("F.normalize", "p", "2", frozenset({"drop", "None"})),  # KoLeoLoss.forward 3, 7 (p=None is the 2-norm)
    ("F.normalize", "dim", "1", frozenset({"drop"})),  # crop_loss 7, 12
    ("F.pairwise_distance", "p", "2", frozenset({"drop"})),  # KoLeoLoss.forward 27
    ("F.grid_sample", "mode", '"bilinear"', frozenset({"drop"})),  # sample_field 11
    # align_corners=None means False; sample_field 8, 13 are two-line calls the rule cannot see (SPECIFIC has them)
    ("F.grid_sample", "align_corners", "False", frozenset({"drop", "None"})),
    ("nn.Linear", "bias", "False", frozenset({"None"})),  # SCRLHead.__init__ 11 (nn.Linear tests 'if bias')
    ("register_buffer", "persistent", "False", frozenset({"None"})),  # Equivariance.__init__ 23, 47 ('if persistent')
    ("np.zeros", "", "np.float64", frozenset({"drop", "None"})),  # sample_transform 4, 6 (float64 is the default)
    # cv2.warpAffine's defaults (checked against OpenCV): apply_transform 58-60, 64-66
    ("cv2.warpAffine", "flags", "cv2.INTER_LINEAR", frozenset({"drop", "None"})),
    ("cv2.warpAffine", "borderMode", "cv2.BORDER_CONSTANT", frozenset({"drop", "None"})),
    ("cv2.warpAffine", "borderValue", "0", frozenset({"drop", "None"})),
    (".astype", "", "np.float64", frozenset({"None"})),  # SCRLBoxHook.__call__ 26, 34 (astype(None) is float64)
]


def _squash(code: str) -> str:
    return re.sub(r"\s+", "", code).replace(",)", ")")


def _call_args(code: str, callee: str):
    """(start, end) of the argument text of every ``callee(...)`` call in ``code``."""
    for m in re.finditer(re.escape(callee) + r"\(", code):
        depth, i = 1, m.end()
        while i < len(code) and depth:
            depth += {"(": 1, ")": -1}.get(code[i], 0)
            i += 1
        yield m.end(), i - 1


def _keyword_kept(diff: str) -> bool:
    """The mutant only drops a keyword set to its callee's default, or sets it to a None that means the same."""
    old, new = (_squash(side) for side in _sides(diff))
    if not old or old == new:
        return False
    for callee, kw, value, forms in DEFAULT_KEYWORDS:
        arg = f"{kw}={value}" if kw else value
        for a, b in _call_args(old, callee):
            inner = old[a:b]
            depth, pos = 0, []
            for i, ch in enumerate(inner):  # top-level occurrences of the argument inside this call
                depth += {"(": 1, ")": -1}.get(ch, 0)
                if depth == 0 and inner.startswith(arg, i) and (i == 0 or inner[i - 1] == ",") \
                        and inner[i + len(arg):i + len(arg) + 1] in ("", ","):
                    pos.append(i)
            for i in pos:
                variants = []
                if "None" in forms:
                    variants.append(inner[:i] + (f"{kw}=None" if kw else "None") + inner[i + len(arg):])
                if "drop" in forms:
                    variants.append((inner[:i] + inner[i + len(arg) + 1:]) if inner[i + len(arg):].startswith(",")
                                    else inner[:i].rstrip(",") + inner[i + len(arg):])
                if any(_squash(old[:a] + v + old[b:]) == new for v in variants):
                    return True
    return False


def _integers_from_zero(diff: str) -> bool:
    """The mutant only turns ``integers(0, x)`` into ``integers(x)``."""
    old, new = (_squash(side) for side in _sides(diff))
    starts = [m.start() for m in re.finditer(r"integers\(0,", old)]
    return any(old[:i] + "integers(" + old[i + len("integers(0,"):] == new for i in starts)


def _fewer_layers(diff: str) -> bool:
    old, new = _sides(diff)
    return new.count("nn.") < old.count("nn.")


RULES: list[Rule] = [
    # device=... -> None / dropped, .to(x.device) -> .to(None). Verified on TokenInputs.cat 22/26, _norm 3/5,
    # SCRL._roi 13/15, crop_rois 10/12, patch_centres 18/21/27/30, agnostic_positions 2/5/7/24/26,
    # IBOTPatchLoss.update_center 11/14 (it also matches clip_gradients 52/54, which SPECIFIC calls equivalent:
    # that branch only runs without any gradient, on the CPU fallback).
    Rule("device only", GPU_ONLY, check=_only_device_changed),
    # a keyword set to its own default dropped, or set to a None meaning the same (DEFAULT_KEYWORDS).
    Rule("default keyword", (EQ, "The keyword is dropped or set to None where that means the same value (the "
                                 "callee's default, or None read as it): the same call."), check=_keyword_kept),
    # rng.integers(0, n) -> rng.integers(n): the same range and the same draw. Verified on GTSAViewSampler.__call__ 44,
    # block_mask 76, 85, _draw_box 28, 34, 60, 74, 103, 113.
    Rule("integers(0, n)", (EQ, "rng.integers(n) is rng.integers(0, n): the same range and the same draw."),
         check=_integers_from_zero),
    # any mutant of export_affine: verified on 1-20 (every one that survived).
    Rule("export_affine", EXPORT_AFFINE, func=r"posfield:export_affine$"),
    # GTSA.forward's roi_size / num_matches switch: verified on 31-37, 59-61, 77-79.
    Rule("gtsa big", GTSA_BIG, func=r"gtsa:GTSA\.forward$", diff=r"(?m)^[-+].*\b(big|roi_size|num_matches)\b"),
    # ConvProjector's body: verified on forward 4-9, __init__ 3/8-11 (__init__ 1, the n_blocks default, is SPECIFIC).
    Rule("conv projector", CONV_PROJECTOR, func=r"gtsa:ConvProjector\.(forward|__init__)$"),
    # rotation_head's layer list losing a layer: verified on 13-17, 19.
    Rule("rotation head layers", ROTATION_HEAD, func=r"gtsa:rotation_head$", check=_fewer_layers),
]

STATUS_RULES: dict[str, Explanation] = {
    "timeout": (GAP, "The mutant made the selected tests run past mutmut's time limit: it does change behaviour "
                     "(most likely a loop that no longer ends), but no test fails on it, and mutmut counts it as not "
                     "killed."),
    "no tests": (GAP, "No test in the fast method selection calls this function (mutmut found none); covered only by "
                      "the slow end-to-end tests, if at all."),
    "segfault": (GAP, "The mutant crashed the test process; counted as not killed."),
    "not checked": (GAP, "Not run by mutmut (the run had not reached it)."),
    "skipped": (GAP, "Skipped by mutmut."),
    "suspicious": (GAP, "mutmut reported an exit code it does not classify."),
}


def _function(name: str) -> str:
    """``module:function`` or ``module:Class.method`` (module relative to wherevit.train) of a mutant name."""
    base = re.sub(r"__mutmut_\d+$", "", name)
    module, _, last = base.rpartition(".")
    module = module.removeprefix("wherevit.train.")
    if last.startswith("x" + SEP):
        cls, _, meth = last[2:].partition(SEP)
        return f"{module}:{cls}.{meth}"
    return f"{module}:{last.removeprefix('x_')}"


def explain(name: str, file: str, status: str, diff: str) -> tuple[str, str]:
    """(kind, why) for a mutant mutmut did not kill: kind is "equivalent" or "gap". ``file`` (the mutated file)
    is part of report.py's call but not needed: the mutant's name carries its module."""
    if name in SPECIFIC:
        return SPECIFIC[name]
    func = _function(name)
    for rule in RULES:
        if rule.matches(func, diff):
            return rule.explanation
    if status in STATUS_RULES:
        return STATUS_RULES[status]
    return DEFAULT
