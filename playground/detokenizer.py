"""Text token by token: the text each generated token adds, from tokenizers' incremental decoder."""

from __future__ import annotations

from tokenizers.decoders import DecodeStream


class Detokenizer:
    """The text each token adds, token by token, with tokenizers' incremental decoder (DecodeStream): each new
    token costs the same however long the text is. A token that only starts a character adds nothing until the
    one that completes it; `finish` gives any trailing partial character to the last piece."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.pieces = tokenizer, [], []
        self.backend = getattr(tokenizer, "backend", tokenizer)  # DecodeStream reads a tokenizers.Tokenizer itself
        self.settled = [True]  # settled[i]: nothing of ids[:i] is waiting to be shown
        self.stream = DecodeStream(skip_special_tokens=False)

    def push(self, token: int) -> str:
        self.ids.append(token)
        piece = self.stream.step(self.backend, token)
        self.pieces.append(piece or "")
        self.settled.append(piece is not None)
        return piece or ""

    def follow(self, ids: list[int]):
        """Make the text that of `ids`, keeping the pieces of the prefix it shares with the current one (beam
        search's best beam may change anywhere)."""
        same = 0
        for a, b in zip(self.ids, ids):
            if a != b:
                break
            same += 1
        if same < len(self.ids):
            while not self.settled[same]:
                same -= 1
            del self.ids[same:], self.pieces[same:], self.settled[same + 1:]
            self.stream = DecodeStream(ids=list(self.ids), skip_special_tokens=False)
        for token in ids[len(self.ids):]:
            self.push(token)

    def finish(self) -> list[str]:
        """The pieces, checked against one decode of the whole: they always add up to it."""
        pieces = list(self.pieces)
        text, joined = self.tokenizer.decode(self.ids), "".join(pieces)
        if text == joined:
            return pieces
        if pieces and text.startswith(joined):
            pieces[-1] += text[len(joined):]
            return pieces
        return _pieces_by_prefix(self.tokenizer, self.ids)  # a decoder the stream disagrees with: the slow way


def _pieces_by_prefix(tokenizer, ids: list[int]) -> list[str]:
    pieces, done = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1])
        piece = ""
        if text.startswith(done) and not text.endswith("\ufffd"):
            piece, done = text[len(done):], text
        pieces.append(piece)
    text = tokenizer.decode(ids)
    if pieces and text != done and text.startswith(done):
        pieces[-1] += text[len(done):]
    return pieces


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    detok = Detokenizer(tokenizer)
    for token in ids:
        detok.push(token)
    return detok.finish()
