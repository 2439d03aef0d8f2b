"""IoT policy evaluation (aws-iot.md §5): parsing, wildcards, variables, deny wins."""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.auth.policy import (
    CONNECT,
    PUBLISH,
    RECEIVE,
    RETAIN_PUBLISH,
    SUBSCRIBE,
    Decision,
    MalformedPolicy,
    PolicyDocument,
    PolicySet,
    allow_all_outside_reserved,
    client_arn,
    connection_variables,
    evaluate,
    glob_match,
    topic_arn,
    topicfilter_arn,
)
from harness.errors import ProtocolError

REGION = "eu-west-1"
ACCOUNT = "123456789012"
ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}"


def doc(*statements: dict[str, Any], version: str | None = "2012-10-17") -> PolicyDocument:
    body: dict[str, Any] = {"Statement": list(statements)}
    if version is not None:
        body["Version"] = version
    return PolicyDocument.parse(json.dumps(body))


def allow(action: str | list[str], resource: str | list[str]) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource}


def deny(action: str | list[str], resource: str | list[str]) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource}


# ARNs


def test_resource_arns() -> None:
    assert client_arn(REGION, ACCOUNT, "dev-1") == f"{ARN}:client/dev-1"
    assert topic_arn(REGION, ACCOUNT, "a/b") == f"{ARN}:topic/a/b"
    assert topicfilter_arn(REGION, ACCOUNT, "a/+/#") == f"{ARN}:topicfilter/a/+/#"


# Parsing


def test_parse_text_bytes_and_mapping() -> None:
    body = {
        "Version": "2012-10-17",
        "Id": "p1",
        "Statement": {"Sid": "one", "Effect": "Allow", "Action": "iot:*", "Resource": "*"},
    }
    from_text = PolicyDocument.parse(json.dumps(body))
    from_bytes = PolicyDocument.parse(json.dumps(body).encode())
    from_mapping = PolicyDocument.parse(body)
    assert from_text == from_bytes == from_mapping
    (statement,) = from_text.statements
    assert statement.effect == "Allow" and statement.sid == "one"
    assert statement.actions == ("iot:*",) and statement.resources == ("*",)
    assert json.loads(from_mapping.text) == body


def test_version_defaults_to_2008() -> None:
    assert doc(allow("iot:*", "*"), version=None).version == "2008-10-17"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param("{", "not valid JSON", id="bad-json"),
        pytest.param("[" * 100_000, "not valid JSON", id="deeply-nested-json"),
        pytest.param("[]", "must be a JSON object", id="not-an-object"),
        pytest.param('"x"', "must be a JSON object", id="a-string"),
        pytest.param({"Version": "2012-10-17"}, "Statement", id="no-statement"),
        pytest.param({"Statement": []}, "non-empty list", id="empty-statements"),
        pytest.param({"Statement": [5]}, "Statement[0] must be an object", id="statement-number"),
        pytest.param({"Version": "2020-01-01", "Statement": []}, "Version", id="bad-version"),
        pytest.param({"Foo": 1, "Statement": []}, "unknown top-level", id="unknown-top-level"),
        pytest.param(
            {"Statement": [{"Effect": "allow", "Action": "iot:*", "Resource": "*"}]},
            "Effect",
            id="effect-lowercase",
        ),
        pytest.param(
            {"Statement": [{"Effect": "Allow", "Resource": "*"}]},
            "Action is missing",
            id="no-action",
        ),
        pytest.param(
            {"Statement": [{"Effect": "Allow", "Action": [], "Resource": "*"}]},
            "non-empty list",
            id="empty-action-list",
        ),
        pytest.param(
            {"Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": ["a", 3]}]},
            "Resource holds a number",
            id="resource-number",
        ),
        pytest.param(
            {"Statement": [{"Effect": "Allow", "Action": "", "Resource": "*"}]},
            "non-empty strings",
            id="empty-action",
        ),
        pytest.param(
            {"Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*", "Sid": 1}]},
            "Sid",
            id="sid-number",
        ),
        pytest.param(
            {
                "Statement": [
                    {"Effect": "Allow", "Action": "iot:*", "Resource": "*", "Condition": {}}
                ]
            },
            "Condition blocks are not supported",
            id="condition-refused",
        ),
        pytest.param(
            {"Statement": [{"Effect": "Allow", "NotAction": "iot:*", "Resource": "*"}]},
            "NotAction",
            id="notaction-refused",
        ),
        pytest.param(
            {"Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*", "X": 1}]},
            "unknown element",
            id="unknown-statement-key",
        ),
    ],
)
def test_parse_errors(source: str | dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedPolicy, match=re.escape(message)) as info:
        PolicyDocument.parse(source)
    assert isinstance(info.value, ProtocolError)
    assert info.value.reason == "malformed-policy"


def test_parse_rejects_other_types() -> None:
    with pytest.raises(MalformedPolicy, match="JSON text or an object"):
        PolicyDocument.parse(cast(Any, 5))


def test_policy_set_names_the_bad_document() -> None:
    good = allow_all_outside_reserved(REGION, ACCOUNT)
    with pytest.raises(MalformedPolicy, match=r"policy document 1: .*not valid JSON"):
        PolicySet.parse([good, "{"])


# Matching


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        pytest.param("a/*", "a/b/c", True, id="star-crosses-slashes"),
        pytest.param("a/*", "a/", True, id="star-matches-empty"),
        pytest.param("a/*/c", "a/b/x/c", True, id="star-middle"),
        pytest.param("a/?", "a/b", True, id="question-one-char"),
        pytest.param("a/?", "a/bc", False, id="question-not-two"),
        pytest.param("a/?", "a/", False, id="question-not-zero"),
        pytest.param("a/#", "a/#", True, id="hash-literal-self"),
        pytest.param("a/#", "a/b", False, id="hash-not-wildcard"),
        pytest.param("a/+", "a/+", True, id="plus-literal-self"),
        pytest.param("a/+/c", "a/b/c", False, id="plus-not-wildcard"),
        pytest.param("a/$(*)", "a/*", True, id="dollar-paren-star-literal"),
        pytest.param("a/$(*)", "a/b", False, id="dollar-paren-star-not-wildcard"),
        pytest.param("a/$(?)", "a/?", True, id="dollar-paren-question-literal"),
        pytest.param("a/$(?)", "a/b", False, id="dollar-paren-question-not-wildcard"),
        pytest.param("$($)aws/x", "$aws/x", True, id="dollar-paren-dollar"),
        pytest.param("$aws/*", "$aws/things/t/shadow", True, id="plain-dollar-literal"),
        pytest.param("a/$(x)", "a/$(x)", True, id="other-dollar-paren-literal"),
        pytest.param("Topic", "topic", False, id="case-sensitive"),
        pytest.param("a**b", "ab", True, id="double-star"),
        pytest.param("*", "", True, id="star-empty"),
        pytest.param("", "", True, id="empty-empty"),
        pytest.param("", "a", False, id="empty-vs-text"),
        pytest.param("a*b*c", "abcabd", False, id="backtracking-fails"),
        pytest.param("a*b*c", "aXbYbZc", True, id="backtracking-succeeds"),
    ],
)
def test_glob_match(pattern: str, text: str, expected: bool) -> None:
    assert glob_match(pattern, text) is expected


@pytest.mark.parametrize(
    ("pattern", "variables", "text", "expected"),
    [
        pytest.param("a/${*}", {}, "a/*", True, id="brace-star-literal"),
        pytest.param("a/${?}", {}, "a/b", False, id="brace-question-not-wildcard"),
        pytest.param("a/${$}", {}, "a/$", True, id="brace-dollar-literal"),
        pytest.param("d/${iot:ClientId}", {"iot:ClientId": "c1"}, "d/c1", True, id="var"),
        pytest.param("d/${iot:ClientId}", {"iot:ClientId": "c1"}, "d/c2", False, id="var-other"),
        pytest.param("d/${IOT:clientid}", {"iot:ClientId": "c1"}, "d/c1", True, id="var-case"),
        pytest.param("d/${iot:ClientId}", {}, "d/", False, id="var-missing-never-matches"),
        pytest.param("d/${iot:ClientId}*", {}, "d/x", False, id="var-missing-with-star"),
        pytest.param("d/${iot:ClientId, 'x'}", {}, "d/x", True, id="var-default"),
        pytest.param("d/${iot:ClientId, x}", {}, "d/x", False, id="var-bad-default"),
        pytest.param("d/${iot:ClientId}", {"iot:ClientId": "*"}, "d/z", False, id="value-literal"),
        pytest.param("d/${iot:ClientId}", {"iot:ClientId": "*"}, "d/*", True, id="value-self"),
        pytest.param("d/${unterminated", {}, "d/${unterminated", True, id="unterminated"),
    ],
)
def test_glob_match_with_variables(
    pattern: str, variables: dict[str, str], text: str, expected: bool
) -> None:
    assert glob_match(pattern, text, variables=variables) is expected


def test_glob_match_without_variables_is_literal() -> None:
    assert glob_match("d/${iot:ClientId}", "d/${iot:ClientId}")
    assert glob_match("IOT:PUB*", "iot:publish", case_sensitive=False)


def test_pathological_pattern_is_fast() -> None:
    pattern = "*a" * 1000 + "b"
    start = time.perf_counter()
    assert not glob_match(pattern, "a" * 2000)
    assert time.perf_counter() - start < 2.0


# Evaluation


CLIENT = client_arn(REGION, ACCOUNT, "dev-1")
TOPIC = topic_arn(REGION, ACCOUNT, "dev/dev-1/status")


@pytest.mark.parametrize(
    ("documents", "action", "resource", "variables", "reason"),
    [
        pytest.param([], CONNECT, CLIENT, {}, "implicit-deny", id="no-documents"),
        pytest.param(
            [doc(allow("iot:Connect", f"{ARN}:client/dev-1"))],
            CONNECT,
            CLIENT,
            {},
            "allowed",
            id="exact",
        ),
        pytest.param(
            [doc(allow("iot:connect", f"{ARN}:client/*"))],
            CONNECT,
            CLIENT,
            {},
            "allowed",
            id="action-case-insensitive",
        ),
        pytest.param(
            [doc(allow("iot:*", "*"))], PUBLISH, TOPIC, {}, "allowed", id="iot-star-and-star"
        ),
        pytest.param([doc(allow("*", "*"))], RECEIVE, TOPIC, {}, "allowed", id="star-action"),
        pytest.param(
            [doc(allow("iot:Pub*", f"{ARN}:topic/*"))],
            PUBLISH,
            TOPIC,
            {},
            "allowed",
            id="action-prefix",
        ),
        pytest.param(
            [doc(allow("iot:Publish", f"{ARN}:topic/*"))],
            RETAIN_PUBLISH,
            TOPIC,
            {},
            "implicit-deny",
            id="other-action",
        ),
        pytest.param(
            [doc(allow("iot:Publish", f"{ARN}:topic/Dev/*"))],
            PUBLISH,
            TOPIC,
            {},
            "implicit-deny",
            id="resource-case-sensitive",
        ),
        pytest.param(
            [doc(allow("iot:Connect", f"{ARN}:client/${{iot:ClientId}}"))],
            CONNECT,
            CLIENT,
            {"iot:ClientId": "dev-1"},
            "allowed",
            id="client-id-variable",
        ),
        pytest.param(
            [doc(allow("iot:Connect", f"{ARN}:client/${{iot:ClientId}}"))],
            CONNECT,
            CLIENT,
            {"iot:ClientId": "dev-2"},
            "implicit-deny",
            id="client-id-variable-other",
        ),
        pytest.param(
            [doc(allow("iot:Connect", f"{ARN}:client/${{iot:Connection.Thing.ThingName}}"))],
            CONNECT,
            CLIENT,
            connection_variables(client_id="dev-1"),
            "implicit-deny",
            id="thing-name-without-thing",
        ),
        pytest.param(
            [doc(allow("iot:Connect", f"{ARN}:client/${{iot:Connection.Thing.ThingName}}"))],
            CONNECT,
            CLIENT,
            connection_variables(client_id="x", thing_name="dev-1"),
            "allowed",
            id="thing-name-attached",
        ),
        pytest.param(
            [doc(allow("iot:Publish", f"{ARN}:topic/dev/${{iot:ClientId}}/*"), version=None)],
            PUBLISH,
            TOPIC,
            {"iot:ClientId": "dev-1"},
            "implicit-deny",
            id="2008-version-variables-literal",
        ),
        pytest.param(
            [
                doc(
                    allow(
                        "iot:Subscribe",
                        f"{ARN}:topicfilter/${{cognito-identity.amazonaws.com:sub}}/#",
                    )
                )
            ],
            SUBSCRIBE,
            topicfilter_arn(REGION, ACCOUNT, "eu-west-1:abc/#"),
            connection_variables(cognito_identity_id="eu-west-1:abc"),
            "allowed",
            id="cognito-sub",
        ),
        pytest.param(
            [doc(allow("iot:Subscribe", f"{ARN}:topicfilter/a/#"))],
            SUBSCRIBE,
            topicfilter_arn(REGION, ACCOUNT, "a/b"),
            {},
            "implicit-deny",
            id="hash-literal-in-topicfilter",
        ),
        pytest.param(
            [doc(allow("iot:Subscribe", f"{ARN}:topicfilter/a/+"))],
            SUBSCRIBE,
            topicfilter_arn(REGION, ACCOUNT, "a/+"),
            {},
            "allowed",
            id="plus-filter-allowed-literally",
        ),
        pytest.param(
            [doc(allow("iot:*", "*"), deny("iot:Publish", f"{ARN}:topic/dev/*"))],
            PUBLISH,
            TOPIC,
            {},
            "explicit-deny",
            id="deny-wins-same-document",
        ),
        pytest.param(
            [doc(deny("iot:Publish", f"{ARN}:topic/dev/*")), doc(allow("iot:*", "*"))],
            PUBLISH,
            TOPIC,
            {},
            "explicit-deny",
            id="deny-wins-across-documents",
        ),
        pytest.param(
            [doc(allow("iot:*", "*"), deny("iot:Publish", f"{ARN}:topic/other/*"))],
            PUBLISH,
            TOPIC,
            {},
            "allowed",
            id="non-matching-deny",
        ),
        pytest.param(
            [doc(allow("iot:*", "*"), deny("iot:Publish", f"{ARN}:topic/${{iot:ClientId}}"))],
            PUBLISH,
            TOPIC,
            {},
            "allowed",
            id="deny-with-unresolved-variable-does-not-match",
        ),
    ],
)
def test_evaluate(
    documents: list[PolicyDocument],
    action: str,
    resource: str,
    variables: dict[str, str],
    reason: str,
) -> None:
    decision = evaluate(documents, action=action, resource=resource, variables=variables)
    assert decision.reason == reason
    assert decision.allowed is (reason == "allowed")
    assert decision.action == action and decision.resource == resource


def test_decision_names_the_deciding_statement() -> None:
    documents = [
        doc(allow("iot:Connect", "*")),
        doc(
            allow("iot:*", "*"),
            {"Sid": "noDev", "Effect": "Deny", "Action": "iot:Publish", "Resource": "*dev*"},
        ),
    ]
    denied = evaluate(documents, action=PUBLISH, resource=TOPIC, variables={})
    assert (denied.document_index, denied.statement_index) == (1, 1)
    assert denied.matched_resource == "*dev*" and denied.sid == "noDev"
    assert "explicitly denied by document 1 statement 1 (noDev)" in denied.explain
    assert denied.disconnect_reason == "FORBIDDEN_ACCESS"

    allowed = evaluate(documents, action=CONNECT, resource=CLIENT)
    assert (allowed.document_index, allowed.statement_index) == (0, 0)
    assert "is allowed by document 0 statement 0" in allowed.explain
    assert allowed.disconnect_reason is None

    nothing = evaluate(documents[:1], action=RECEIVE, resource=TOPIC)
    assert nothing.document_index is None and "implicit deny" in nothing.explain
    assert nothing.disconnect_reason is None  # a denied Receive only drops the message


def test_policy_set_allows() -> None:
    policies = PolicySet.parse([json.dumps({"Statement": allow("iot:Connect", "*")})])
    assert policies.allows(CONNECT, CLIENT)
    assert not policies.allows(PUBLISH, TOPIC)
    assert isinstance(policies.evaluate(CONNECT, CLIENT), Decision)
    assert not PolicySet().allows(CONNECT, CLIENT)


def test_connection_variables() -> None:
    assert connection_variables(client_id="c", thing_name="t", extra={"k": "v"}) == {
        "iot:ClientId": "c",
        "iot:Connection.Thing.ThingName": "t",
        "iot:Connection.Thing.IsAttached": "true",
        "k": "v",
    }
    assert connection_variables()["iot:Connection.Thing.IsAttached"] == "false"


@pytest.mark.parametrize(
    ("action", "resource", "allowed"),
    [
        pytest.param(CONNECT, client_arn(REGION, ACCOUNT, "anything"), True, id="connect"),
        pytest.param(PUBLISH, topic_arn(REGION, ACCOUNT, "a/b"), True, id="publish"),
        pytest.param(RECEIVE, topic_arn(REGION, ACCOUNT, "a/b"), True, id="receive"),
        pytest.param(SUBSCRIBE, topicfilter_arn(REGION, ACCOUNT, "a/#"), True, id="subscribe"),
        pytest.param(SUBSCRIBE, topicfilter_arn(REGION, ACCOUNT, "#"), True, id="subscribe-all"),
        pytest.param(
            PUBLISH, topic_arn(REGION, ACCOUNT, "$aws/things/t/shadow/update"), False, id="shadow"
        ),
        pytest.param(
            RECEIVE,
            topic_arn(REGION, ACCOUNT, "$aws/events/presence/connected/c"),
            False,
            id="lifecycle",
        ),
        pytest.param(
            SUBSCRIBE, topicfilter_arn(REGION, ACCOUNT, "$aws/things/+/jobs/#"), False, id="jobs"
        ),
        pytest.param(PUBLISH, topic_arn("us-east-1", ACCOUNT, "a"), False, id="other-region"),
        pytest.param(RETAIN_PUBLISH, topic_arn(REGION, ACCOUNT, "a"), True, id="retain"),
    ],
)
def test_allow_all_outside_reserved(action: str, resource: str, allowed: bool) -> None:
    policies = PolicySet.parse([allow_all_outside_reserved(REGION, ACCOUNT)])
    assert policies.allows(action, resource) is allowed


# Properties

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["Version", "Statement", "Effect", "Action", "Resource", "Sid", "x"])
            | st.text(max_size=5),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)
_statement = st.fixed_dictionaries(
    {
        "Effect": st.sampled_from(["Allow", "Deny", "allow", 1]),
        "Action": st.one_of(st.text(), st.lists(st.text(), max_size=3), st.integers()),
        "Resource": st.one_of(st.text(), st.lists(st.text(), max_size=3), st.none()),
    }
)


@given(st.text() | st.binary())
def test_parse_random_text_raises_only_malformed_policy(source: str | bytes) -> None:
    with contextlib.suppress(MalformedPolicy):
        PolicyDocument.parse(source)


@given(_json)
def test_parse_random_json_raises_only_malformed_policy(value: object) -> None:
    with contextlib.suppress(MalformedPolicy):
        PolicyDocument.parse(json.dumps(value))
    if isinstance(value, dict):
        with contextlib.suppress(MalformedPolicy):
            PolicyDocument.parse(value)


@given(
    st.sampled_from(["2012-10-17", "2008-10-17"]),
    st.lists(_statement, min_size=1, max_size=3),
    st.text(),
    st.text(),
)
def test_parse_and_evaluate_near_valid_documents(
    version: str, statements: list[dict[str, Any]], action: str, resource: str
) -> None:
    try:
        document = PolicyDocument.parse({"Version": version, "Statement": statements})
    except MalformedPolicy:
        return
    decision = evaluate([document], action=action, resource=resource, variables={})
    assert decision.reason in ("allowed", "explicit-deny", "implicit-deny")


_plain = st.text(st.characters(exclude_characters="*?$", exclude_categories=["Cs"]))


@given(_plain)
def test_literal_resource_matches_itself(resource: str) -> None:
    assert glob_match(resource, resource)
    assert glob_match(resource, resource, variables={})
    document = PolicyDocument.parse(
        {"Version": "2012-10-17", "Statement": allow("iot:Publish", resource or "x")}
    )
    assert evaluate(
        [document], action="iot:publish", resource=resource or "x", variables={}
    ).allowed


def _reference(pattern: str, text: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, flags=re.DOTALL) is not None


@given(st.text("ab*?", max_size=8), st.text("ab", max_size=10))
def test_matcher_agrees_with_regex_reference(pattern: str, text: str) -> None:
    assert glob_match(pattern, text) is _reference(pattern, text)
