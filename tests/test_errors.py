"""The one-line error helpers: DistatError messages and first_line for library exceptions."""

from __future__ import annotations

from distat.errors import DataError, first_line


def test_distat_error_is_one_line():
    assert str(DataError("a\n  b\tc ")) == "a b c"


def test_first_line_keeps_the_first_line():
    assert first_line(ValueError("  bad value\nTraceback detail\n")) == "bad value"
    assert first_line(ValueError("bad value\nmore"), typed=True) == "ValueError: bad value"


def test_first_line_of_an_empty_message_is_the_type_name():
    assert first_line(KeyError()) == "KeyError"
    assert first_line(OSError("  \n "), typed=True) == "OSError"


def test_first_line_cuts_the_message_not_the_type():
    assert first_line(RuntimeError("x" * 500), 200) == "x" * 200
    assert first_line(RuntimeError("abcdef"), 3, typed=True) == "RuntimeError: abc"


def test_a_first_line_ending_in_a_colon_keeps_the_next():
    exc = RuntimeError("Error(s) in loading state_dict for Linear:\n\tsize mismatch for bias: [3] vs [2].\n\tmore")
    assert first_line(exc) == "Error(s) in loading state_dict for Linear: size mismatch for bias: [3] vs [2]."
    assert first_line(RuntimeError("nothing after:")) == "nothing after:"


def test_whole_joins_every_line_of_a_banner_message():
    """nltk's LookupError opens with a line of asterisks; the resource it misses is named below it."""
    exc = LookupError("\n" + "*" * 20 + "\n  Resource stopwords not found.\n  Please use the NLTK Downloader\n" + "*" * 20)
    assert first_line(exc) == "*" * 20
    assert first_line(exc, 60, whole=True).startswith("*" * 20 + " Resource stopwords not found. Please")
    assert len(first_line(exc, 60, whole=True)) == 60
