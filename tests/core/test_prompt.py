import pytest

from x2i.core.prompt import PromptError, check, image_ids, placeholder, problems, remove_placeholders, renumber, split

P1, P2, P3 = placeholder(1), placeholder(2), placeholder(3)


def test_placeholder_format():
    assert P1 == "<img><|image_1|></img>"
    with pytest.raises(ValueError):
        placeholder(0)


def test_split_and_ids():
    text = f"The cat is in {P1}. The dog is in {P2}."
    assert split(text) == ["The cat is in ", 1, ". The dog is in ", 2, "."]
    assert image_ids(text) == [1, 2]
    assert split(P1) == [1]


@pytest.mark.parametrize("text,n", [("a caption", 0), (f"{P1} make it red", 1), (f"A {P1} and {P2} then {P3}", 3)])
def test_well_formed(text, n):
    assert problems(text, n) == []
    check(text, n)


@pytest.mark.parametrize("text,n,fragment", [
    (f"{P2} first", 1, "order of appearance"),            # numbering must start at 1
    (f"{P1} and {P3}", 2, "order of appearance"),         # gap
    (f"{P2} then {P1}", 2, "order of appearance"),        # not in appearance order
    (f"{P1} and {P1}", 1, "more than once"),              # repeated
    (f"{P1}", 2, "1 placeholder(s) for 2"),               # fewer placeholders than images
    ("no image", 1, "0 placeholder(s) for 1"),
    ("<img><|image_1|> unclosed", 1, "stray"),             # unclosed tag
    ("stray </img> tag", 0, "stray"),
    ("<img><|image_01|></img> leading zero", 1, "stray"),  # not a valid number
    ("<|image_1|> bare", 1, "stray"),
])
def test_problems_detected(text, n, fragment):
    found = problems(text, n)
    assert any(fragment in f for f in found), found
    with pytest.raises(PromptError):
        check(text, n)


def test_renumber_composes_prompts():
    example = f"{P1} -> edges"
    query = renumber(f"{P1} and {P2}", 1)
    assert query == f"{P2} and {P3}"
    assert problems(f"{example} {query}", 3) == []


def test_remove_placeholders():
    assert remove_placeholders(f"The cat is in {P1}.  A cat.") == "The cat is in . A cat."
