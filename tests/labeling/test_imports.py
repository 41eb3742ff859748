"""Imports: whole file validated first, errors name line and field, nothing half-imported, idempotent, size limit."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from labeling.models import Comparison, Project, Prompt, Response
from labeling.services.import_parsing import ImportRejected
from labeling.services.imports import import_data


def jsonl(*records) -> bytes:
    return ("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n").encode()


GOOD = jsonl(
    {"external_id": "q1", "prompt": "What is 2+2?", "domain": "math"},
    {
        "external_id": "q2",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Joke?"},
        ],
    },
    {"prompt_external_id": "q1", "content": "4", "source": "m1"},
    {"prompt_external_id": "q1", "content": "5", "source": "m2", "external_id": "q1-bad"},
    {"prompt_external_id": "q2", "content": "Knock knock.", "source": "m1"},
    {"prompt_external_id": "q2", "content": "No.", "source": "m2"},
    {
        "external_id": "c1",
        "prompt": "Capital of France?",
        "responses": [{"content": "Paris", "source": "m1"}, {"content": "Lyon", "source": "m2"}],
        "is_gold": True,
        "expected_ranking": [1, 2],
    },
)


@pytest.mark.django_db
def test_import_creates_project_rows_and_is_idempotent():
    report = import_data(project_slug="imp", data=GOOD, fmt="jsonl", build_k=2)
    assert Project.objects.filter(slug="imp").exists()
    assert (report.prompts_created, report.responses_created, report.comparisons_created) == (3, 6, 1)
    assert report.comparisons_built == 2  # one pair per prompt q1, q2
    gold = Comparison.objects.get(external_id="c1")
    assert gold.is_gold and sorted(gold.expected_ranks.values()) == [1, 2]
    assert Prompt.objects.get(external_id="q2").messages[-1] == {"role": "user", "content": "Joke?"}

    again = import_data(project_slug="imp", data=GOOD, fmt="jsonl", build_k=2)
    assert (
        again.prompts_created,
        again.responses_created,
        again.comparisons_created,
        again.comparisons_built,
    ) == (0, 0, 0, 0)
    assert (again.prompts_existing, again.responses_existing, again.comparisons_existing) == (3, 6, 1)
    assert Prompt.objects.count() == 3 and Response.objects.count() == 6 and Comparison.objects.count() == 3


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("bad_line", "needle"),
    [
        ('{"external_id": "x", "prompt": ""}', "line 3, field 'prompt': must not be empty"),
        ('{"messages": [{"role": "robot", "content": "hi"}]}', "line 3, field 'messages[0].role'"),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}',
            "line 3, field 'messages': the last message must be the user's",
        ),
        ('{"prompt_external_id": "q1", "source": "m"}', "line 3, field 'content': is required"),
        ('{"prompt": "x", "colour": "red"}', "line 3, field 'colour': unknown field"),
        ("{not json", "line 3: not valid JSON"),
        ('{"prompt": "x", "responses": [{"content": "a", "source": "s"}]}', "line 3, field 'responses'"),
        (
            '{"prompt": "x", "is_gold": true, "responses": [{"content": "a", "source": "s"}, {"content": "b", "source": "s"}]}',
            "line 3, field 'expected_ranking': is required",
        ),
    ],
)
def test_one_bad_line_rejects_the_whole_file(bad_line, needle):
    data = jsonl(
        {"external_id": "q1", "prompt": "fine"},
        {"prompt_external_id": "q1", "content": "ok", "source": "m"},
        bad_line,
    )
    with pytest.raises(ImportRejected) as info:
        import_data(project_slug="rej", data=data, fmt="jsonl")
    assert any(needle in message for message in info.value.messages), info.value.messages
    assert Prompt.objects.count() == 0 and Response.objects.count() == 0


@pytest.mark.django_db
def test_reference_and_conflict_errors_need_the_database_and_import_nothing():
    import_data(project_slug="ref", data=jsonl({"external_id": "q1", "prompt": "one"}), fmt="jsonl")
    data = jsonl(
        {"external_id": "q2", "prompt": "two"},
        {"prompt_external_id": "nope", "content": "x", "source": "m"},
        {"external_id": "q1", "prompt": "changed text"},
    )
    with pytest.raises(ImportRejected) as info:
        import_data(project_slug="ref", data=data, fmt="jsonl")
    text = " | ".join(info.value.messages)
    assert "line 2, field 'prompt_external_id': no prompt 'nope'" in text
    assert "line 3, field 'external_id': prompt 'q1' exists with other messages" in text
    assert list(Prompt.objects.values_list("external_id", flat=True)) == ["q1"]


@pytest.mark.django_db
def test_csv_import_with_json_columns():
    data = (
        b"external_id,prompt,messages,domain,metadata\n"
        b'a,"Plain, with comma",,misc,"{""k"": 1}"\n'
        b'b,,"[{""role"": ""user"", ""content"": ""hey""}]",,\n'
    )
    report = import_data(project_slug="csv", data=data, fmt="csv")
    assert report.prompts_created == 2
    assert Prompt.objects.get(external_id="a").metadata == {"k": 1}
    bad = b"prompt_external_id,content,source\na,,m\n"
    with pytest.raises(ImportRejected) as info:
        import_data(project_slug="csv", data=bad, fmt="csv")
    assert "line 2, field 'content': is required" in info.value.messages[0]


@pytest.mark.django_db
def test_size_limit_has_a_clear_message(settings):
    settings.LABELING_IMPORT_MAX_BYTES = 100
    with pytest.raises(ImportRejected) as info:
        import_data(project_slug="big", data=b'{"prompt": "x"}\n' * 20, fmt="jsonl")
    assert "the limit is" in info.value.messages[0]
    assert not Project.objects.filter(slug="big").exists()


@pytest.mark.django_db
def test_import_data_command(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_bytes(GOOD)
    call_command("import_data", str(good), "--project", "cli", "--build-k", "2", "--no-progress")
    assert "3 prompts new" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl({"prompt": "new"}, {"prompt": 3}))
    with pytest.raises(CommandError, match=r"line 2, field 'prompt': must be a string"):
        call_command("import_data", str(bad), "--project", "cli", "--no-progress")
    assert Prompt.objects.filter(project__slug="cli").count() == 3


# --- input the database cannot store: a per-line error naming the field, never a 500 -----------------------

COMPARISON = {
    "prompt": "p",
    "responses": [{"content": "a", "source": "s"}, {"content": "b", "source": "s"}],
}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("line", "field", "needle"),
    [
        ({"prompt": "a\u0000b"}, "prompt", "NUL"),
        ({"prompt": "x", "external_id": "id\u0000"}, "external_id", "NUL"),
        ({"prompt": "x", "domain": "d\u0000"}, "domain", "NUL"),
        ({"prompt": "x", "metadata": {"note": "n\u0000"}}, "metadata", "NUL"),
        ({"messages": [{"role": "user", "content": "c\u0000"}]}, "messages[0].content", "NUL"),
        ({"prompt_external_id": "q1", "content": "r\u0000", "source": "m"}, "content", "NUL"),
        ({"prompt_external_id": "q1", "content": "r", "source": "m\u0000"}, "source", "NUL"),
        (
            {"prompt_external_id": "q1", "content": "r", "source": "m", "generation_params": {"k\u0000": 1}},
            "generation_params",
            "NUL",
        ),
        (
            {
                **COMPARISON,
                "responses": [{"content": "a\u0000", "source": "s"}, {"content": "b", "source": "s"}],
            },
            "responses[0].content",
            "NUL",
        ),  # fmt: skip
        ({"prompt": "lone \ud800 surrogate"}, "prompt", "lone surrogate (\\ud800)"),
        ({"prompt": "x", "metadata": {"k": "\udfff"}}, "metadata", "lone surrogate"),
        ({**COMPARISON, "priority": "nan"}, "priority", "must be a finite number, not 'nan'"),
        ({**COMPARISON, "priority": "-inf"}, "priority", "must be a finite number"),
        ({**COMPARISON, "priority": float("nan")}, "priority", "must be a finite number"),
        ({**COMPARISON, "priority": float("inf")}, "priority", "must be a finite number"),
        ({"prompt": "x", "metadata": {"score": float("nan")}}, "metadata", "not a finite number"),
    ],
)
def test_unstorable_text_and_non_finite_numbers_are_rejected_by_line_and_field(line, field, needle):
    # json.dumps writes \u0000, lone surrogates as \ud800 escapes and nan/inf as NaN/Infinity, as other tools do.
    data = jsonl({"external_id": "q1", "prompt": "fine"}, line)
    with pytest.raises(ImportRejected) as info:
        import_data(project_slug="nul", data=data, fmt="jsonl")
    message = info.value.messages[0]
    assert message.startswith(f"line 2, field '{field}': ") and needle in message, info.value.messages
    assert not Project.objects.filter(slug="nul").exists() and not Prompt.objects.exists()


@pytest.mark.django_db
def test_nul_in_a_csv_cell_is_a_line_error():
    data = b"external_id,prompt\nok,fine\nbad,te\x00xt\n"
    with pytest.raises(ImportRejected) as info:
        import_data(project_slug="nulcsv", data=data, fmt="csv")
    assert info.value.messages == [
        "line 3, field 'prompt': contains a NUL character (\\u0000), which cannot be stored"
    ]
    assert not Prompt.objects.exists()


@pytest.mark.django_db
def test_a_nan_priority_never_reaches_the_queue(client):
    """Once accepted, a NaN priority was served first and broke /comparisons/ (NaN is not JSON)."""
    import_data(project_slug="prio", data=jsonl({**COMPARISON, "priority": 2.5}), fmt="jsonl")
    with pytest.raises(ImportRejected):
        import_data(
            project_slug="prio", data=jsonl({**COMPARISON, "prompt": "q", "priority": "NaN"}), fmt="jsonl"
        )
    assert list(Comparison.objects.values_list("priority", flat=True)) == [2.5]


# --- bulk writing: no query per row ---------------------------------------------------------------------------


def _big_file(prompts: int) -> bytes:
    lines = []
    for p in range(prompts):
        lines.append({"external_id": f"p{p}", "prompt": f"prompt {p}"})
        lines += [{"prompt_external_id": f"p{p}", "content": f"{p}-{r}", "source": f"m{r}"} for r in range(2)]
        lines.append(
            {
                "external_id": f"c{p}",
                "prompt": f"comparison {p}",
                "responses": [{"content": "x", "source": "a"}, {"content": "y", "source": "b"}],
                "is_gold": p % 2 == 0,
                **({"expected_ranking": [2, 1]} if p % 2 == 0 else {}),
            }
        )
    return jsonl(*lines)


@pytest.mark.django_db
def test_import_writes_in_bulk_with_a_few_queries_whatever_the_size(django_assert_max_num_queries):
    """400 prompts, 800 responses, 200 comparison lines (1,400 rows): the old path made a query (or more) per row;
    now lookups and inserts go by chunk (SQLite splits an insert into statements of at most 999 values)."""
    data = _big_file(200)
    with django_assert_max_num_queries(80):
        report = import_data(project_slug="bulk", data=data, fmt="jsonl", build_k=2)
    assert (report.prompts_created, report.responses_created, report.comparisons_created) == (400, 800, 200)
    assert report.comparisons_built == 200  # one pair per plain prompt
    gold = Comparison.objects.get(project__slug="bulk", external_id="c0")
    ids = list(gold.items.order_by("position").values_list("response_id", flat=True))
    assert gold.is_gold and gold.expected_ranks == {str(ids[0]): 2, str(ids[1]): 1}
    assert [r.content for r in Response.objects.filter(id__in=ids).order_by("id")] == ["x", "y"]
    with django_assert_max_num_queries(80):
        again = import_data(project_slug="bulk", data=data, fmt="jsonl", build_k=2)
    assert (again.prompts_existing, again.responses_existing, again.comparisons_existing) == (400, 800, 200)
    assert again.comparisons_built == 0 and Comparison.objects.count() == 400
