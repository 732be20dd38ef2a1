"""Cross-modal input ablation: the Flickr30k Entities format, alignment, feature replacement, and
the diagnostic end to end."""

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_run_config
from typer.testing import CliRunner

from mmtlab.config import ConfigError, load_config
from mmtlab.data.boxes import box_geometry
from mmtlab.data.formats.flickr30k_entities import EXPORT_DIR, load_entities, read_image, write_image
from mmtlab.data.regions import Regions, RegionSet
from mmtlab.diagnostics import ablation as ab
from mmtlab.models import build_model
from mmtlab.models.regions import global_region_feature

# --------------------------------------------------------------------------- Flickr30k Entities

# Written the way the real dataset is: space-separated tokens, several types on one entity, a
# non-visual entity (EN#0), a scene entity, a box shared by two entities, 1-based inclusive pixels.
SENTENCES = """\
[/EN#10/people A woman] in [/EN#11/clothing a red coat] walks [/EN#12/animals two dogs] along [/EN#13/scene the beach] .
[/EN#10/people/other Someone] holds [/EN#14/other a leash] while [/EN#0/notvisual nobody] watches .
"""
ANNOTATIONS = """\
<annotation>
\t<folder>flickr30k_images</folder>
\t<filename>42.jpg</filename>
\t<source><database>Flickr30k Entities</database></source>
\t<size><width>500</width><height>375</height><depth>3</depth></size>
\t<segmented>0</segmented>
\t<object><name>10</name><bndbox><xmin>101</xmin><ymin>21</ymin><xmax>200</xmax><ymax>300</ymax></bndbox></object>
\t<object><name>11</name><name>10</name><bndbox><xmin>111</xmin><ymin>81</ymin><xmax>190</xmax><ymax>200</ymax></bndbox></object>
\t<object><name>12</name><bndbox><xmin>1</xmin><ymin>251</ymin><xmax>60</xmax><ymax>375</ymax></bndbox></object>
\t<object><name>12</name><bndbox><xmin>61</xmin><ymin>261</ymin><xmax>120</xmax><ymax>375</ymax></bndbox></object>
\t<object><name>13</name><nobndbox>0</nobndbox><scene>1</scene></object>
\t<object><name>14</name><nobndbox>1</nobndbox><scene>0</scene></object>
</annotation>
"""


def write_fixture(root: Path, image_id: str = "42", sentences: str = SENTENCES, annotations: str = ANNOTATIONS):
    (root / "Sentences").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "Sentences" / f"{image_id}.txt").write_text(sentences)
    (root / "Annotations" / f"{image_id}.xml").write_text(annotations)


def test_flickr30k_entities_format_parsing(tmp_path):
    write_fixture(tmp_path)
    img = read_image(tmp_path, "42")
    assert (img.width, img.height) == (500, 375)
    first, second = img.sentences
    assert first.text == "A woman in a red coat walks two dogs along the beach ."
    for p in first.phrases + second.phrases:
        assert first.text[p.start : p.end] == p.text or second.text[p.start : p.end] == p.text
    assert [p.text for p in first.phrases] == ["A woman", "a red coat", "two dogs", "the beach"]
    assert [(p.entity, p.types) for p in second.phrases] == [
        ("10", ("people", "other")),
        ("14", ("other",)),
        ("0", ("notvisual",)),
    ]
    # 1-based inclusive pixels -> 0-based with exclusive x2/y2; a box with two names serves both.
    assert img.boxes["11"] == [(110.0, 80.0, 190.0, 200.0)]
    assert img.boxes["10"] == [(100.0, 20.0, 200.0, 300.0), (110.0, 80.0, 190.0, 200.0)]
    assert len(img.boxes["12"]) == 2
    assert img.scene == {"13"} and img.nobox == {"14"}
    # Only phrases with at least one box are used by the diagnostic.
    rec = type("Rec", (), {"path": tmp_path / "images" / "42.jpg"})()
    phrases, counts = ab.grounded_phrases([rec], load_entities(tmp_path))
    assert [(p.caption[p.start : p.end]) for p in phrases] == ["A woman", "a red coat", "two dogs", "Someone"]
    assert counts["phrases_without_boxes"] == 3  # the beach (scene), a leash (no box), nobody (not visual)


def test_corrupt_annotation_files_are_skipped_and_reported(tmp_path):
    write_fixture(tmp_path)
    write_fixture(tmp_path, "43", annotations="<annotation><size>")
    (tmp_path / "Sentences" / "44.txt").write_text("[/EN#1/people A man] .\n")  # no XML
    found = load_entities(tmp_path)
    assert set(found.images) == {"42"} and set(found.skipped) == {"43", "44"}
    assert "43.xml" in found.skipped["43"]
    with pytest.raises(FileNotFoundError, match="not a Flickr30k Entities root"):
        load_entities(tmp_path / "nowhere")


def test_writer_is_the_readers_inverse(tmp_path):
    caption = "Two cats, and the cat on the left of a dog."
    phrases = [
        {"start": 0, "end": 8, "box_indices": [0, 1]},
        {"start": 14, "end": 33, "box_indices": [0]},
        {"start": 37, "end": 42, "box_indices": [2]},
    ]
    boxes = [[1, 2, 20, 30], [30, 2, 50, 30], [40, 40, 64, 64]]
    write_image(tmp_path, "x", filename="x.png", width=64, height=64, captions=[caption], phrases=[phrases],
                boxes=boxes, types=["animals", "animals", "animals"])  # fmt: skip
    img = read_image(tmp_path, "x")
    assert img.sentences[0].text == caption
    got = img.sentences[0].phrases
    assert [(p.start, p.end) for p in got] == [(p["start"], p["end"]) for p in phrases]
    for p, want in zip(got, phrases):
        assert [list(b) for b in p.boxes] == [boxes[i] for i in want["box_indices"]]
    with pytest.raises(ValueError, match="brackets"):
        bad = [[{"start": 3, "end": 6, "box_indices": [0]}]]
        write_image(tmp_path, "y", filename="y.png", width=8, height=8, captions=["a [cat]"], phrases=bad,
                    boxes=[[0, 0, 4, 4]], types=["x"])  # fmt: skip


def test_build_exports_its_grounding_in_flickr30k_entities_format(tiny_data):
    from mmtlab.data.formats.karpathy import read_karpathy

    records = read_karpathy(tiny_data / "dataset_emoji_scenes.json", split="test")
    found = load_entities(tiny_data / EXPORT_DIR, [r.path.stem for r in records])
    assert not found.skipped and len(found.images) == len(records)
    n = 0
    for r in records:
        img = found.images[r.path.stem]
        assert [s.text for s in img.sentences] == r.captions
        for sent, want in zip(img.sentences, r.phrases):
            assert [(p.start, p.end) for p in sent.phrases] == [(w["start"], w["end"]) for w in want]
            for p, w in zip(sent.phrases, want):
                assert [list(b) for b in p.boxes] == [[float(v) for v in r.boxes[i]] for i in w["box_indices"]]
                n += 1
    assert n > 50


def test_a_build_without_the_export_is_exported_on_the_fly(tiny_data, tmp_path):
    from mmtlab.data.formats.karpathy import read_karpathy
    from mmtlab.diagnostics.runs import entities_root

    records = read_karpathy(tiny_data / "dataset_emoji_scenes.json", split="val")
    ids = [r.path.stem for r in records]
    with entities_root(None, tmp_path / "missing", records) as root:
        fresh = load_entities(root, ids)
    built = load_entities(tiny_data / EXPORT_DIR, ids)
    assert not fresh.skipped and fresh.images == built.images
    assert not root.exists()  # a temporary export
    # The build exports the eval splits only; the pretrain split's grounding is exported when asked for.
    pretrain = read_karpathy(tiny_data / "dataset_emoji_scenes.json", split="pretrain")[:20]
    with entities_root(None, tiny_data / EXPORT_DIR, pretrain) as root:
        assert root != tiny_data / EXPORT_DIR
        assert len(load_entities(root, [r.path.stem for r in pretrain]).images) == 20


# ------------------------------------------------------------------------------------ alignment


def test_iou_and_iot_alignment_against_hand_computed_boxes():
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    regions = torch.tensor(
        [
            [0.0, 0.0, 5.0, 10.0],  # inside, half of it: IoT 0.5, IoU 0.5
            [0.0, 0.0, 20.0, 20.0],  # covers all of it: IoT 1.0, IoU 0.25
            [2.0, 2.0, 8.0, 8.0],  # a 6x6 piece inside: IoT 0.36, IoU 0.36
            [5.0, 0.0, 15.0, 10.0],  # half overlapping: IoT 0.5, IoU 50/150
            [30.0, 30.0, 40.0, 40.0],  # elsewhere
        ]
    )
    assert ab.align(regions, target, "iot", 0.4).tolist() == [True, True, False, True, False]
    assert ab.align(regions, target, "iou", 0.4).tolist() == [True, False, False, False, False]
    assert ab.align(regions, target, "iou", 0.3).tolist() == [True, False, True, True, False]
    # Strictly above the threshold, as in the paper's code.
    assert ab.align(regions, target, "iot", 0.5).tolist() == [False, True, False, False, False]
    # The language-for-vision target: the aligned region with the highest IoU (not the highest IoT).
    batch = replace(random_regions(1, 5), boxes=regions[None], mask=torch.ones(1, 5, dtype=torch.bool))
    phrase = ab.GroundedPhrase(0, "c", 0, 1, ((0.0, 0.0, 10.0, 10.0),))
    aligned, target_ix = ab.aligned_regions(batch, [phrase], "iot", 0.4)
    assert aligned[0].tolist() == [True, True, False, True, False] and target_ix.tolist() == [0]
    far = ab.GroundedPhrase(0, "c", 0, 1, ((50.0, 50.0, 60.0, 60.0),))
    assert ab.aligned_regions(batch, [far], "iot", 0.5)[1].tolist() == [-1]
    with pytest.raises(ValueError, match="iot, iou"):
        ab.align(regions, target, "giou")


def test_patches_overlapping_a_box():
    # A 4x4 grid of 16 px patches on a 64 px image.
    got = ab.overlapping_patches(4, 64, 64, [(10.0, 10.0, 20.0, 20.0)])
    want = torch.zeros(4, 4, dtype=torch.bool)
    want[0:2, 0:2] = True
    assert torch.equal(got, want)
    exact = ab.overlapping_patches(4, 64, 64, [(16.0, 16.0, 32.0, 32.0)])  # touching edges is no overlap
    assert exact.nonzero().tolist() == [[1, 1]]
    two = ab.overlapping_patches(4, 64, 64, [(0.0, 48.0, 16.0, 64.0), (48.0, 0.0, 64.0, 16.0)])
    assert two.nonzero().tolist() == [[0, 3], [3, 0]]  # rows are y, columns x


def test_patch_ablation_follows_the_centre_crop(tmp_path):
    """A 96x64 image is read as the 32x32 centre crop of its 48x32 resize: 8 px of the resize
    (16 px of the original) are cut off on each side, and patches are 8 px of the crop."""
    from PIL import Image

    from mmtlab.data.pairs import ImageCache, load_image

    path = tmp_path / "wide.png"
    pixels = torch.zeros(64, 96, 3, dtype=torch.uint8)
    pixels[16:48, 48:80] = 255  # a white object at (48, 16, 80, 48) in the original
    Image.fromarray(pixels.numpy()).save(path)
    crop = ab.boxes_in_crop([(48.0, 16.0, 80.0, 48.0)], 96, 64, 32)
    assert crop.tolist() == [[16.0, 8.0, 32.0, 24.0]]
    loaded = load_image(path, 32)[0]
    assert (loaded[10:22, 18:30] == 255).all() and (loaded[:, :14] == 0).all()  # load_image agrees
    model = tiny_model(patches=True)  # 32 px images, 8 px patches: a 4x4 grid
    rec = type("Rec", (), {"path": path})()
    inputs = ab.VisualInputs(model, ImageCache([rec], 32), [rec], "iot", 0.5)
    # (70, 0, 90, 6) reaches into the cut-off right margin: only x in [70, 80) of it is seen, which
    # is x in [27, 32) of the crop, the last patch column. A grid over the whole image (24 x 16 px
    # cells) would also have ablated column 2.
    phrases = [
        ab.GroundedPhrase(0, "c", 0, 1, ((70.0, 0.0, 90.0, 6.0),)),
        ab.GroundedPhrase(0, "c", 0, 1, ((0.0, 0.0, 14.0, 64.0),)),  # all of it cut off
        ab.GroundedPhrase(0, "c", 0, 1, ((48.0, 16.0, 80.0, 48.0),)),
    ]
    _, where = inputs.batch(phrases)
    assert where[0].nonzero().tolist() == [[0, 3]]
    assert not where[1].any()
    assert where[2].nonzero().tolist() == [[1, 2], [1, 3], [2, 2], [2, 3]]


# ------------------------------------------------------------------------- replacement, models

FEAT, CLASSES, VOCAB, MASK_ID = 8, 5, 50, 4


def random_regions(b, r=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(b, r, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + torch.rand(b, r, 2, generator=g) * 20 + 4], -1)
    return Regions(
        features=torch.rand(b, r, FEAT, generator=g),
        geometry=box_geometry(boxes, 64, 64),
        mask=torch.ones(b, r, dtype=torch.bool),
        boxes=boxes,
        gold=torch.full((b, r), -1),
        classifier_weight=torch.randn(CLASSES, FEAT, generator=g),
        classifier_bias=torch.randn(CLASSES, generator=g),
    )


def tiny_model(layout="merged", patches=False):
    image = {"size": 32, "patch": 8} if patches else {"input": "regions", "region_dim": FEAT, "region_classes": CLASSES}
    objectives = {"mlm": 1.0} if patches else {"mlm": 1.0, "mrm_kl": 1.0}
    cfg = load_config(
        {
            "model": {"layout": layout, "width": 32, "depth": 2, "heads": 4, "embed_dim": 16, "image": image,
                      "text": {"vocab_size": VOCAB, "max_len": 16}},
            "objectives": objectives,
        }
    )  # fmt: skip
    torch.manual_seed(0)
    return build_model(cfg).eval()


def some_tokens(b=2, n=9, seed=0):
    tokens = torch.randint(5, VOCAB, (b, n), generator=torch.Generator().manual_seed(seed))
    tokens[:, 0], tokens[:, -1] = 2, 3
    return tokens, torch.ones(b, n, dtype=torch.bool)


def test_average_feature_replacement_recomputes_the_global_region():
    regions = random_regions(2)
    mean = torch.rand(FEAT)
    where = torch.zeros(2, 6, dtype=torch.bool)
    where[0, [1, 4]] = True
    out = ab.replace_regions(regions, where, mean)
    assert torch.equal(out.features[0, 1], mean) and torch.equal(out.features[0, 4], mean)
    assert torch.equal(out.features[~where], regions.features[~where])
    assert torch.equal(out.boxes, regions.boxes) and torch.equal(out.geometry, regions.geometry)  # boxes are kept
    # The [IMG] feature is the mean of the (new) region features, computed by the model.
    expected = torch.cat([regions.features[0, [0, 2, 3, 5]], mean[None], mean[None]]).mean(0)
    torch.testing.assert_close(global_region_feature(out)[0], expected)
    torch.testing.assert_close(global_region_feature(out)[1], regions.features[1].mean(0))
    assert not torch.allclose(global_region_feature(out)[0], global_region_feature(regions)[0])


def region_inputs(model, regions):
    rs = RegionSet(
        features=regions.features, boxes=regions.boxes, valid=regions.mask, gold=regions.gold,
        image_wh=torch.full((len(regions), 2), 64.0), ok=torch.ones(len(regions), dtype=torch.bool),
        classifier_weight=regions.classifier_weight, classifier_bias=regions.classifier_bias,
        class_sprite_ids=torch.arange(CLASSES), mean_feature=regions.features[regions.mask].mean(0),
    )  # fmt: skip
    return ab.VisualInputs(model, rs, None, "iot", 0.5)


def test_ablating_nothing_changes_nothing_and_all_removes_the_image():
    model = tiny_model()
    tokens, mask = some_tokens()
    a, b = random_regions(2, seed=1), random_regions(2, seed=2)
    b = replace(b, boxes=a.boxes, geometry=a.geometry)  # other images, same boxes
    inputs = region_inputs(model, a)
    aligned = torch.zeros(2, 6, dtype=torch.bool)
    aligned[:, 0] = True
    with torch.no_grad():
        intact = model(images=a, tokens=tokens, text_mask=mask)["text"]
        with inputs.ablated(a, aligned, "none") as same:
            assert same is a
        nothing = ab.replace_regions(a, torch.zeros_like(aligned), inputs.source.mean_feature)
        assert torch.equal(model(images=nothing, tokens=tokens, text_mask=mask)["text"], intact)
        with inputs.ablated(a, aligned, "object") as obj:
            assert not torch.equal(model(images=obj, tokens=tokens, text_mask=mask)["text"], intact)
        with inputs.ablated(a, aligned, "all") as all_a, inputs.ablated(b, aligned, "all") as all_b:
            out_a = model(images=all_a, tokens=tokens, text_mask=mask)["text"]
            out_b = model(images=all_b, tokens=tokens, text_mask=mask)["text"]
    assert torch.equal(out_a, out_b)  # nothing of the images' content is left


def test_patch_ablation_nothing_and_all():
    model = tiny_model(patches=True)
    tokens, mask = some_tokens()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    mean = ab.mean_patch_embedding(model, torch.cat([x, y]))
    with torch.no_grad():
        proj = model.image_embed.proj(torch.cat([x, y]))
        torch.testing.assert_close(mean, proj.mean(dim=(0, 2, 3)))
        intact = model(images=x, tokens=tokens, text_mask=mask)["text"]
        none = torch.zeros(2, 4, 4, dtype=torch.bool)
        with ab.patches_replaced(model, none, mean):
            assert torch.equal(model(images=x, tokens=tokens, text_mask=mask)["text"], intact)
        with ab.patches_replaced(model, ~none, mean):
            out_x = model(images=x, tokens=tokens, text_mask=mask)["text"]
            out_y = model(images=y, tokens=tokens, text_mask=mask)["text"]
        assert torch.equal(out_x, out_y) and not torch.equal(out_x, intact)
        assert torch.equal(model(images=x, tokens=tokens, text_mask=mask)["text"], intact)  # the hook is gone


def test_masking_every_word_makes_the_image_side_independent_of_the_words():
    model = tiny_model()
    t = model.cfg.text
    regions = random_regions(1)
    (t1, mask), (t2, _) = some_tokens(1, seed=1), some_tokens(1, seed=2)
    inside = torch.zeros_like(mask)
    inside[0, 2:4] = True
    assert torch.equal(ab.ablate_text(t1, mask, inside, "none", t), t1)
    phrase = ab.ablate_text(t1, mask, inside, "phrase", t)
    assert (phrase[inside] == t.mask_id).all() and torch.equal(phrase[~inside], t1[~inside])
    a1, a2 = ab.ablate_text(t1, mask, inside, "all", t), ab.ablate_text(t2, mask, inside, "all", t)
    assert a1[0, 0] == t.cls_id and a1[0, -1] == t.sep_id
    with torch.no_grad():
        s1 = model(images=regions, tokens=a1, text_mask=mask)["image"]
        s2 = model(images=regions, tokens=a2, text_mask=mask)["image"]
    assert torch.equal(s1, s2)


class _WordTokenizer:
    """Whitespace words as token ids 5.. (tests need exact spans, not a trained vocabulary)."""

    special_ids = (0, 1, 2, 3, 4)

    def with_spans(self, texts, spans):
        rows, inside = [], []
        for text, (start, end) in zip(texts, spans):
            ids, flags, pos = [2], [False], 0
            for w in text.split(" "):
                a = text.index(w, pos)
                pos = a + len(w)
                ids.append(5 + sum(map(ord, w)) % (VOCAB - 5))
                flags.append(a < end and pos > start)
            rows.append(ids + [3])
            inside.append(flags + [False])
        n = max(map(len, rows))
        tok = torch.zeros(len(rows), n, dtype=torch.long)
        ins = torch.zeros(len(rows), n, dtype=torch.bool)
        for i, (r, f) in enumerate(zip(rows, inside)):
            tok[i, : len(r)], ins[i, : len(f)] = torch.tensor(r), torch.tensor(f)
        return tok, tok != 0, ins


def test_bits_are_nats_over_ln2_and_match_a_reference_mlm_loss():
    assert ab.bits(3 * math.log(2)) == pytest.approx(3.0)
    model, tok = tiny_model(), _WordTokenizer()
    regions = random_regions(2)
    inputs = region_inputs(model, regions)
    phrases = [
        ab.GroundedPhrase(0, "a cat on a mat", 2, 5, (tuple(regions.boxes[0, 0].tolist()),)),
        ab.GroundedPhrase(1, "two red dogs", 0, 7, (tuple(regions.boxes[1, 2].tolist()),)),
    ]
    got = ab.vision_for_language(model, tok, phrases, inputs, batch_size=1, progress=False)
    tokens, mask, inside = tok.with_spans([phrases[1].caption], [(0, 7)])
    with torch.no_grad():
        states = model(images=regions[1:2], tokens=tokens.masked_fill(inside, MASK_ID), text_mask=mask)["text"]
        logp = F.log_softmax(model.mlm_logits(states[0]).float(), -1)
    nats = -sum(logp[j, tokens[0, j]] for j in inside[0].nonzero().flatten().tolist())
    assert got["tokens"].tolist() == [1, 2]
    assert got["none"][1] == pytest.approx(float(nats) / math.log(2), rel=1e-5)


def test_a_dual_encoder_text_stream_never_uses_the_image():
    """modality_specific layers: text never attends to regions, so no ablation moves its MLM loss."""
    model, tok = tiny_model("modality_specific"), _WordTokenizer()
    regions = random_regions(2)
    phrases = [ab.GroundedPhrase(i, "a cat on a mat", 2, 5, (tuple(regions.boxes[i, 0].tolist()),)) for i in (0, 1)]
    r = ab.run_ablation(model, tok, phrases, region_inputs(model, regions), n_bootstrap=50, progress=False)
    v = r["vision_for_language"]
    assert v["none"]["bits"] == v["object"]["bits"] == v["all"]["bits"]
    lv = r["language_for_vision"]["silver"]
    assert lv["none"]["bits"] == lv["phrase"]["bits"] == lv["all"]["bits"]  # nor regions the text


def test_language_for_vision_losses_match_a_reference_kl_and_cross_entropy():
    """silver = KL(detector || model) and gold = cross-entropy to the annotated class, in bits, at
    the target region with the aligned regions hidden as in MRM, recomputed here by hand."""
    model, tok = tiny_model(), _WordTokenizer()
    # Six disjoint 20x20 boxes: a phrase box equal to one of them aligns with that region only.
    xy = torch.tensor([[x, y] for y in (0.0, 30.0) for x in (0.0, 22.0, 44.0)])
    boxes = torch.cat([xy, xy + 20.0], -1)[None].repeat(2, 1, 1)
    gold = torch.full((2, 6), -1)
    gold[0, 4] = 3  # the target of the first phrase covers a sprite the detector knows (class 3)
    regions = replace(random_regions(2), boxes=boxes, geometry=box_geometry(boxes, 64, 64), gold=gold)
    inputs = region_inputs(model, regions)
    caption = "a cat on a mat"
    phrases = [
        ab.GroundedPhrase(0, caption, 2, 5, (tuple(boxes[0, 4].tolist()),)),
        ab.GroundedPhrase(1, caption, 9, 14, (tuple(boxes[1, 1].tolist()),)),
    ]
    got = ab.language_for_vision(model, tok, phrases, inputs.source, "iot", 0.5, 2, False)
    head = model.mrm
    for i, (p, target) in enumerate(zip(phrases, (4, 1))):
        tokens, mask, inside = tok.with_spans([p.caption], [(p.start, p.end)])
        words = torch.zeros_like(mask)
        words[0, 1:-1] = True  # all but [CLS] and [SEP]
        features = regions.features[i : i + 1].clone()
        features[0, target] = 0.0
        chosen = torch.zeros(1, 6, dtype=torch.bool)
        chosen[0, target] = True
        hidden = replace(regions[i : i + 1], features=features, masked=chosen)
        detector = regions.features[i, target] @ regions.classifier_weight.T + regions.classifier_bias
        for a, text in (("none", tokens), ("phrase", tokens.masked_fill(inside, MASK_ID)),
                        ("all", tokens.masked_fill(words, MASK_ID))):  # fmt: skip
            with torch.no_grad():
                state = model(images=hidden, tokens=text, text_mask=mask)["image"][0, target + 1]
                logp = F.log_softmax(head.classes(head.transform(state)), -1)
            kl = F.kl_div(logp, F.log_softmax(detector, -1), log_target=True, reduction="sum")
            assert got[f"silver_{a}"][i] == pytest.approx(float(kl) / math.log(2), rel=1e-5)
            if i == 0:
                assert got[f"gold_{a}"][0] == pytest.approx(-float(logp[3]) / math.log(2), rel=1e-5)
    assert math.isnan(got["gold_none"][1])  # no annotated object under the second target
    assert got["silver_none"][0] != got["silver_phrase"][0]  # the merged model reads the text


def test_phrases_without_tokens_are_dropped_in_both_directions():
    """A phrase cut off by the caption length limit has no tokens: "phrase" would mask nothing."""
    model, tok = tiny_model(), _WordTokenizer()
    regions = random_regions(2)
    box = (tuple(regions.boxes[0, 0].tolist()),)
    kept = ab.GroundedPhrase(0, "a cat on a mat", 2, 5, box)
    cut = ab.GroundedPhrase(0, "a cat on a mat", 40, 45, box)  # past the (truncated) caption's end
    lv = ab.language_for_vision(model, tok, [kept, cut], region_inputs(model, regions).source, "iot", 0.5, 2, False)
    assert not math.isnan(lv["silver_none"][0]) and math.isnan(lv["silver_none"][1])
    r = ab.run_ablation(model, tok, [kept, cut], region_inputs(model, regions), n_bootstrap=10, progress=False)
    assert r["vision_for_language"]["n_phrases"] == r["language_for_vision"]["n_phrases"] == 1
    assert r["language_for_vision"]["phrases_truncated"] == 1
    assert r["language_for_vision"]["phrases_without_aligned_region"] == 0


def test_bootstrap_is_a_ratio_of_sums_with_paired_differences():
    import numpy as np

    per_token = {"none": np.array([1.0, 2.0, 3.0]), "all": np.array([2.0, 2.0, 5.0])}
    w = np.array([1, 2, 1])
    out = ab.bootstrap(per_token, w, n=200, seed=0)
    assert out["none"]["bits"] == pytest.approx((1 + 4 + 3) / 4)
    assert out["all_minus_none"]["bits"] == pytest.approx((2 + 4 + 5) / 4 - 2.0)
    lo, hi = out["all_minus_none"]["ci95"]
    assert 0.0 <= lo <= out["all_minus_none"]["bits"] <= hi  # every phrase got worse: the paired CI is >= 0


# ------------------------------------------------------------------------------- end to end


def test_text_only_needs_text_objectives():
    with pytest.raises(ConfigError, match="data.text_only"):
        load_config({"data": {"text_only": True}, "objectives": {"mlm": 1.0, "itm": 1.0}})


def test_ablate_command_end_to_end(tiny_data, tmp_path):
    from mmtlab.cli import app
    from mmtlab.train.loop import train

    cache = str(tmp_path / "regions")
    region = {"image": {"input": "regions"}, "layout": "merged", "text": {"max_len": 24}}
    cfg = tiny_run_config(tiny_data, steps=4, checkpoint_every=4)
    cfg["data"]["regions"] = {"num_regions": 4, "cache_dir": cache}
    cfg["data"]["train_split"] = "test"  # one split's regions to extract: the test is about evaluation
    cfg["model"] = {**cfg["model"], **region}
    run, text_run = tmp_path / "run", tmp_path / "text"
    train(load_config({**cfg, "objectives": {"mlm": 1.0, "mrm_kl": 1.0}}), run)
    train(load_config({**cfg, "objectives": {"mlm": 1.0}}, ["data.text_only=true"]), text_run)

    runner = CliRunner()
    args = ["ablate", str(run), "--max-phrases", "40", "--baseline", str(text_run), "--bootstrap", "100"]
    res = runner.invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    r = json.loads((run / "eval" / "ablation.json").read_text())
    assert r["n_phrases"] == 40 and r["entities"].endswith(EXPORT_DIR)
    assert r["vision_for_language"]["n_tokens"] >= 40
    assert r["language_for_vision"]["n_phrases"] > 0 and r["language_for_vision"]["silver"] is not None
    flat = {"v4l_none", "v4l_object", "v4l_all", "v4l_all_increase", "l4v_none", "l4v_phrase_increase", "text_only"}
    assert flat <= set(r)
    assert r["v4l_all_increase"] == pytest.approx(r["v4l_all"] - r["v4l_none"])
    # The baseline is evaluated on the main model's phrases and reports its own count.
    base = r["text_only_baseline"]
    assert base["same_tokenizer"] and base["n_phrases"] == r["vision_for_language"]["n_phrases"]
    assert (run / "eval" / "ablation.png").stat().st_size > 1000
    assert "language→vision" in (run / "eval" / "ablation.md").read_text()
    # The text-only model on its own: it reads no image, so the three conditions are one number.
    assert runner.invoke(app, ["ablate", str(text_run), "--bootstrap", "10"], catch_exceptions=False).exit_code == 0
    t = json.loads((text_run / "eval" / "ablation.json").read_text())
    assert t["v4l_none"] == t["v4l_object"] == t["v4l_all"] and t["language_for_vision"] is None


def test_ablate_user_errors_are_one_line(tmp_path, capsys, monkeypatch):
    import sys

    from mmtlab.cli import main

    monkeypatch.setattr(sys, "argv", ["mmtlab", "ablate", str(tmp_path), "--alignment", "giou"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: --alignment 'giou'") and len(err.splitlines()) == 1
