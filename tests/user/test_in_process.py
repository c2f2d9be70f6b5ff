"""The emulator in process (no sockets), as a user's fast tests would use it.

Written against the public API only.
"""

from __future__ import annotations

import pytest

from mts_faces import (
    AmbiguousOutcomeError,
    AuthenticationError,
    MtsFaceClient,
    RequestTimeoutError,
)
from mts_faces.emulator import AccessKey, Emulator, EmulatorConfig
from mts_faces.manifest import FaceRow
from mts_faces.registrar import Registrar


@pytest.mark.asyncio
async def test_round_trip_without_sockets_and_signatures_still_checked() -> None:
    emulator = Emulator(EmulatorConfig(qps=None))  # never started: nothing listens
    async with MtsFaceClient(**emulator.client_kwargs(in_process=True)) as client:
        face = await client.register_custom_face("stars", "li", "https://img.example/1.jpg")
        await client.tag_custom_person("stars", "li", person_name="Li")
        listing = await client.list_custom_persons("stars")
    [(category, person, stored)] = list(listing.iter_faces())
    assert (category.category_id, person.person_name, stored.face_id) == (
        "stars",
        "Li",
        face.face_id,
    )
    assert emulator.stats.accepted == 3
    wrong = {**emulator.client_kwargs(in_process=True), "access_key_secret": "not-the-secret"}
    async with MtsFaceClient(**wrong) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.list_custom_persons()
    assert info.value.code == "SignatureDoesNotMatch"


@pytest.mark.asyncio
async def test_a_late_answer_times_out_per_call_and_the_face_still_lands() -> None:
    # The service commits after 0.3 s; this call gives up after 0.05 s: an ambiguous outcome.
    emulator = Emulator(EmulatorConfig(qps=None, latency=0.3, seed=1))
    async with MtsFaceClient(**emulator.client_kwargs(in_process=True), max_retries=0) as client:
        with pytest.raises(AmbiguousOutcomeError) as info:
            await client.register_custom_face("c", "p", "https://img.example/1.jpg", timeout=0.05)
        assert isinstance(info.value.cause, RequestTimeoutError)
        assert emulator.stats.faces_stored == 0
        listing = await client.list_custom_persons("c", "p", timeout=2.0)  # waits it out
    assert [f.image_url for _, _, f in listing.iter_faces()] == ["https://img.example/1.jpg"]


@pytest.mark.asyncio
async def test_registrar_over_the_in_process_emulator_with_faults() -> None:
    config = EmulatorConfig(
        qps=None,
        access_key=AccessKey("LTAItest", "test-secret"),
        internal_error_rate=0.2,
        drop_rate=0.1,
        seed=3,
    )
    emulator = Emulator(config)
    rows = [FaceRow("lib", f"p{i // 5}", f"https://img.example/{i}.jpg") for i in range(40)]
    kwargs = emulator.client_kwargs(in_process=True, backoff_base=0.01)
    async with MtsFaceClient(**kwargs) as client:
        # Short settling: this emulator stores at once or never (no late commits).
        registrar = Registrar(client, settle=0.2, retry_backoff=0.01)
        outcomes = [outcome async for outcome in registrar.run(rows)]
    assert sum(emulator.stats.faulted.values()) > 0
    registered = {o.face_id for o in outcomes if o.status == "registered"}
    assert len(registered) >= 30
    # Each row at most once, and every FaceId reported is stored: no duplicate, none lost.
    # (A row may fail with a reason when its answers keep getting lost.)
    stored = [
        face["FaceId"]
        for category in emulator.library()["Category"]
        for person in category["Persons"]["Person"]
        for face in person["Faces"]["Face"]
    ]
    assert sorted(stored) == sorted(registered)
    assert all(o.reason for o in outcomes if o.status != "registered")
