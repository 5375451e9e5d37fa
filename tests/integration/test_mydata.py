"""`/mydata` in the chat: a person sees and erases what the bot keeps about them, privately."""

from __future__ import annotations

import base64
import json
import re

from bots.assembly import Core
from core.model import MediaKind
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import FileResponder, RecordingResponder, attach, user_message
from tests.media_files import png


async def ask(core: Core, text: str, **where: object) -> str:
    responder = RecordingResponder()
    await core.handler(user_message(text, **where), responder)  # type: ignore[arg-type]
    return responder.shown


async def test_mydata_shows_and_erases_only_the_askers_data(core: Core, fake_openai: FakeOpenAI):
    await ask(core, "alice in the group", user="alice", channel="group")
    await ask(core, "bob in the group", user="bob", channel="group")
    await ask(core, "alice alone", user="alice", channel="dm-alice", private=True)

    refused = await ask(core, "/mydata", user="alice", channel="group")
    assert "private conversation" in refused and "alice in the group" not in refused

    shown = await ask(core, "/mydata", user="alice", channel="dm-alice", private=True)
    assert "alice in the group" in shown and "alice alone" in shown
    assert "bob in the group" not in shown

    asked = await ask(core, "/mydata erase", user="alice", channel="dm-alice", private=True)
    code = re.search(r"/mydata erase ([0-9a-f]{6})", asked)
    assert code is not None, asked
    wrong = await ask(core, "/mydata erase 000000", user="alice", channel="dm-alice",
                      private=True)  # fmt: skip
    assert "wrong or has expired" in wrong
    odd = await ask(core, "/mydata erase ünïcode", user="alice", channel="dm-alice",
                    private=True)  # fmt: skip
    assert "wrong or has expired" in odd
    stolen = await ask(core, f"/mydata erase {code.group(1)}", user="bob", channel="dm-bob",
                       private=True)  # fmt: skip
    assert "wrong or has expired" in stolen  # a code is the asker's own
    done = await ask(core, f"/mydata erase {code.group(1)}", user="alice", channel="dm-alice",
                     private=True)  # fmt: skip
    assert done.startswith("Done:"), done
    again = await ask(core, f"/mydata erase {code.group(1)}", user="alice",
                      channel="dm-alice", private=True)  # fmt: skip
    assert "wrong or has expired" in again  # used once

    group = core.chat.conversation_key(user_message("x", channel="group"))
    left = [turn.content for turn in (await core.store.load(group)).history]
    assert left == ["bob in the group", "echo: bob in the group"]
    dm = core.chat.conversation_key(user_message("x", channel="dm-alice"))
    assert (await core.store.load(dm)).history == []  # her DM is deleted whole
    after = await ask(core, "/mydata", user="alice", channel="dm-alice", private=True)
    assert "alice in the group" not in after and "alice alone" not in after


async def test_the_export_is_a_json_file_with_the_images_still_kept(
    core: Core, fake_openai: FakeOpenAI
):
    sender = FileResponder()
    photo = attach(sender, "me.png", png(colour="green"), MediaKind.IMAGE)
    await core.handler(
        user_message("here is a photo", user="alice", channel="dm", private=True,
                     attachments=(photo,)),
        sender,
    )  # fmt: skip
    await ask(core, "bob talks", user="bob", channel="dm-bob", private=True)

    responder = FileResponder()
    await core.handler(user_message("/mydata", user="alice", channel="dm", private=True), responder)
    [file] = responder.sent_files
    assert (file.name, file.mime_type) == ("mydata.json", "application/json")
    assert "Everything I keep about you" in file.caption and responder.texts == []
    document = json.loads(file.data)
    assert (document["platform"], document["user"]) == ("console", "alice")
    [turns] = document["conversations"].values()
    assert turns[0]["text"] == "here is a photo\n\n[image: me.png]"
    assert base64.b64decode(turns[0]["images"][0]["data"]) == png(colour="green")
    assert turns[1] == {"role": "assistant", "text": "echo: here is a photo\n\n[image: me.png]"}
    assert "bob talks" not in file.data.decode()
