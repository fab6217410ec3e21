"""``POST /v1/moderations`` with the real ``openai`` client, and image-URL fetching (SSRF refusals)."""

from __future__ import annotations

import base64
import io

import httpx
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from grvl_sdk import Guard  # noqa: E402
from grvl_sdk.fetch import FetchPolicy, ImageFetcher  # noqa: E402
from grvl_sdk.testing import ScriptedBackend, guard_output  # noqa: E402
from grvl_sdk.types import GuardInput  # noqa: E402
from tests._server_upstream import Harness  # noqa: E402


def png(color=(200, 30, 30), size=(32, 24)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(color=(200, 30, 30)) -> str:
    return "data:image/png;base64," + base64.b64encode(png(color)).decode()


class ImageAware:
    """A scripted guard: harmful when the text says "bomb", or when any image is blue; records image counts."""

    def __init__(self) -> None:
        self.images: list[int] = []

    def __call__(self, item: GuardInput) -> str:
        self.images.append(len(item.images))
        blue = any(image.getpixel((0, 0))[2] > 200 for image in item.images)
        harmful = blue or "bomb" in (item.text or "").lower()
        return guard_output("harmful" if harmful else "unharmful")


@pytest.fixture(scope="module")
def script():
    return ImageAware()


@pytest.fixture(scope="module")
def harness(script):
    with Harness(Guard(ScriptedBackend(script))) as h:
        yield h


def test_text_and_lists_of_texts(harness):
    client = harness.client()
    result = client.moderations.create(input="how do I bake bread?", model="omni-moderation-latest").results[0]
    assert result.flagged is False
    assert result.categories.violence is False and result.category_scores.violence == 0.0
    both = client.moderations.create(input=["how do I bake bread?", "how do I build a bomb?"])
    assert [r.flagged for r in both.results] == [False, True]
    flagged = both.results[1]
    assert flagged.categories.model_extra["harmful"] is True
    assert flagged.category_scores.model_extra["harmful"] == 1.0
    assert flagged.category_applied_input_types.model_extra["harmful"] == ["text"]
    assert flagged.model_extra["grvl"]["decision"] == "block"
    assert flagged.model_extra["grvl"]["reasoning"] == "scripted"
    assert both.id.startswith("modr-")


def test_image_and_several_images(harness, script):
    client = harness.client()
    one = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": data_url()}}]
    result = client.moderations.create(input=one).results[0]
    assert result.flagged is False
    assert result.category_applied_input_types.model_extra["harmful"] == ["text", "image"]
    script.images.clear()
    several = [{"type": "image_url", "image_url": {"url": data_url()}},
               {"type": "image_url", "image_url": {"url": data_url((10, 10, 250))}},
               {"type": "image_url", "image_url": {"url": data_url((10, 250, 10))}}]  # fmt: skip
    result = client.moderations.create(input=several).results[0]
    assert result.flagged is True and script.images == [3]  # every image judged, in one check
    assert result.category_applied_input_types.model_extra["harmful"] == ["image"]


def test_bad_inputs(harness):
    client = harness.client()
    for bad in ([], [1, 2], ["text", {"type": "text", "text": "x"}], [{"type": "audio"}],
                [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]):  # fmt: skip
        with pytest.raises(openai.BadRequestError):
            client.moderations.create(input=bad)
    with pytest.raises(openai.BadRequestError, match="no image allowlist"):
        client.moderations.create(input=[{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}])
    assert client.moderations.create(input="").results[0].flagged is False


def test_api_key_protects_the_guard_endpoints():
    key = "grvl-test-key-0123456789"
    with Harness(api_keys=(key,)) as h:
        with pytest.raises(openai.AuthenticationError):
            h.client(api_key="wrong-key-0000000000000").moderations.create(input="hello")
        assert h.client(api_key=key).moderations.create(input="hello").results[0].flagged is False
        assert httpx.get(h.url + "/metrics").status_code == 401
        assert httpx.get(h.url + "/metrics", headers={"x-api-key": key}).status_code == 200
        assert httpx.get(h.url + "/health").status_code == 200
        # the proxy needs no key of ours by default: its Authorization is the upstream's
        assert h.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).choices


# -- image URLs: the allowlist, and SSRF refusals --------------------------------------------------

PUBLIC = "93.184.216.34"


class FakeNet:
    """A resolver and an httpx transport standing in for the network: nothing leaves the process."""

    def __init__(self) -> None:
        self.names = {
            "images.example.com": [PUBLIC],
            "evil.example.com": ["127.0.0.1"],
            "rebind.example.com": [PUBLIC, "10.0.0.7"],
            "hop.example.com": [PUBLIC],
            "localhost": ["127.0.0.1", "::1"],
        }
        self.requests: list[str] = []

    def resolve(self, host: str, port: int) -> list[str]:
        if host not in self.names:
            raise OSError(f"unknown host {host}")
        return self.names[host]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.headers['host']}{request.url.raw_path.decode()}")
        # the caller's credentials never go to an image host
        assert not {"authorization", "cookie", "api-key"} & {k.lower() for k in request.headers}, request.headers
        if request.url.raw_path.startswith(b"/redirect-loopback"):
            return httpx.Response(302, headers={"location": "http://127.0.0.1:8080/admin"})
        if request.url.raw_path.startswith(b"/redirect-metadata"):
            return httpx.Response(302, headers={"location": "https://169.254.169.254/latest/meta-data"})
        if request.url.raw_path.startswith(b"/redirect-evil"):
            return httpx.Response(302, headers={"location": "https://evil.example.com/x.png"})
        return httpx.Response(200, stream=Body(png((10, 10, 250))), headers={"content-type": "image/png"})


class Body(httpx.AsyncByteStream):
    """A streamed body (a ``content=`` response would count as already read)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self):
        yield self.data


@pytest.fixture(scope="module")
def fetching(script):
    net = FakeNet()
    allow = ("images.example.com", "evil.example.com", "rebind.example.com", "hop.example.com", "127.0.0.1",
             "localhost", "10.0.0.1", "169.254.169.254", "[::1]", "2130706433")  # fmt: skip
    fetcher = ImageFetcher(FetchPolicy(allow=allow, allow_http=True), resolver=net.resolve,
                           transport=httpx.MockTransport(net.handle))  # fmt: skip
    with Harness(Guard(ScriptedBackend(script)), app_options={"image_fetcher": fetcher}) as h:
        yield h, net


def test_allowlisted_images_are_fetched_and_inlined(fetching):
    h, net = fetching
    part = {"type": "image_url", "image_url": {"url": "https://images.example.com/cat.png"}}
    result = h.client().moderations.create(input=[part]).results[0]
    assert result.flagged is True  # the fetched (blue) image was judged
    net.requests.clear()
    answer = h.client().chat.completions.create(
        model="m",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hi"},
                    {"type": "image_url", "image_url": {"url": "https://images.example.com/a.png"}},
                ],
            }
        ],
    )
    assert answer.choices[0].finish_reason == "content_filter"
    assert h.script.log == []  # blocked: the upstream never saw it
    assert net.requests == ["images.example.com/a.png"]


def test_the_upstream_gets_the_bytes_the_guard_judged(fetching, script):
    h, _ = fetching
    original = script.__call__
    h.guard.backend.script = lambda item: guard_output("unharmful")
    h.guard.cache.clear()  # the same image was judged harmful before
    try:
        part = {"type": "image_url", "image_url": {"url": "https://images.example.com/ok.png"}}
        h.client().chat.completions.create(model="m", messages=[{"role": "user", "content": [part]}])
    finally:
        h.guard.backend.script = original
    sent = h.script.log[-1]["body"]["messages"][0]["content"][0]["image_url"]["url"]
    assert sent.startswith("data:image/png;base64,")  # no second fetch upstream: no time-of-check gap


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/admin",  # loopback
        "http://localhost/x.png",  # a name for loopback
        "http://[::1]/x.png",  # IPv6 loopback
        "http://2130706433/x.png",  # 127.0.0.1 as one number
        "http://10.0.0.1/x.png",  # private
        "http://169.254.169.254/latest/meta-data",  # link-local: cloud metadata
        "https://evil.example.com/x.png",  # a public-looking name resolving to 127.0.0.1
        "https://rebind.example.com/x.png",  # one of its addresses is private
        "https://hop.example.com/redirect-loopback",  # redirect to loopback
        "https://hop.example.com/redirect-metadata",  # redirect to the metadata address
        "https://hop.example.com/redirect-evil",  # redirect to a name resolving to loopback
        "https://not-allowed.example.org/x.png",  # not in the allowlist
        "https://user:pw@images.example.com/x.png",  # credentials
        "ftp://images.example.com/x.png",  # scheme
    ],
)
def test_ssrf_attempts_are_refused(fetching, url):
    h, net = fetching
    net.requests.clear()
    h.script.log.clear()
    for endpoint in ("moderations", "chat"):
        part = {"type": "image_url", "image_url": {"url": url}}
        with pytest.raises(openai.BadRequestError) as caught:
            if endpoint == "moderations":
                h.client().moderations.create(input=[part])
            else:
                h.client().chat.completions.create(model="m", messages=[{"role": "user", "content": [part]}])
        assert caught.value.code in ("fetch_refused", "invalid_input", "invalid_image"), caught.value.code
    # nothing but the allowlisted public hop was ever contacted
    assert all(r.startswith("hop.example.com/redirect") for r in net.requests), net.requests
    assert h.script.log == []


def test_the_real_resolver_refuses_loopback_even_when_allowlisted():
    """The server's own fetcher (system resolver): names and addresses of this machine are never fetched."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        with Harness(image_allow=("localhost", "127.0.0.1", "[::1]"), image_allow_http=True) as h:
            for url in (f"http://localhost:{port}/x.png", f"http://127.0.0.1:{port}/x.png",
                        f"http://[::1]:{port}/x.png", f"http://0x7f.1:{port}/x.png"):  # fmt: skip
                with pytest.raises(openai.BadRequestError):
                    h.client().moderations.create(input=[{"type": "image_url", "image_url": {"url": url}}])
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()


def test_category_scores_are_the_label_probabilities():
    """With log-probabilities from the backend, ``category_scores`` is the probability of ``harmful`` at the
    request label (not 1.0 / 0.0 from the decision)."""
    import math

    from grvl_sdk import TokenLogprobs
    from grvl_sdk.types import Generation

    def scored(item: GuardInput) -> Generation:
        harmful = "bomb" in (item.text or "")
        label = " harmful" if harmful else " unharmful"
        tokens = ["<think>", "x", "</think>", "<result>", "Request", ":", label, "\nResponse: None", "</result>"]
        p = 0.8 if harmful else 0.1
        alternatives = {6: {" harmful": math.log(p), " unharmful": math.log(1 - p)}}
        logprobs = TokenLogprobs(tokens=tokens, alternatives=lambda i: alternatives.get(i, {tokens[i]: 0.0}))
        return Generation(text="".join(tokens), logprobs=logprobs)

    with Harness(Guard(ScriptedBackend(scored))) as h:
        results = h.client().moderations.create(input=["bake bread", "build a bomb"]).results
    assert [r.flagged for r in results] == [False, True]
    scores = [r.category_scores.model_extra["harmful"] for r in results]
    assert scores == [pytest.approx(0.1), pytest.approx(0.8)]
    assert [r.model_extra["grvl"]["score"] for r in results] == scores


def test_the_servers_fetch_limits_reach_the_fetcher_and_apply():
    """``image_max_bytes`` / ``image_fetch_timeout`` / ``image_max_redirects`` / ``image_allow_http`` are the
    SSRF-safe fetcher's (``grvl_sdk.fetch``) limits, and an image over the byte limit is refused."""
    from grvl_sdk.server import ServerConfig, create_app

    config = ServerConfig(image_allow=("images.example.com",), image_max_bytes=2048, image_fetch_timeout=2.5,
                          image_max_redirects=1)  # fmt: skip
    fetcher = create_app(Guard(ScriptedBackend.flagging("bomb")), config=config).state.grvl.images.fetcher
    assert isinstance(fetcher, ImageFetcher)  # the SDK's fetcher, no second implementation
    policy = fetcher.policy
    assert (policy.max_bytes, policy.timeout, policy.max_redirects, policy.allow_http) == (2048, 2.5, 1, False)
    assert create_app(Guard(ScriptedBackend.flagging("bomb"))).state.grvl.images.fetcher is None  # default: none

    net = FakeNet()
    big = FetchPolicy(allow=("images.example.com",), max_bytes=40)
    small_fetcher = ImageFetcher(big, resolver=net.resolve, transport=httpx.MockTransport(net.handle))
    with Harness(app_options={"image_fetcher": small_fetcher}) as h:
        part = {"type": "image_url", "image_url": {"url": "https://images.example.com/big.png"}}
        with pytest.raises(openai.BadRequestError) as caught:
            h.client().moderations.create(input=[part])
        assert caught.value.code == "fetch_failed" and "40" in caught.value.message, caught.value.message
