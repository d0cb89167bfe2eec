"""Synthetic images: prompt from stored answers, b64_json images into the library, flagged and pending review."""

from __future__ import annotations

import pytest
from fake_openai_server import Reply

from nmid_desktop.core.errors import NmidError
from nmid_desktop.core.jobs import run_job
from nmid_desktop.core.store.base import DescriptionRecord, DescriptionRow, ImageFilter
from nmid_desktop.lmm.client import MalformedResponseError
from nmid_desktop.lmm.cost import BudgetExceeded
from nmid_desktop.lmm.parsing import REASONING
from nmid_desktop.lmm.synthesize import synthesize_images

IMAGES = "/v1/images/generations"


@pytest.fixture
def described(library):
    image = library.images()[0]
    library.add_description(
        DescriptionRecord(
            image.id,
            "vision-1",
            "describe-v1/sem-nanomaterials-v1/abcd1234",
            [
                DescriptionRow("Basics", REASONING, "I think about the hidden reasoning."),
                DescriptionRow("Basics", "What is shown?", "A steel surface with fine cracks."),
                DescriptionRow("Surface", "Texture?", "Rough, with a network of thin dark lines."),
            ],
        )
    )
    return image


def test_synthetic_images_enter_the_library_flagged_linked_and_pending(server, library, described, settings, client, prices) -> None:
    result = run_job(synthesize_images(library, described.id, 3, settings, client=client, prices=prices))
    assert len(result.image_ids) == 3 and result.duplicates == 0
    for new_id in result.image_ids:
        record = library.get_image(new_id)
        assert record.synthetic and record.source_image_id == described.id
        assert record.label == described.label and record.label_source == "synthetic"
        assert record.review == "pending" and record.label_model == "image-1"
        assert record.path.is_file() and record.width == 32
    sent = server.calls(IMAGES)[0].body
    assert sent["model"] == "image-1" and sent["n"] == 3 and sent["response_format"] == "b64_json"
    assert "A steel surface with fine cracks." in sent["prompt"]
    assert "Rough, with a network of thin dark lines." in sent["prompt"]
    assert f'class "{described.label}"' in sent["prompt"]
    assert "hidden reasoning" not in sent["prompt"]  # only answers describe the image
    assert "scanning electron micrographs of nanomaterials" in sent["prompt"]  # the question set's domain
    assert library.total_cost() == pytest.approx(0.15)  # 3 x $0.05
    # pending synthetic images are not demonstrations
    assert all(i not in dict(library.labelled()) for i in result.image_ids)


def test_gpt_image_models_get_no_response_format(server, library, described, settings, client, prices) -> None:
    server.models.append({"id": "gpt-image-1", "object": "model", "created": 1, "owned_by": "openai"})
    settings.lmm.image_model = "gpt-image-1"
    run_job(synthesize_images(library, described.id, 1, settings, client=client, prices=prices, quality="low"))
    sent = server.calls(IMAGES)[0].body
    assert "response_format" not in sent and sent["quality"] == "low"


def test_asking_again_makes_new_images_not_cached_copies(server, library, described, settings, client, prices) -> None:
    run_job(synthesize_images(library, described.id, 2, settings, client=client, prices=prices))
    server.script(IMAGES, Reply(body={"created": 1, "data": [{"b64_json": _png(200)}, {"b64_json": _png(201)}]}))
    second = run_job(synthesize_images(library, described.id, 2, settings, client=client, prices=prices))
    assert len(server.calls(IMAGES)) == 2
    assert len(second.image_ids) == 2
    assert library.count_images(ImageFilter(synthetic=True)) == 4


def _png(seed: int) -> str:
    from fake_openai_server import png_b64

    return png_b64(24, seed)


def test_a_dry_run_shows_the_prompt_and_cost_and_sends_nothing(server, library, described, settings, prices) -> None:
    result = run_job(synthesize_images(library, described.id, 12, settings, dry_run=True, prices=prices))
    assert result.dry_run and server.requests == []
    assert result.estimate.calls == 2  # at most 10 images per call
    assert result.estimate.cost_usd == pytest.approx(0.6)
    assert "fine cracks" in result.prompt


def test_synthesis_needs_a_described_labelled_real_image(library, settings, prices) -> None:
    image = library.images()[1]
    with pytest.raises(NmidError, match="no description yet: run `nmid describe"):
        run_job(synthesize_images(library, image.id, 1, settings, prices=prices))
    with pytest.raises(NmidError, match="between 1 and 100"):
        run_job(synthesize_images(library, image.id, 0, settings, prices=prices))


def test_synthesis_respects_the_budget(server, library, described, settings, client, prices) -> None:
    settings.lmm.budget_usd = 0.1
    with pytest.raises(BudgetExceeded):
        run_job(synthesize_images(library, described.id, 3, settings, client=client, prices=prices))
    assert server.calls(IMAGES) == []


def test_url_answers_are_refused_clearly(server, library, described, settings, client, prices) -> None:
    server.script(IMAGES, Reply(body={"created": 1, "data": [{"url": "https://example.invalid/x.png"}]}))
    with pytest.raises(MalformedResponseError, match="b64_json"):
        run_job(synthesize_images(library, described.id, 1, settings, client=client, prices=prices))
    assert library.count_images(ImageFilter(synthetic=True)) == 0
