"""Typed access to the parts of a Telegram update that a handler was registered for.

PTB types `Update.effective_user`, `.effective_message`, `.effective_chat` and `.callback_query` as optional:
an update of another kind has none. Every handler of `bot.handlers` and `bot.admin` is registered (in
`bot.app.register_handlers`) for updates that carry the parts it reads; these accessors state that once,
and raise `UpdateLacks` (a bug in the registration, reported by the error handler) if it is ever wrong,
instead of an AttributeError on None somewhere in a handler.
"""

from __future__ import annotations

from telegram import CallbackQuery, Chat, Message, Update, User

from bot.errors import UpdateLacks


def user_of(update: Update) -> User:
    """The user who sent the update."""
    if update.effective_user is None:
        raise UpdateLacks(f"update {update.update_id} has no user")
    return update.effective_user


def message_of(update: Update) -> Message:
    """The update's message (for a button press: the message that holds the button)."""
    if update.effective_message is None:
        raise UpdateLacks(f"update {update.update_id} has no message")
    return update.effective_message


def chat_of(update: Update) -> Chat:
    """The chat the update came from."""
    if update.effective_chat is None:
        raise UpdateLacks(f"update {update.update_id} has no chat")
    return update.effective_chat


def query_of(update: Update) -> CallbackQuery:
    """The button press of a callback-query update."""
    if update.callback_query is None:
        raise UpdateLacks(f"update {update.update_id} is not a button press")
    return update.callback_query
