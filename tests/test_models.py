"""Models as data, and the rest of Veo 3.1's request surface: the catalog (built in, declared,
priced), what each model takes, retired ids, first and last frames, reference images and the seed,
each arriving on the wire exactly as the spec says.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import API_KEY, Repo, jpeg_bytes, png_bytes

from reconciler.config import Config, load_config
from reconciler.facts import ModelFacts
from reconciler.loader import load_specs
from reconciler.sim import Simulator

FAST_ENV = {"RECONCILE_RETRY_BASE": "0.05", "RECONCILE_HTTP_TIMEOUT": "5"}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    served = {**Config().models, "acme-veo-proxy": ModelFacts({"720p": 0.2}, ("720p",))}
    with Simulator(api_key=API_KEY, latency=0.1, video="standin", models=served) as server:
        yield server


def problems_of(repo: Path, spec: str, config: str = "") -> list[str]:
    (repo / "specs").mkdir(parents=True, exist_ok=True)
    (repo / "specs" / "a.yaml").write_text(spec)
    (repo / "reconcile.yaml").write_text(config)
    return [str(p) for p in load_specs(repo, load_config(repo)).problems]


HEAD = "name: a\nprompt: A kite.\n"


@pytest.mark.parametrize(
    ("spec", "config", "words"),
    [
        ("model: veo-9\n", "", "unknown model 'veo-9'; known: veo-3.1-fast-generate-001"),
        ("model: veo-9\n", "", "under `models:` in reconcile.yaml"),
        ("model: veo-3.1-lite-generate-001\nresolution: 4k\n", "", "offers 720p, 1080p, not 4k"),
        ("model: veo-3.1-lite-generate-001\nreferenceImages: [../i.png]\n", "",
         "veo-3.1-lite-generate-001 does not take 'referenceImages'"),
        ("model: acme-veo-proxy\nresolution: 1080p\n",
         "models:\n  acme-veo-proxy:\n    price: {720p: 0.2}\n    resolutions: [720p]\n",
         "acme-veo-proxy offers 720p, not 1080p"),
        ("model: acme-veo-proxy\nimage: ../i.png\n",
         "models:\n  acme-veo-proxy:\n    features: [lastFrame]\n", "does not take 'image'"),
        ("model: veo-3.1-generate-001\nlastFrame: ../i.png\n", "", "needs 'image' too"),
        ("model: veo-3.1-generate-001\nimage: ../i.png\npersonGeneration: allow_all\n", "",
         "allow_all is not allowed with an image (first frame); use allow_adult"),
        ("model: veo-3.1-generate-001\nreferenceImages: [../i.png]\ndurationSeconds: 4\n", "",
         "reference images needs 8 (or unset)"),
        ("model: veo-3.1-generate-001\nreferenceImages: [../i.png, ../i.png, ../i.png, ../i.png]\n",
         "", "list should have at most 3 items"),
        ("model: veo-3.1-generate-001\nseed: 4294967296\n", "", "less than or equal to 4294967295"),
        ("model: veo-3.1-generate-001\nseed: '7'\n", "", "seed"),
        ("model: veo-3.1-generate-001\nreferenceImages: [{image: ../i.png, referenceType: mood}]\n",
         "", "'mood' is not allowed; use one of 'asset' or 'style'"),
    ],
    ids=["unknown", "unknown-how", "lite-4k", "lite-refs", "declared-res", "declared-features",
         "lastframe-alone", "person-image", "refs-4s", "refs-4", "seed-range", "seed-string",
         "ref-type"],
)  # fmt: skip
def test_the_catalog_and_the_request_rules_are_checked_before_any_post(
    tmp_path: Path, spec: str, config: str, words: str
) -> None:
    """What a model lacks, and what the API refuses across fields, is a problem at load time."""
    (tmp_path / "i.png").write_bytes(png_bytes())  # ../i.png from specs/
    found = problems_of(tmp_path, HEAD + spec, config)
    assert any(words in p for p in found), found


def test_pricing_keeps_working_and_models_price_new_ids(tmp_path: Path) -> None:
    """`pricing:` still overrides a built-in price; `models:` declares an id with its price."""
    (tmp_path / "reconcile.yaml").write_text(
        "pricing:\n  veo-3.1-fast-generate-preview: {720p: 0.15}\n"
        "models:\n  acme-veo-proxy:\n    price: {720p: 0.20}\n    resolutions: [720p]\n"
        "    features: [image]\n"
    )
    config = load_config(tmp_path)
    assert config.price_per_second("veo-3.1-fast-generate-preview", "720p") == 0.15
    assert config.price_per_second("veo-3.1-lite-generate-001", "1080p") == 0.08
    assert config.price_per_second("acme-veo-proxy", "720p") == 0.20
    assert config.models["acme-veo-proxy"].features == frozenset({"image"})


def test_a_declared_model_is_priced_and_sent(repo: Repo, sim: Simulator) -> None:
    """A reseller's id declared in reconcile.yaml is planned at its price and sent as written."""
    repo.write("reconcile.yaml", "models:\n  acme-veo-proxy:\n    price: {720p: 0.20}\n"
               "    resolutions: [720p]\n    features: [image]\n")  # fmt: skip
    repo.write("specs/a.yaml", "name: a\nmodel: acme-veo-proxy\nprompt: A kite.\n")
    assert "$1.60" in repo.run("plan").stdout
    result = repo.apply(env=repo.env(**FAST_ENV))
    assert result.returncode == 0, result.stdout + result.stderr
    (post,) = [r for r in sim.requests if r.method == "POST"]
    assert post.path == "/v1beta/models/acme-veo-proxy:predictLongRunning"


def test_a_retired_model_is_final_after_one_request_and_others_go_on(
    repo: Repo, sim: Simulator
) -> None:
    """A 404 "no longer available" for one spec's model: that spec fails after one unbilled POST,
    with a message naming the model and the catalog; the other spec converges."""
    sim.retire("veo-3.1-generate-preview")
    repo.write("specs/old.yaml", "name: old\nmodel: veo-3.1-generate-preview\nprompt: Old.\n")
    repo.write("specs/new.yaml", "name: new\nmodel: veo-3.1-generate-001\nprompt: New.\n")
    result = repo.apply(env=repo.env(**FAST_ENV))
    assert result.returncode == 1
    assert sim.post_requests == 2 and sim.paid_posts == 1
    row = repo.status()["old"]
    assert row["state"] == "failed" and "veo-3.1-generate-preview" in row["error"]
    assert "models:" in row["error"] and repo.status()["new"]["state"] == "materialized"
    again = repo.apply(env=repo.env(**FAST_ENV))
    assert again.returncode == 1 and sim.post_requests == 2


def test_every_new_field_arrives_on_the_wire_byte_for_byte(repo: Repo, sim: Simulator) -> None:
    """First and last frames, three reference images (asset and style) and the seed are sent
    exactly: the images' bytes and types, in order, and the seed as a JSON number."""
    first, last, ref1, ref2 = png_bytes(1), png_bytes(2), jpeg_bytes(), png_bytes(3)
    for name, data in (("first.png", first), ("last.png", last), ("r1.jpg", ref1),
                       ("r2.png", ref2)):  # fmt: skip
        repo.write_bytes(f"assets/{name}", data)
    repo.write("specs/frames.yaml", "name: frames\nmodel: veo-3.1-generate-001\nprompt: Bloom.\n"
               "image: ../assets/first.png\nlastFrame: ../assets/last.png\nseed: 4294967295\n"
               "personGeneration: allow_adult\n")  # fmt: skip
    repo.write("specs/refs.yaml", "name: refs\nmodel: veo-3.1-generate-001\nprompt: A bag.\n"
               "referenceImages:\n  - ../assets/r1.jpg\n"
               "  - {image: ../assets/r2.png, referenceType: style}\nseed: 0\n")  # fmt: skip
    result = repo.apply(env=repo.env(**FAST_ENV))
    assert result.returncode == 0, result.stdout + result.stderr
    sent = {r.json["instances"][0]["prompt"]: r.json for r in sim.requests if r.method == "POST"}

    def image(data: bytes, mime: str) -> dict[str, str]:
        return {"bytesBase64Encoded": base64.b64encode(data).decode(), "mimeType": mime}

    frames = sent["Bloom."]
    assert frames["instances"][0]["image"] == image(first, "image/png")
    assert frames["instances"][0]["lastFrame"] == image(last, "image/png")
    assert frames["parameters"]["seed"] == 4294967295
    assert frames["parameters"]["personGeneration"] == "allow_adult"
    refs = sent["A bag."]
    assert refs["instances"][0]["referenceImages"] == [
        {"image": image(ref1, "image/jpeg"), "referenceType": "asset"},
        {"image": image(ref2, "image/png"), "referenceType": "style"},
    ]
    assert refs["parameters"]["seed"] == 0 and refs["parameters"]["durationSeconds"] == 8


def test_changing_one_reference_image_replaces_that_spec_only(repo: Repo, sim: Simulator) -> None:
    """The key covers every byte of every image: a new reference image re-plans its spec alone."""
    repo.write_bytes("assets/r.png", png_bytes(1))
    repo.write("specs/refs.yaml", "name: refs\nmodel: veo-3.1-generate-001\nprompt: A bag.\n"
               "referenceImages: [../assets/r.png]\n")  # fmt: skip
    repo.write("specs/plain.yaml", "name: plain\nmodel: veo-3.1-generate-001\nprompt: Plain.\n")
    assert repo.apply(env=repo.env(**FAST_ENV)).returncode == 0
    repo.write_bytes("assets/r.png", png_bytes(9))
    plan = repo.run("plan")
    assert "refs" in plan.stdout and "replace" in plan.stdout and "plain" not in plan.stdout


def test_old_specs_keep_their_keys() -> None:
    """A spec that sets none of the new fields keeps the key it had before they existed."""
    from reconciler.spec import Desired, spec_key

    spec = Desired(
        name="hero", file="specs/hero.yaml", line=1, model="veo-3.1-fast-generate-preview",
        prompt="Slow drone shot over a misty pine forest at sunrise.",
        parameters={"aspectRatio": "16:9", "resolution": "720p", "durationSeconds": 8,
                    "enhancePrompt": True, "personGeneration": None, "negativePrompt": None,
                    "seed": None},
    )  # fmt: skip
    without_seed = Desired(**{**spec.__dict__, "parameters": {
        k: v for k, v in spec.parameters.items() if k != "seed"}})  # fmt: skip
    assert spec_key(spec) == spec_key(without_seed)
