"""text_filter and topic_directory over QUIC: word lists, masks, curated topics, ranking."""

from __future__ import annotations

from tests.test_plugin_support import plugin_daemon, refused


async def test_text_filter_refuses_listed_words(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("# one per line\nfree money\nscam  # phrases and words\n")
    overrides = {
        "plugins.enabled": "text_filter",
        "plugins.text_filter.words": ["spam"],
        "plugins.text_filter.words_file": str(words),
    }
    async with plugin_daemon(tmp_path, **overrides) as running:
        host = await running.client("Host")
        error = await refused(host.create_room("Get FREE MONEY now"))
        assert error.code == "denied_by_plugin"
        assert error.message == (
            "the title contains a word this server does not allow ('FREE MONEY')"
        )
        error = await refused(host.create_room("Fine title", description="a Scam!"))
        assert error.code == "denied_by_plugin"
        error = await refused(host.create_room("Fine title", topics=["spam"]))
        assert error.message == "the topic 'spam' contains a word this server does not allow"
        # Whole words only: "spammer" and "scampi" are other words.
        created = await host.create_room("Scampi for spammers", room="food")
        assert created["title"] == "Scampi for spammers"
        await host.join("food")
        error = await refused(host.call("update_room", title="spam"))
        assert error.code == "denied_by_plugin"


async def test_text_filter_can_mask_instead(tmp_path):
    overrides = {
        "plugins.enabled": "text_filter",
        "plugins.text_filter.words": ["darn"],
        "plugins.text_filter.action": "mask",
        "plugins.text_filter.fields": ["title"],
    }
    async with plugin_daemon(tmp_path, **overrides) as running:
        host = await running.client("Host")
        created = await host.create_room("That darn cat", description="darn it")
        assert created["title"] == "That **** cat"
        assert created["description"] == "darn it"  # not a filtered field


async def test_topic_directory(tmp_path):
    overrides = {
        "plugins.enabled": "topic_directory",
        "plugins.topic_directory.topics": ["books", "jazz", "science"],
        "plugins.topic_directory.aliases": {"Jazz Music": "jazz", "literature": "books"},
        "plugins.topic_directory.featured": ["jazz"],
    }
    async with plugin_daemon(tmp_path, **overrides) as running:
        reader = await running.client("Reader")
        created = await reader.create_room("Readers", room="readers", topics=["Literature"])
        assert created["topics"] == ["books"]
        await reader.join("readers")
        other = await running.client("Other")
        await other.join("readers")  # the most members: first in the core's order
        fan = await running.client("Fan")
        created = await fan.create_room("Late jazz", room="late", topics=["jazz  music", "jazz"])
        assert created["topics"] == ["jazz"]
        misc = await running.client("Misc")
        await misc.create_room("Knitting", room="knit", topics=["knitting"])
        result = await reader.call("list_rooms")
        assert result["topics"] == ["books", "jazz", "science"]
        # Featured first, then curated topics, then the rest.
        assert [r["room"] for r in result["rooms"]] == ["late", "readers", "knit"]
        # Discovery by any alias of a topic.
        assert [r["room"] for r in await reader.list_rooms("Jazz Music")] == ["late"]


async def test_topic_directory_strict(tmp_path):
    overrides = {
        "plugins.enabled": "topic_directory",
        "plugins.topic_directory.topics": ["books", "jazz"],
        "plugins.topic_directory.strict": True,
    }
    async with plugin_daemon(tmp_path, **overrides) as running:
        host = await running.client("Host")
        error = await refused(host.create_room("Knitting", topics=["knitting"]))
        assert (error.code, error.message) == (
            "denied_by_plugin",
            "unknown topic 'knitting'; this server's topics: books, jazz",
        )
        created = await host.create_room("Jazz", topics=["JAZZ"])
        assert created["topics"] == ["jazz"]
