"""Open-vocabulary detection: AP and AP50 by category set, computed by pycocotools on COCO JSON.

The detector (models/detector.py, fine-tuned by train/detect.py on base categories) is queried with
every category name of the test file at once (base, novel and held-out, as LVIS open-vocabulary
detection queries all 1,203 LVIS names); each image keeps its 100 best (token, class) scores, as
DETR / OWL-ViT evaluate, after class-wise NMS at IoU 0.5 (models/detector.py: `fast_nms`). The
detections are written as a COCO results list and scored by pycocotools' COCOeval (AP = mean over
IoU 0.50:0.95, 101-point interpolated precision; AP50 at IoU 0.5), once per category set (the `set`
field of the categories: "base" / "novel" / "heldout"; LVIS's APr is our novel AP). A set with no
boxes in the file reports None. `class_agnostic`: the same tokens as one category "object" scored by
their best class: how well boxes are found, apart from naming them.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from mmtlab.data.detection import DetectionBatches, square_image
from mmtlab.data.emoji_scenes.detection import DETECTION_DIR, instances_file
from mmtlab.data.formats.coco import DetectionSet, read_coco, xyxy_to_xywh
from mmtlab.data.prompts import TEMPLATES, prompts
from mmtlab.io import atomic_write_json
from mmtlab.models.detector import cxcywh_to_xyxy, top_detections
from mmtlab.progress import track

MAX_DETS = 100
NMS = 0.5  # class-wise NMS IoU before the top 100 (tokens of a short fine-tune still repeat a box)


def coco_ap(gt: dict, detections: list[dict], cat_ids: list[int] | None = None) -> dict:
    """pycocotools AP / AP50 / AP75 (IoU 0.50:0.95 mean, 0.5, 0.75; all areas; 100 detections per
    image) of `detections` (COCO results: image_id, category_id, bbox [x, y, w, h], score) against
    the COCO dict `gt`, over `cat_ids` (default all). None where no category has a box."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = sorted(cat_ids if cat_ids is not None else [c["id"] for c in gt["categories"]])
    n_gt = sum(1 for a in gt["annotations"] if a["category_id"] in set(ids) and not a.get("iscrowd", 0))
    info = {"categories": len(ids), "boxes": n_gt}
    if n_gt == 0:
        return {"AP": None, "AP50": None, "AP75": None, **info}
    dets = [d for d in detections if d["category_id"] in set(ids)]
    if not dets:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, **info}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and tables
        coco = COCO()
        coco.dataset = {"info": {}, **gt}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.params.catIds = ids
        ev.params.imgIds = sorted(im["id"] for im in gt["images"])
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ap, ap50, ap75 = (float(v) if v >= 0 else None for v in ev.stats[:3])
    return {"AP": ap, "AP50": ap50, "AP75": ap75, **info}


def name_queries(detector, names: list[str]) -> torch.Tensor:
    """[C, E] prompt-ensembled unit embeddings of `names` by the detector's frozen text side."""
    return detector.embed_names(detector.tokenizer, prompts(names), len(TEMPLATES))


@torch.no_grad()
def detect_set(
    detector, data: DetectionSet, batch_size: int = 64, progress: bool = True, nms: float | None = NMS
) -> tuple[list[dict], list[dict]]:
    """COCO results for every image of `data`, querying all its category names; and the same tokens
    class-agnostic (category 1, each token's best class score), to tell localisation from naming."""
    cat_ids = sorted(data.categories)
    queries = name_queries(detector, [data.categories[c]["name"] for c in cat_ids])
    batches = DetectionBatches(data, detector.image_size, {c: i for i, c in enumerate(cat_ids)})
    results, agnostic = [], []
    n = -(-len(data.images) // batch_size)
    for x, _, kept in track(batches.in_order(batch_size), "detecting", total=n, enabled=progress):
        out = detector(x, queries)
        best = torch.sigmoid(out["logits"].float()).amax(-1)  # [B, N]
        corners = cxcywh_to_xyxy(out["boxes"].float()).clamp(0, 1)
        for i, (boxes, scores, cls) in enumerate(top_detections(out["logits"], out["boxes"], MAX_DETS, nms)):
            im = kept[i]
            side = max(im.width, im.height)
            for b, s, c in zip((boxes * side).tolist(), scores.tolist(), cls.tolist()):
                results.append({"image_id": im.id, "category_id": cat_ids[c], "bbox": xyxy_to_xywh(b), "score": s})
            for b, s in zip((corners[i] * side).tolist(), best[i].tolist()):
                agnostic.append({"image_id": im.id, "category_id": 1, "bbox": xyxy_to_xywh(b), "score": s})
    return results, agnostic


def evaluate_detection(detector, data: DetectionSet, batch_size: int = 64, progress: bool = True) -> dict:
    """AP / AP50 over all categories and per category `set` of `data`, and class-agnostic AP (every
    box one category "object": how well the boxes alone are found)."""
    dets, agnostic = detect_set(detector, data, batch_size, progress)
    gt = data.raw
    kept = {im.id for im in data.images}
    gt = {**gt, "images": [im for im in gt["images"] if im["id"] in kept],
          "annotations": [a for a in gt["annotations"] if a.get("image_id") in kept and a.get("bbox")]}  # fmt: skip
    sets = sorted({c.get("set") for c in data.categories.values() if c.get("set")})
    result = {"all": coco_ap(gt, dets)}
    for s in sets:
        result[s] = coco_ap(gt, dets, data.ids_where("set", s))
    one = {**gt, "categories": [{"id": 1, "name": "object"}],
           "annotations": [{**a, "category_id": 1} for a in gt["annotations"]]}  # fmt: skip
    result["class_agnostic"] = coco_ap(one, agnostic)
    n = {"n_images": len(kept), "n_detections": len(dets), "nms_iou": NMS, "skipped": dict(data.skipped)}
    return {**n, "ap": result}


def eval_detect(
    run_dir: Path,
    split: str = "detect_test",
    data: Path | None = None,
    annotations: Path | None = None,
    images: Path | None = None,
    max_images: int | None = None,
    progress: bool = True,
    model_dir: Path | None = None,
    **info,
) -> dict:
    """Evaluate the detector at `model_dir` (default: RUN_DIR itself if it is a detector directory,
    else RUN_DIR/detect) on `annotations` (default: DATA/detection/instances_<split>.json, DATA the
    run's data root) -> RUN_DIR/eval/detect.json."""
    import mmtlab

    run_dir = Path(run_dir)
    det_dir = (
        Path(model_dir) if model_dir else (run_dir if (run_dir / "detector.json").exists() else run_dir / "detect")
    )
    detector = mmtlab.load_detector(det_dir)
    root = Path(data or detector.run_config.data.root)
    ann = Path(annotations) if annotations else root / DETECTION_DIR / instances_file(split)
    if not ann.exists():
        raise FileNotFoundError(f"{ann}: no detection annotations (mmtlab data build emoji-scenes --detection-size N)")
    testset = read_coco(ann, images)
    if max_images is not None:
        testset.images = testset.images[:max_images]
    result = {
        "detector": str(det_dir),
        "annotations": str(ann),
        "image_size": detector.image_size,
        **info,
        "trained_on": {k: detector.info.get(k) for k in ("settings", "train_images", "train_boxes",
                                                         "images_per_s_end_to_end", "images_per_s_step_median")},
        **evaluate_detection(detector, testset, progress=progress),
    }  # fmt: skip
    atomic_write_json(run_dir / "eval" / "detect.json", result)
    return result


@torch.no_grad()
def detect_image(detector, image: Path, queries: list[str], threshold: float = 0.3, max_boxes: int = 20):
    """Boxes (pixels, xyxy), scores and query names of `queries` found in one image."""
    pixels, scale = square_image(Path(image), detector.image_size)
    x = pixels[None].float().div(127.5).sub(1.0)
    out = detector(x, name_queries(detector, queries))
    boxes, scores, cls = top_detections(out["logits"], out["boxes"], max_boxes, NMS)[0]
    keep = scores >= threshold
    side = detector.image_size / scale
    return [
        {"box": [round(v, 1) for v in b], "score": round(s, 4), "query": queries[c]}
        for b, s, c in zip((boxes[keep] * side).tolist(), scores[keep].tolist(), cls[keep].tolist())
    ]


def draw_detections(image: Path, found: list[dict], out: Path, scale: int | None = None) -> None:
    """The image (upscaled to at least 384 px) with each box, its query and score -> PNG."""
    with Image.open(image) as im:
        im = im.convert("RGB")
    f = scale or max(1, -(-384 // max(im.size)))
    im = im.resize((im.width * f, im.height * f), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=12)
    colors = [(255, 0, 255), (0, 200, 255), (255, 200, 0), (0, 220, 0), (255, 60, 60)]
    names = list(dict.fromkeys(d["query"] for d in found))
    for d in found:
        color = colors[names.index(d["query"]) % len(colors)]
        x1, y1, x2, y2 = (v * f for v in d["box"])
        draw.rectangle((x1, y1, x2, y2), outline=color, width=2)
        label = f"{d['query']} {d['score']:.2f}"
        tw = draw.textlength(label, font=font)
        draw.rectangle((x1, max(0, y1 - 14), x1 + tw + 4, max(14, y1)), fill=color)
        draw.text((x1 + 2, max(0, y1 - 14)), label, fill="black", font=font)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    im.save(out)
