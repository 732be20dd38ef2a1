"""Open-vocabulary detection (issue 19): matching, losses and AP against hand-computed values, the
COCO format (round trip, corrupt annotations), base-only training, and the CLI end to end."""

import json
import math
import shutil

import pytest
import torch
from conftest import invoke, tiny_run_config

from mmtlab.data.detection import DetectionBatches, NovelInTraining, check_base_only
from mmtlab.data.formats.coco import coco_instances, read_coco, write_coco
from mmtlab.eval.detect import coco_ap
from mmtlab.objectives.detection import (
    DetectionWeights,
    detection_loss,
    generalized_box_iou,
    hungarian_match,
    sigmoid_focal_loss,
)

LN2 = math.log(2)


# -- matching ---------------------------------------------------------------------------------------


def test_hungarian_matching_finds_the_optimum_where_greedy_does_not():
    # Targets A (cx 0.30) and B (cx 0.50); token 0 at 0.39 is nearest to A, token 1 at 0.20 only near A.
    # Greedy (A takes its nearest, token 0) costs 0.09 + 0.30; the optimum (A-1, B-0) 0.10 + 0.11.
    targets = torch.tensor([[0.30, 0.5, 0.2, 0.2], [0.50, 0.5, 0.2, 0.2]])
    boxes = torch.tensor([[0.39, 0.5, 0.2, 0.2], [0.20, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1]])
    logits = torch.zeros(3, 1)
    labels = torch.tensor([0, 0])
    rows, cols = hungarian_match(logits, boxes, labels, targets, DetectionWeights(cls=0, l1=1, giou=0))
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 1, 1: 0}
    # with every cost term on, the boxes still decide (equal logits)
    rows, cols = hungarian_match(logits, boxes, labels, targets)
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 1, 1: 0}


def test_matching_uses_the_class_cost_and_handles_no_targets():
    # Two tokens on the same box; token 1 is confident about class 1, token 0 about class 0.
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]])
    logits = torch.tensor([[4.0, -4.0], [-4.0, 4.0]])
    rows, cols = hungarian_match(logits, boxes, torch.tensor([1]), boxes[:1])
    assert rows.tolist() == [1] and cols.tolist() == [0]
    rows, cols = hungarian_match(logits, boxes, torch.zeros(0, dtype=torch.long), torch.zeros(0, 4))
    assert rows.numel() == 0 and cols.numel() == 0


# -- losses -----------------------------------------------------------------------------------------


def test_focal_loss_against_hand_values():
    logits = torch.tensor([0.0, 0.0, math.log(3.0)])  # p = 0.5, 0.5, 0.75
    targets = torch.tensor([1.0, 0.0, 1.0])
    got = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    want = [0.25 * 0.5**2 * LN2, 0.75 * 0.5**2 * LN2, 0.25 * 0.25**2 * -math.log(0.75)]
    assert got.tolist() == pytest.approx(want, rel=1e-6)


def test_generalized_iou_against_hand_values():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 2]])
    b = torch.tensor([[1.0, 1, 3, 3], [2, 2, 3, 3], [0, 0, 2, 2]])
    got = torch.diag(generalized_box_iou(a, b))
    # overlap 1, union 7, hull 9: 1/7 - 2/9; disjoint: 0 - (9 - 2)/9; identical: 1
    assert got.tolist() == pytest.approx([1 / 7 - 2 / 9, -7 / 9, 1.0], abs=1e-6)


def test_detection_loss_against_hand_values():
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    # token 0 sits 0.1 to the right of the target, token 1 far away: token 0 is matched
    boxes = torch.tensor([[[0.6, 0.5, 0.2, 0.2], [0.1, 0.1, 0.05, 0.05]]])
    logits = torch.zeros(1, 2, 1)
    out = detection_loss(logits, boxes, [(torch.tensor([0]), target)])
    # focal at p = 0.5: the matched token a positive, the other a negative; one target box
    assert out["cls"].item() == pytest.approx(0.25 * 0.25 * LN2 + 0.75 * 0.25 * LN2, rel=1e-6)
    assert out["l1"].item() == pytest.approx(0.1, rel=1e-5)
    # overlap 0.1 x 0.2 = 0.02, union 0.06, hull 0.3 x 0.2 = 0.06: GIoU = IoU = 1/3
    assert out["giou"].item() == pytest.approx(2 / 3, rel=1e-5)
    w = DetectionWeights()
    assert out["loss"].item() == pytest.approx(w.cls * out["cls"].item() + w.l1 * 0.1 + w.giou * 2 / 3, rel=1e-5)


def test_detection_loss_gradients_reach_only_matched_boxes():
    boxes = torch.tensor([[[0.6, 0.5, 0.2, 0.2], [0.1, 0.1, 0.05, 0.05]]], requires_grad=True)
    logits = torch.zeros(1, 2, 3, requires_grad=True)
    detection_loss(logits, boxes, [(torch.tensor([2]), torch.tensor([[0.5, 0.5, 0.2, 0.2]]))])["loss"].backward()
    assert boxes.grad[0, 1].abs().sum() == 0 and boxes.grad[0, 0].abs().sum() > 0
    assert logits.grad[0, 0, 2] < 0  # the matched token is pushed towards class 2 ...
    assert (logits.grad[0, 1] > 0).all()  # ... every other token x class towards background


# -- AP ---------------------------------------------------------------------------------------------


def _gt(boxes_by_cat: dict[int, list]) -> dict:
    images = [{"id": 1, "file_name": "a.png", "width": 100, "height": 100, "boxes": [], "labels": []}]
    for cat, boxes in boxes_by_cat.items():
        images[0]["boxes"] += boxes
        images[0]["labels"] += [cat] * len(boxes)
    cats = [{"id": 1, "name": "cat", "set": "base"}, {"id": 2, "name": "dog", "set": "novel"}]
    return coco_instances(images, cats)


def test_ap_on_a_fixture_agrees_with_a_hand_computed_ap():
    gt = _gt({1: [[0, 0, 10, 10], [50, 50, 70, 70]], 2: [[20, 20, 40, 40]]})
    dets = [  # cat: hit (0.9), miss (0.8), hit (0.7) -> precision 1 up to recall 0.5, then 2/3
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [80, 80, 10, 10], "score": 0.8},
        {"image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "score": 0.7},
        {"image_id": 1, "category_id": 2, "bbox": [20, 20, 20, 20], "score": 0.5},
    ]
    # COCO's 101-point interpolation: recall 0, 0.01, ..., 0.5 (51 points) at precision 1, the 50
    # points above at 2/3; exact boxes, so every IoU threshold gives the same
    hand = (51 * 1.0 + 50 * 2 / 3) / 101
    cat = coco_ap(gt, dets, [1])
    assert cat["AP"] == pytest.approx(hand, abs=1e-9) and cat["AP50"] == pytest.approx(hand, abs=1e-9)
    assert coco_ap(gt, dets, [2])["AP"] == pytest.approx(1.0)
    assert coco_ap(gt, dets)["AP"] == pytest.approx((hand + 1.0) / 2)
    assert coco_ap(gt, dets[:3], [2])["AP"] == 0.0  # boxes but no detections
    assert coco_ap(_gt({1: [[0, 0, 10, 10]]}), dets, [2])["AP"] is None  # no boxes: undefined


# -- COCO format --------------------------------------------------------------------------------------


def _write_images(folder, names, size=(48, 32)):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.new("RGB", size, (200, 10, 10)).save(folder / n)


def test_coco_json_round_trip(tmp_path):
    from pycocotools.coco import COCO

    _write_images(tmp_path, ["a.png", "b.png"])
    size = {"width": 48, "height": 32}
    images = [
        {"id": 1, "file_name": "a.png", **size, "boxes": [[1, 2, 11, 22], [5, 5, 40, 30]], "labels": [3, 7]},
        {"id": 2, "file_name": "b.png", **size, "boxes": [], "labels": []},
    ]
    cats = [{"id": 3, "name": "cat", "set": "base", "frequency": "f"}, {"id": 7, "name": "dog", "set": "novel"}]
    write_coco(tmp_path / "instances_x.json", coco_instances(images, cats))
    back = read_coco(tmp_path / "instances_x.json")
    assert not back.skipped
    by_id = {im.id: im for im in back.images}
    assert by_id[1].boxes.tolist() == [[1, 2, 11, 22], [5, 5, 40, 30]] and by_id[1].labels.tolist() == [3, 7]
    assert by_id[2].boxes.shape == (0, 4) and by_id[1].path == tmp_path / "a.png"
    assert back.ids_where("set", "novel") == [7] and back.categories[3]["frequency"] == "f"
    coco = COCO(str(tmp_path / "instances_x.json"))  # pycocotools reads what we write
    assert coco.loadAnns(coco.getAnnIds(imgIds=[1], catIds=[7]))[0]["bbox"] == [5, 5, 35, 25]
    # padded to a square and normalised by the longer side
    x, targets, kept = DetectionBatches(back, 24, {3: 0, 7: 1}).load([by_id[1]])
    assert x.shape == (1, 3, 24, 24) and targets[0][0].tolist() == [0, 1]
    assert targets[0][1][0].tolist() == pytest.approx([6 / 48, 12 / 48, 10 / 48, 20 / 48])


def test_corrupt_annotations_are_skipped_and_counted(tmp_path):
    _write_images(tmp_path, ["a.png", "sizeless.png"])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    good = {"image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}
    raw = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 48, "height": 32},
            {"id": 2, "file_name": "gone.png", "width": 48, "height": 32},
            {"id": 3, "file_name": "sizeless.png"},
            {"id": 4, "file_name": "broken.png", "width": 48, "height": 32},
            {"file_name": "no-id.png"},
        ],
        "annotations": [
            good,
            {**good, "bbox": [-5, -5, 10, 10]},  # partly outside: clipped, kept
            {**good, "image_id": 4},  # kept here; its image fails to decode when loaded
            {"image_id": 1, "category_id": 1},
            {**good, "bbox": [1, 2, 3]},
            {**good, "bbox": ["a", 1, 2, 3]},
            {**good, "bbox": [1, 1, float("nan"), 3]},
            {**good, "bbox": [1, 1, 0, 3]},
            {**good, "bbox": [60, 40, 5, 5]},
            {**good, "category_id": 99},
            {**good, "image_id": 42},
            {**good, "image_id": 2},
            {**good, "iscrowd": 1},
            "not an object",
        ],
        "categories": [{"id": 1, "name": "cat"}, {"name": "no id"}],
    }
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    data = read_coco(tmp_path / "bad.json")
    assert data.skipped == {
        "image file missing": 1,
        "image without a size": 1,
        "malformed image entry": 1,
        "malformed category": 1,
        "missing or malformed bbox": 4,
        "box with non-positive size": 1,
        "box outside its image": 1,
        "unknown category": 1,
        "annotation of an unknown or skipped image": 2,
        "crowd (ignored in training)": 1,
        "malformed annotation": 1,
    }
    by_id = {im.id: im for im in data.images}
    assert by_id[1].boxes.tolist() == [[1, 1, 11, 11], [0, 0, 5, 5]]
    batches = DetectionBatches(data, 32)
    x, targets, kept = batches.load(data.images)
    assert [im.id for im in kept] == [1] and batches.skipped == {"unreadable image": 1}


# -- the emoji-scenes benchmark, base-only training and the CLI ------------------------------------------


@pytest.fixture(scope="module")
def det_data(tmp_path_factory):
    from mmtlab.data.emoji_scenes import build_emoji_scenes
    from mmtlab.data.emoji_scenes.detection import build_detection

    out = tmp_path_factory.mktemp("det") / "emoji-scenes"
    build_emoji_scenes(out, size=160, eval_size=16, heldout_size=8, seed=0, num_sprites=12, progress=False)
    build_detection(out, image_size=64, train=48, val=12, test=24, novel_fraction=0.25, heldout_count=4, progress=False)
    return out


def test_the_build_writes_coco_files_and_a_base_novel_split(det_data):
    meta = json.loads((det_data / "detection" / "meta.json").read_text())
    sets = {k: set(v["ids"]) for k, v in meta["sets"].items()}
    build = json.loads((det_data / "meta.json").read_text())
    assert len(sets["novel"]) == 3 and sets["base"] | sets["novel"] == set(build["vocabulary"]["ids"])
    assert sets["heldout"] <= set(build["heldout_vocabulary"]["ids"]) and len(sets["heldout"]) == 4
    test = read_coco(det_data / "detection" / "instances_detect_test.json")
    assert {test.categories[c]["set"] for im in test.images for c in im.labels} == {"base", "novel", "heldout"}
    assert all(
        test.categories[c]["frequency"] == ("f" if test.categories[c]["set"] == "base" else "r")
        for c in test.categories
    )
    for split in ("pretrain", "val", "test", "heldout"):  # every split of the build, in COCO format too
        coco = read_coco(det_data / f"instances_{split}.json")
        assert not coco.skipped and len(coco.images) == build["counts"][split]["images"]


def test_novel_categories_are_absent_from_detection_training(det_data, tmp_path):
    meta = json.loads((det_data / "detection" / "meta.json").read_text())
    train = read_coco(det_data / "detection" / "instances_detect_train.json")
    base = {i + 1 for i in meta["sets"]["base"]["ids"]}
    assert set(train.categories) == base  # not even listed
    assert {int(c) for im in train.images for c in im.labels} <= base
    check_base_only(train, sorted(base))
    test = read_coco(det_data / "detection" / "instances_detect_test.json")
    with pytest.raises(NovelInTraining):
        check_base_only(test, sorted(base))
    with pytest.raises(NovelInTraining):  # a novel name among the queries
        check_base_only(train, sorted(base) + [meta["sets"]["novel"]["ids"][0] + 1])
    from mmtlab.train.detect import finetune_detect

    run = _tiny_run(det_data, tmp_path)
    with pytest.raises(NovelInTraining):  # the trainer refuses a file with novel boxes
        test_file = det_data / "detection" / "instances_detect_test.json"
        finetune_detect(run, tmp_path / "det", steps=1, annotations=test_file, progress=False)


def _tiny_run(data, tmp_path):
    from mmtlab.config import load_config
    from mmtlab.train.loop import train

    run = tmp_path / "run"
    train(load_config(tiny_run_config(data, steps=3, checkpoint_every=3)), run, progress=False)
    return run


def test_detector_starts_from_the_pretrained_space_and_keeps_its_text_side(det_data, tmp_path):
    import mmtlab
    from mmtlab.train.detect import finetune_detect

    run = _tiny_run(det_data, tmp_path)
    det = mmtlab.load_detector(finetune_detect(run, steps=4, batch_size=8, lr=1e-2, progress=False))
    pre = mmtlab.load(run)
    tokens, mask = pre.tokenizer(["a picture of a cat.", "a dog"])
    assert torch.equal(det.embed_queries(tokens, mask), pre.encode_text(tokens, mask))  # frozen text side
    moved = [k for k, v in pre.state_dict().items() if not torch.equal(v, det.backbone.state_dict()[k])]
    assert any(k.startswith("image_embed") for k in moved)  # the image tower was fine-tuned
    from mmtlab.models.detector import Detector

    fresh = Detector(pre, 64)  # an untrained head predicts the patch under each token
    with torch.no_grad():
        out = fresh(torch.zeros(1, 3, 64, 64), torch.nn.functional.normalize(torch.randn(2, 16), dim=-1))
    assert out["boxes"][0, 0].tolist() == pytest.approx([1 / 8, 1 / 8, 1 / 4, 1 / 4], abs=1e-3)
    assert torch.equal(fresh.class_proj.weight, pre.contrastive.image_proj.weight)


def test_finetune_eval_and_detect_cli(det_data, tmp_path):
    run = _tiny_run(det_data, tmp_path)
    out = invoke("eval", "detect", run, "--finetune-steps", 3, "--threads", 1)
    assert "novel" in out and "heldout" in out
    result = json.loads((run / "eval" / "detect.json").read_text())
    assert set(result["ap"]) == {"all", "base", "novel", "heldout", "class_agnostic"} and result["n_images"] == 24
    assert result["trained_on"]["settings"]["steps"] == 3 and result["ap"]["novel"]["boxes"] > 0
    image = tmp_path / "scene.png"
    shutil.copy(det_data / "detection" / "images" / "detect_test" / "detect_test_0000000.png", image)
    out = invoke("detect", run, "--image", image, "--queries", "cat, red apple", "--threshold", 0)
    assert (tmp_path / "scene_detect.png").exists() and "boxes at score" in out
    invoke("finetune", "detect", run, "--out", tmp_path / "det", "--steps", 2, "--batch-size", 4, "--threads", 1)
    info = json.loads((tmp_path / "det" / "detector.json").read_text())
    assert info["settings"]["steps"] == 2 and info["image_size"] == 64 and len(info["base_categories"]) == 9
    assert len((tmp_path / "det" / "metrics.jsonl").read_text().splitlines()) == 1


def test_detect_is_refused_for_a_family_without_a_text_side():
    from mmtlab.families import family

    assert "detect" in family("mammut").evals and "detect" in family("encoder").evals
    assert "detect" not in family("data2vec").evals and "detect" not in family("flamingo").evals


def test_fast_nms_suppresses_overlaps_within_a_class_only():
    from mmtlab.models.detector import fast_nms

    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]])  # 0 and 1: IoU 9/11
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.5, 0.2]])
    kept = fast_nms(scores, boxes, 0.5)
    # class 0: box 1 overlaps the better box 0; class 1: box 1 is the best, box 0 is suppressed by it
    assert torch.equal(kept, torch.tensor([[0.9, 0.0], [0.0, 0.7], [0.5, 0.2]]))
    assert torch.equal(fast_nms(scores, boxes, 0.95), scores)  # IoU 0.82 < 0.95: nothing suppressed


def test_a_build_from_before_the_coco_export_gets_its_instances_files(det_data):
    from mmtlab.data.emoji_scenes import build_emoji_scenes

    before = (det_data / "instances_val.json").read_bytes()
    for p in det_data.glob("instances_*.json"):
        p.unlink()
    summary = build_emoji_scenes(
        det_data, size=160, eval_size=16, heldout_size=8, seed=0, num_sprites=12, progress=False
    )
    assert summary["skipped"] and (det_data / "instances_val.json").read_bytes() == before


@pytest.mark.parametrize("arch", ["mammut", "coca", "dual_captioner", "encoder"])
def test_every_family_with_a_text_side_makes_a_detector(arch):
    from mmtlab.config import load_config
    from mmtlab.models import build_model
    from mmtlab.models.detector import Detector

    layout = {"layout": "modality_specific"} if arch == "encoder" else {"layout_args": {"vision_depth": 2}}
    cfg = load_config({
        "model": {"arch": arch, "width": 32, "depth": 4, "heads": 4, "embed_dim": 16, "image": {"size": 32, "patch": 8},
                  "text": {"vocab_size": 40, "max_len": 20}, **layout},
        "objectives": {"contrastive": 1.0},
    })  # fmt: skip
    torch.manual_seed(0)
    det = Detector(build_model(cfg), 64)  # twice the pretraining size: an 8 x 8 grid from a 4 x 4 one
    tokens = torch.randint(5, 40, (3, 6))
    queries = det.embed_queries(tokens, torch.ones_like(tokens, dtype=torch.bool))
    out = det(torch.randn(2, 3, 64, 64), queries)
    assert out["logits"].shape == (2, 64, 3) and out["boxes"].shape == (2, 64, 4)
    loss = detection_loss(out["logits"], out["boxes"], [(torch.tensor([1]), torch.tensor([[0.5, 0.5, 0.3, 0.3]]))] * 2)
    loss["loss"].backward()
    assert det.backbone.image_embed.pos.grad is not None  # the tower is trained through the heads
    assert all(p.grad is None for p in det.text.parameters())  # the text copy is frozen
