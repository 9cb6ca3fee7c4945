"""Column detection: which columns hold the text, the label and the ticket id."""

from __future__ import annotations

import pytest

from classifier.columns import ColumnMapping, absent_columns, resolve_columns
from classifier.errors import UserError


@pytest.mark.parametrize(("columns", "texts", "label", "ident"), [
    (["ticket_id", "requester.id", "text", "category"], ("text",), "category", "ticket_id"),
    (["text", "prediction.label", "category"], ("text",), "category", None),  # the human label, not a nested one
    (["subject", "last_comment.body", "description", "queue"], ("subject", "description"), "queue", None),
    (["ticket.subject", "ticket.body", "custom_fields.queue", "requester.id"],
     ("ticket.subject", "ticket.body"), "custom_fields.queue", None),  # not the id of another object
    (["ticket.id", "ticket.subject", "ticket.description", "custom_fields.queue", "requester.id"],
     ("ticket.subject", "ticket.description"), "custom_fields.queue", "ticket.id"),  # the id beside the text
    (["id", "ticket.id", "ticket.subject", "ticket.body", "queue"], ("ticket.subject", "ticket.body"), "queue", "id"),
])
def test_detection_prefers_top_level_columns_to_nested_fields(columns: list[str], texts: tuple[str, ...],
                                                              label: str, ident: str | None) -> None:
    assert resolve_columns(columns, "export.jsonl") == ColumnMapping(texts, label, ident)


def test_german_french_and_spanish_exports_are_detected_in_any_unicode_form() -> None:
    assert resolve_columns(["Ticket-Nr", "Betreff", "Beschreibung", "Kategorie", "Priorit\u00e4t"], "export.csv") == \
        ColumnMapping(("Betreff", "Beschreibung"), "Kategorie", "Ticket-Nr")
    assert resolve_columns(["Objet", "Description", "Cate\u0301gorie"], "export.csv") == \
        ColumnMapping(("Objet", "Description"), "Cate\u0301gorie", None)
    assert resolve_columns(["Asunto", "Descripci\u00f3n", "Categor\u00eda"], "export.csv",
                           ("asunto", "descripcio\u0301n")).text_columns == ("Asunto", "Descripci\u00f3n")


@pytest.mark.parametrize(("columns", "texts", "ident"), [
    (["Issue key", "Issue id", "Summary", "Description", "Component/s"], ("Summary", "Description"), "Issue key"),
    (["number", "sys_id", "short_description", "description", "assignment_group"],
     ("short_description", "description"), "number"),
    (["Case Number", "Case ID", "Subject", "Description", "Type"], ("Subject", "Description"), "Case Number"),
    (["Conversation ID", "Subject", "Body", "Tag"], ("Subject", "Body"), "Conversation ID"),
    (["id", "key", "self", "fields.summary", "fields.description"], ("fields.summary", "fields.description"), "key"),
], ids=["jira", "servicenow", "salesforce", "intercom", "jira-rest-json"])
def test_helpdesk_exports_ids_and_texts_are_detected(columns: list[str], texts: tuple[str, ...], ident: str) -> None:
    mapping = resolve_columns(columns, "export.csv", require_label=False)
    assert (mapping.text_columns, mapping.id_column) == (texts, ident)


@pytest.mark.parametrize(("columns", "label", "others"), [
    (["Ticket ID", "Subject", "Description", "Type", "Agent", "Group", "Tags"], "Group", ("Type",)),  # Freshdesk
    (["number", "short_description", "description", "category", "assignment_group"], "category",
     ("assignment_group",)),  # ServiceNow
    (["subject", "body", "category", "priority"], "category", ()),
    (["Issue key", "Summary", "Description", "Issue Type", "Component/s", "Team"], "Team",
     ("Issue Type", "Component/s")),  # Jira
])
def test_the_queue_is_the_guessed_label_and_the_other_candidates_are_named(columns: list[str], label: str,
                                                                          others: tuple[str, ...]) -> None:
    mapping = resolve_columns(columns, "export.csv")
    assert (mapping.label_column, mapping.label_alternatives) == (label, others)
    assert resolve_columns(columns, "export.csv", label_column="Type" if "Type" in columns else label
                           ).label_alternatives == ()  # a named label is no guess
    assert mapping.label_line().startswith(f"labels from column {label!r}")


def test_a_named_id_column_is_read_and_a_wrong_one_refused() -> None:
    columns = ["Ref", "id", "subject", "body", "queue"]
    assert resolve_columns(columns, "export.csv", id_column="REF").id_column == "Ref"
    with pytest.raises(UserError, match=r"export.csv: id column 'ticket' not found; columns are \['Ref', 'id', "
                                        r"'subject', 'body', 'queue'\]; name the file's id column with --id-column"):
        resolve_columns(columns, "export.csv", id_column="ticket")
    with pytest.raises(UserError, match="column 'queue' is the label column; the id column is another"):
        resolve_columns(columns, "export.csv", id_column="queue")


def test_a_name_cut_at_its_comma_is_told_how_to_quote_it() -> None:
    columns = ["Summary", "Description", "Custom field (Team, Queue)"]
    with pytest.raises(UserError, match=r"label column 'Custom field \(Team' not found; columns are .*; a name with a "
                                        r"comma goes in double quotes \('\"Custom field \(Team, Queue\)\"'\)"):
        resolve_columns(columns, "jira.csv", label_column="Custom field (Team")


def test_messages_list_fields_not_the_objects_holding_them() -> None:
    columns = ["ticket", "ticket.subject", "ticket.via", "ticket.via.channel", "custom_fields", "custom_fields.queue"]
    listed = r"columns are \['ticket.subject', 'ticket.via.channel', 'custom_fields.queue'\]"
    with pytest.raises(UserError, match=listed):
        resolve_columns(columns, "export.jsonl", ("Title",))


@pytest.mark.parametrize(("asked", "found"), [
    ("custom_fields.queue", "ticket.custom_fields.queue"),  # the README's name, in a webhook-shaped export
    ("QUEUE", "ticket.custom_fields.queue"), ("ticket.custom_fields.queue", "ticket.custom_fields.queue")])
def test_a_nested_field_is_found_by_any_end_of_its_dotted_name(asked: str, found: str) -> None:
    columns = ["ticket.subject", "ticket.description", "ticket.custom_fields.queue", "requester.custom_fields.tier"]
    assert resolve_columns(columns, "export.jsonl", label_column=asked).label_column == found
    assert absent_columns(columns, [asked, "fields.queue", "custom_fields"]) == ["fields.queue", "custom_fields"]
