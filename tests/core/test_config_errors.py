"""The strict config loader names the dotted path of a bad key, suggests the closest known key, and the file."""
from dataclasses import dataclass, field

import pytest

from x2i.core.config import ConfigError, from_dict, set_dotted


@dataclass
class Annotator:
    name: str
    weights: str | None = None


@dataclass
class Params:
    annotators: list[Annotator] = field(default_factory=list)
    min_side: int = 0


def test_nested_unknown_key_has_its_full_path_and_a_suggestion():
    data = {"annotators": [{"name": "a"}, {"name": "b"}, {"nme": "c"}]}
    with pytest.raises(ConfigError) as err:
        from_dict(Params, data, "params")
    assert str(err.value) == "params.annotators[2].nme: unknown key; did you mean 'name'?"
    assert str(err.value.in_file("manifests/vision.yaml")) == \
        "manifests/vision.yaml: params.annotators[2].nme: unknown key; did you mean 'name'?"
    located = err.value.in_file("a.yaml")
    assert located.in_file("b.yaml") is located  # the file is named once, by the innermost caller


def test_unknown_key_without_a_close_match_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"^zzz: unknown key; allowed: \['annotators', 'min_side'\]$"):
        from_dict(Params, {"zzz": 1})


def test_set_dotted_errors():
    data = {"min_side": 3}
    with pytest.raises(ConfigError, match="min_side: not a mapping, cannot set min_side.x"):
        set_dotted(data, "min_side.x", "1")
    with pytest.raises(ConfigError, match=r"min_side: value '\{' is not valid YAML"):
        set_dotted(data, "min_side", "{")
    set_dotted(data, "path", "123", parse=False)
    assert data["path"] == "123"


def test_colons_never_make_numbers_and_numbers_still_do(tmp_path):
    """YAML 1.1 reads `4:2:0` as the base-60 number 14520: recipes and --set read it as the string it looks like,
    in a file and on the command line, while every other number parses as before."""
    from x2i.core.config import load_yaml, read_yaml, set_dotted

    text = "a: 4:2:0\nb: 1:30\nc: 190:20:30.15\nd: 12\ne: -1.5\nf: 0x10\ng: 1_000\nh: .inf\ni: '7'\n"
    want = {"a": "4:2:0", "b": "1:30", "c": "190:20:30.15", "d": 12, "e": -1.5, "f": 16, "g": 1000,
            "h": float("inf"), "i": "7"}
    assert load_yaml(text) == want
    (tmp_path / "r.yaml").write_text(text)
    assert read_yaml(tmp_path / "r.yaml") == want
    data: dict = {}
    set_dotted(data, "output.jpeg_subsampling", "4:2:0")
    set_dotted(data, "output.jpeg_quality", "90")
    assert data == {"output": {"jpeg_subsampling": "4:2:0", "jpeg_quality": 90}}
