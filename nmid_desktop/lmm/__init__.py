"""The multimodal model over OpenAI-compatible APIs: an addition to the offline app, never a requirement.

Modules, one idea each:

``client``      endpoint resolution, retries with backoff, disk cache, secret-free errors, batches
``secrets``     the API key (environment, OS keyring, private file) and redaction
``catalog``     the endpoint's models and checks of the configured model names
``cache``       responses on disk keyed by (endpoint, kind, full request)
``cost``        image/text token estimates, the price table, the budget cap
``images``      micrograph -> cropped, downscaled PNG data URL
``questions``   versioned question sets and prompt templates; question generation
``parsing``     model answers -> labels, rankings, description rows
``describe``    structured descriptions (visual question answering)
``predict``     few-shot prediction from retrieved demonstrations
``synthesize``  synthetic images from descriptions, pending review

Nothing here imports Qt or torch, and nothing touches the network until a
function that calls the endpoint is used.
"""

from __future__ import annotations

from nmid_desktop.core.config import LmmSettings


def endpoint_configured(lmm: LmmSettings) -> bool:
    """True when a base URL or an API key is configured (otherwise the app is offline)."""
    from nmid_desktop.lmm.client import resolve_endpoint

    return resolve_endpoint(lmm) is not None
