import pytest

from robustbench_lite.registry import ATTACKS, MODELS, Registry


def test_duplicate_names_point_at_the_first_registration():
    reg = Registry("widget")

    @reg.register("foo")
    class A:
        pass

    with pytest.raises(ValueError, match=r"duplicate widget name 'foo'.*first registered by .*test_registry.py:\d+"):
        @reg.register("foo")
        class B:
            pass


def test_unknown_name_suggests_close_matches_and_lists_allowed():
    with pytest.raises(ValueError, match=r"unknown attack 'fgms'; did you mean 'fgsm'.*\? Allowed: .*pgd"):
        ATTACKS.create("fgms")


def test_names_and_patterns():
    assert {"fgsm", "bim", "pgd", "illc", "gradient_ascent", "fb"} <= set(ATTACKS.names())
    assert ATTACKS.names("*gd") == ["pgd"]
    assert {"smallcnn", "resnet10t", "mobilenetv3_small_050", "vit_tiny_p7"} <= set(MODELS.names())


@pytest.mark.parametrize("bad", ["PGD", "", "a b"])
def test_names_are_lowercase_snake_case(bad):
    with pytest.raises(ValueError, match="lowercase"):
        Registry("x").register(bad)


def test_a_word_field_takes_none_literally_and_a_number_field_takes_none_as_none():
    from robustbench_lite import specs

    assert specs.attack("pgd:target=none").target == "none"
    assert specs.attack("pgd:step_size=none").step_size is None
