import pytest

from harness.evaluation.mbxp import MbxpTask, parse_mbxp_id
from harness.evaluation.mbxp.programs import assemble_program, clean_response

pytestmark = pytest.mark.quick


def test_id_split_at_first_underscore():
    assert parse_mbxp_id("cpp_zipTuples") == ("cpp", "zipTuples")
    assert parse_mbxp_id("python_remove_splchar") == ("python", "remove_splchar")


@pytest.mark.parametrize("row_id", ["cpp", "_f", "cpp_"])
def test_malformed_id_rejected(row_id):
    with pytest.raises(ValueError, match="<lang>_<entry_point>"):
        parse_mbxp_id(row_id)


def test_response_cut_at_first_fence():
    assert clean_response("int f();\n```\nprose\n```cpp\nint g();\n```", "cpp") == "int f();\n"


def test_response_without_fence_kept_whole():
    assert clean_response("def f():\n    return 1\n", "python") == "def f():\n    return 1\n"


def test_response_starting_with_fence_is_empty():
    assert clean_response("```python\ndef f(): pass\n```", "python") == ""


def test_only_python_is_left_stripped():
    assert clean_response("\n\n   def f(): pass", "python") == "def f(): pass"
    assert clean_response("\n\n   <?php\n", "php") == "\n\n   <?php\n"


def test_escaped_underscores_unescaped_after_the_cut():
    assert clean_response("max\\_len = 1\n```\nmore\\_text", "ruby") == "max_len = 1\n"
    assert clean_response("a\\\\_b", "cpp") == "a\\_b"  # only the two characters "\_" change


def test_program_is_response_then_test_without_separator():
    task = MbxpTask("k", "cpp", "f", "int f() { return 1; }```\nprose", "int main() { return f() - 1; }")
    assert assemble_program(task) == "int f() { return 1; }int main() { return f() - 1; }"


def test_python_program_calls_check_on_the_entry_point():
    task = MbxpTask("k", "python", "add_one", "\n  def add\\_one(x):\n    return x + 1\n```\n",
                    "def check(candidate):\n    assert candidate(1) == 2\n")
    assert assemble_program(task) == ("def add_one(x):\n    return x + 1\n"
                                      "\ndef check(candidate):\n    assert candidate(1) == 2\n"
                                      "\ncheck(add_one)")
