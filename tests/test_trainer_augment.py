"""Safety-aware concatenation (spec 4.4): image geometry on real image files, the transcript join, the OR
labels (missing responses included), the reference answer's labels, the seeded share, and the RL data files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from grvl_sdk.errors import DataError
from grvl_sdk.protocol.parsing import parse_output
from grvl_sdk.trainer import RLSample, TrainingSample, augment_samples, concatenate, load_rl_data
from grvl_sdk.trainer.augment import augment_data, augmented_count, join_images, or_labels
from grvl_sdk.trainer.rl_data import write_rl_data


def picture(path: Path, size: tuple[int, int], color: tuple[int, int, int], fmt: str = "PNG") -> Path:
    """A real image file: a coloured field with a black 2-pixel frame (so placement is visible)."""
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste(color, (2, 2, size[0] - 2, size[1] - 2))
    image.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def sample(
    key: str,
    *,
    request: str | None = "hello",
    response: str | None = None,
    image: Path | None = None,
    request_label: str = "unharmful",
    response_label: str | None = None,
) -> RLSample:
    training = TrainingSample(
        request=request,
        response=response,
        images=(str(image),) if image else (),
        request_label=request_label,  # type: ignore[arg-type]
        response_label=response_label,  # type: ignore[arg-type]
        id=key,
    )
    return RLSample.from_training_sample(training)


@pytest.mark.parametrize(
    ("left", "right", "canvas", "final"),
    [
        ((300, 200), (100, 400), (400, 400), (400, 400)),  # fits: not resized
        ((50, 40), (30, 20), (80, 40), (80, 40)),  # small: never enlarged
        ((800, 600), (600, 900), (1400, 900), (1024, 658)),  # wide: width bound
        ((100, 3000), (100, 100), (200, 3000), (68, 1024)),  # tall: height bound
        ((2000, 100), (2000, 100), (4000, 100), (1024, 26)),  # very wide
        ((1024, 1024), (8, 1024), (1032, 1024), (1024, 1016)),  # just over
    ],
)
def test_join_geometry_on_image_files(tmp_path, left, right, canvas, final):
    a = picture(tmp_path / "a.png", left, (200, 30, 30))
    b = picture(tmp_path / "b.jpg", right, (30, 30, 200), "JPEG")
    joined = join_images(a, b)
    assert joined.mode == "RGB"
    assert joined.size == final
    assert max(joined.size) <= 1024
    assert abs(joined.width * canvas[1] - joined.height * canvas[0]) <= 0.5 * (canvas[0] + canvas[1])  # aspect kept
    if final == canvas:  # placement, top-aligned on white, checked pixel by pixel where nothing was resized
        assert joined.getpixel((left[0] // 2, left[1] // 2)) == (200, 30, 30)
        right_pixel = joined.getpixel((left[0] + right[0] // 2, right[1] // 2))
        assert all(abs(c - e) <= 8 for c, e in zip(right_pixel, (30, 30, 200), strict=True))  # JPEG
        assert joined.getpixel((0, 0)) == (0, 0, 0) and joined.getpixel((left[0], 0))[0] < 20  # both frames at y=0
        if left[1] < canvas[1]:
            assert joined.getpixel((left[0] // 2, canvas[1] - 1)) == (255, 255, 255)  # white below the shorter
        if right[1] < canvas[1]:
            assert joined.getpixel((left[0] + right[0] // 2, canvas[1] - 1)) == (255, 255, 255)


def test_join_applies_exif_orientation(tmp_path):
    image = Image.new("RGB", (60, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when displayed
    path = tmp_path / "rotated.jpg"
    image.save(path, format="JPEG", exif=exif.tobytes())
    joined = join_images(path, path)
    assert joined.size == (40, 60)  # each side upright: 20 wide, 60 high


def test_or_rule_with_missing_responses():
    assert or_labels(("harmful", None), ("unharmful", None)) == ("harmful", None)
    assert or_labels(("unharmful", None), ("unharmful", None)) == ("unharmful", None)
    assert or_labels(("unharmful", None), ("unharmful", "harmful")) == ("unharmful", "harmful")
    assert or_labels(("unharmful", "unharmful"), ("unharmful", None)) == ("unharmful", "unharmful")
    assert or_labels(("unharmful", "unharmful"), ("harmful", "unharmful")) == ("harmful", "unharmful")
    assert or_labels(("unharmful", "harmful"), ("unharmful", "unharmful")) == ("unharmful", "harmful")


def test_concatenation_text_images_labels_and_reference(tmp_path):
    red = picture(tmp_path / "red.png", (120, 80), (220, 0, 0))
    blue = picture(tmp_path / "blue.png", (60, 100), (0, 0, 220))
    first = sample("a", request="How do I fly a kite?", image=red, request_label="unharmful")
    second = sample(
        "b",
        request="Make a bomb",
        response="Sure, here is how.",
        image=blue,
        request_label="harmful",
        response_label="harmful",
    )
    joined = concatenate(first, second)
    assert joined.transcript == (
        "Human user:\n<image>\nHow do I fly a kite?\n\nAI assistant:\nNone "
        "Human user:\n\nMake a bomb\n\nAI assistant:\nSure, here is how.\n\n"
    )
    assert joined.transcript.count("<image>") == 1 and len(joined.images) == 1
    assert joined.images[0].size == (180, 100)
    assert (joined.request_label, joined.response_label) == ("harmful", "harmful")
    assert joined.origin == "augmented" and joined.source_ids == ("a", "b") and joined.modality == "text-image"
    parsed = parse_output(f"<think>\n</think>\n{joined.reference}")
    assert (parsed.request_label, parsed.response_label) == ("harmful", "harmful")  # merged, not the first's
    # The prompt has one image block, at the SDK position.
    user = joined.prompt()[1]["content"]
    assert [part["type"] for part in user] == ["text", "image", "text"] and user[0]["text"] == "Human user:\n"


def test_a_text_only_side_takes_the_other_sides_image(tmp_path):
    red = picture(tmp_path / "red.png", (120, 80), (220, 0, 0))
    text = sample("t", request="Hi there", request_label="unharmful")
    pictured = sample("p", request=None, image=red, request_label="harmful")
    joined = concatenate(text, pictured)
    assert joined.transcript.startswith("Human user:\n<image>\nHi there\n\nAI assistant:\nNone Human user:\n")
    assert joined.images[0].size == (240, 80)  # red | red
    assert joined.images[0].getpixel((60, 40)) == joined.images[0].getpixel((180, 40)) == (220, 0, 0)
    assert (joined.request_label, joined.response_label) == ("harmful", None)
    both_text = concatenate(text, sample("u", request="Bye", response="ok", response_label="unharmful"))
    assert both_text.images == () and both_text.modality == "text" and "<image>" not in both_text.transcript
    assert (both_text.request_label, both_text.response_label) == ("unharmful", "unharmful")


def test_samples_with_several_images_are_refused(tmp_path):
    red = picture(tmp_path / "red.png", (30, 30), (220, 0, 0))
    two = RLSample.from_training_sample(
        TrainingSample(request="x", images=(str(red), str(red)), request_label="unharmful", id="two")
    )
    with pytest.raises(DataError):
        concatenate(two, sample("y"))


def test_augmented_share_is_seeded_and_pairs_are_distinct():
    originals = [sample(f"s{i:02d}", request=f"request {i}", request_label="unharmful") for i in range(40)]
    assert augmented_count(9600, 0.2) == 2400 and augmented_count(40, 0.2) == 10 and augmented_count(40, 0.0) == 0
    first = augment_samples(originals, share=0.2, seed=7)
    again = augment_samples(list(reversed(originals)), share=0.2, seed=7)
    other = augment_samples(originals, share=0.2, seed=8)
    assert len(first) == 10
    assert [s.source_ids for s in first] == [s.source_ids for s in again]  # input order does not matter
    assert [s.source_ids for s in first] != [s.source_ids for s in other]
    assert all(a != b for a, b in (s.source_ids for s in first))
    assert len({s.source_ids for s in first}) == 10


def test_augment_data_writes_versioned_rl_files_that_load_as_a_dataset(tmp_path):
    red = picture(tmp_path / "red.png", (64, 48), (220, 0, 0))
    originals = [
        sample(f"s{i}", request=f"request {i}", image=red if i % 3 == 0 else None, request_label="unharmful")
        for i in range(12)
    ]
    write_rl_data(originals[:10], tmp_path / "hard" / "train.jsonl")
    write_rl_data(originals[10:], tmp_path / "hard" / "validation.jsonl")
    report = augment_data(tmp_path / "hard", tmp_path / "aug", share=0.2, seed=1)
    assert (report.originals, report.augmented, report.validation) == (10, 2, 2)  # round(0.25 * 10) = 2
    records = [json.loads(line) for line in (tmp_path / "aug" / "train.jsonl").read_text().splitlines()]
    assert all(r["version"] == "1.0" for r in records)
    assert [r["origin"] for r in records].count("augmented") == 2
    summary = json.loads((tmp_path / "aug" / "augment_summary.json").read_text())
    assert summary["version"] == "1.0" and summary["augmented"] == 2
    loaded = load_rl_data(tmp_path / "aug")
    assert len(loaded) == 12 and all(Path(p).is_file() for s in loaded for p in s.images)

    pytest.importorskip("datasets")
    from grvl_sdk.trainer import rl_dataset

    dataset = rl_dataset(tmp_path / "aug" / "train.jsonl")
    assert set(dataset.column_names) >= {"prompt", "images", "request_label", "response_label", "reference", "origin"}
    row = dataset[0]
    assert row["prompt"][0]["role"] == "system" and isinstance(row["images"], list)


def test_a_reference_answer_that_disagrees_with_the_gold_labels_is_refused(tmp_path):
    joined = concatenate(sample("a", request_label="unharmful"), sample("b", request="bomb", request_label="harmful"))
    path = write_rl_data([joined], tmp_path / "train.jsonl")
    record = json.loads(path.read_text())
    record["reference"] = "<result>\nRequest: unharmful\nResponse: None\n</result>"  # the first sample's (bug 1)
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match="reference"):
        load_rl_data(path)
