"""Bad input: bad models promoted, the OpenAPI spec fuzzed, invalid settings and catalog rules."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

from harness import stack as st
from harness.embedded import free_port
from harness.reliability.load import (
    Result,
    open_loop,
    recommend_maker,
    summarise,
)
from harness.reliability.stack import (
    Background,
    Outcome,
    load_avg,
    private_stack,
)
from infra.registry import Registry
from infra.settings import Settings


def bad_models(rate: float = 200.0, seconds: float = 10.0) -> Outcome:
    """Promote bad models through the admin API and through the registry pointer (``benefits promote``)
    against a running API under load; then a good one."""
    out = Outcome(
        "Bad model promoted",
        f"recommend open-loop at {rate:.0f}/s; corrupt, truncated and schema-mismatched versions promoted "
        "via POST /v1/admin/models/{v}/promote and via the registry pointer; then good v2",
    )
    with private_stack() as s:
        reg = Registry(s.settings.registry_dir)

        bg = Background(
            lambda: open_loop(s.base, s.storefront_key, recommend_maker(s.members), rate, seconds)
        )
        time.sleep(1.0)
        api_refusals: dict[str, Any] = {}
        with httpx.Client(base_url=s.base, headers=s.admin, timeout=10) as c:
            for v in ("bad-corrupt", "bad-truncated", "bad-schema"):
                r = c.post(f"/v1/admin/models/{v}/promote")
                api_refusals[v] = {"status": r.status_code, "message": r.json().get("message", "")[:160]}
            serving_after_api = c.get("/v1/admin/models").json()["serving"]
            pointer_refusals: dict[str, Any] = {}
            for v in ("bad-corrupt", "bad-truncated", "bad-schema"):
                reg.promote(v)  # what `benefits promote VERSION` does; the API's poller must refuse it
                time.sleep(1.2)
                status = c.get("/v1/admin/models").json()
                refused = {x["version"]: x for x in status["refused"]}
                pointer_refusals[v] = {
                    "serving": status["serving"],
                    "reason": refused.get(v, {}).get("reason"),
                }
            reg.promote("v1")
            time.sleep(0.5)
            good = c.post("/v1/admin/models/v2/promote")
            serving_end = c.get("/v1/admin/models").json()["serving"]
        rec: list[Result] = bg.join()
        logtext = s.api_log()

    expected = {"bad-corrupt": "corrupt", "bad-truncated": "corrupt", "bad-schema": "schema_mismatch"}
    out.numbers = {
        "admin_api": api_refusals,
        "registry_pointer": pointer_refusals,
        "good_promote_status": good.status_code,
        "serving_at_end": serving_end,
        "recommend": summarise(rec),
        "load": load_avg(),
    }
    out.check(
        "admin API: each bad version refused (422) with its reason, v1 still serving",
        all(
            api_refusals[v]["status"] == 422 and f"({reason})" in api_refusals[v]["message"]
            for v, reason in expected.items()
        )
        and serving_after_api == "v1",
    )
    out.check(
        "registry pointer: each bad version refused by the poller with its reason, v1 still serving",
        all(pointer_refusals[v] == {"serving": "v1", "reason": reason} for v, reason in expected.items()),
    )
    out.check("refusals logged with the reason", all(f"model {v} refused" in logtext for v in expected))
    out.check("good v2 swapped in", good.status_code == 200 and serving_end == "v2")
    out.check(
        "recommend: zero 5xx, never degraded by a model (no_model / model_error)",
        all(r.status == 200 and r.info not in ("no_model", "model_error") for r in rec),
    )
    out.check(
        "recommend: every answer personalised (no state-read timeouts under load)",
        all(r.info == "personalised" for r in rec),
        timing=True,
    )
    return out


#: Checks switched off for one operation, each with its reason (written into the config file and the
#: report). Everything else runs with ``--checks all``.
SCHEMATHESIS_EXCEPTIONS: dict[tuple[str, str, str], str] = {
    ("GET", "/v1/admin/offers/{offer_id}", "use_after_free"): (
        "DELETE /v1/admin/offers/{offer_id} retires an offer: it stays in the catalogue as inactive "
        "(active: false), readable by id and in the list, because explain answers, claim history and the "
        "console refer to it; a PUT with active: true brings it back. A 404 after it would be wrong."
    ),
}

#: Hooks that keep positive bodies within the rules between fields JSON Schema cannot state.
SCHEMATHESIS_HOOKS = "harness.reliability.schemathesis_hooks"


def _schemathesis_config(path: Path, members: Sequence[str], models: Sequence[str]) -> None:
    lines = [f"# Written by harness/reliability/scenarios_input.py; hooks: {SCHEMATHESIS_HOOKS}", ""]
    # Ids that exist (members with state, registry versions) half of the time, so the routes that read
    # them reach their 200 answers too (nothing in the API creates them for a link to follow).
    lines += ["[dictionaries.members]", f"values = {list(members)!r}".replace("'", '"'),
              "[dictionaries.models]", f"values = {list(models)!r}".replace("'", '"'),
              "[parameters]",
              '"path.member_id" = { dictionary = "members", probability = 0.5 }',
              '"path.version" = { dictionary = "models", probability = 0.5 }', ""]  # fmt: skip
    for (method, op_path, check), reason in SCHEMATHESIS_EXCEPTIONS.items():
        lines += [f"# {reason}", "[[operations]]", f'include-path = "{op_path}"',
                  f'include-method = "{method}"', f"checks.{check}.enabled = false", ""]  # fmt: skip
    path.write_text("\n".join(lines))


def _stateful(stdout: str) -> dict[str, Any]:
    """The stateful phase's lines of the CLI output: scenarios run and OpenAPI links covered."""
    out: dict[str, Any] = {}
    m = re.search(r"Stateful \(in ([0-9.]+)s\)", stdout)
    if m:
        out["seconds"] = float(m.group(1))
    m = re.search(r"Scenarios:\s+(\d+)", stdout)
    out["scenarios"] = int(m.group(1)) if m else 0
    m = re.search(
        r"API Links:\s+(\d+) covered / (\d+) selected / (\d+) total(?: \((\d+) inferred\))?", stdout
    )
    if m:
        out["links_covered"], out["links_selected"] = int(m.group(1)), int(m.group(2))
        out["links_inferred"] = int(m.group(4) or 0)
    return out


def schemathesis_run(max_examples: int = 25, seed: int = 1, output_dir: Path | None = None) -> Outcome:
    """The running app's OpenAPI spec fuzzed once per key scope (storefront, admin) by the schemathesis
    CLI: every check (``--checks all``, exceptions in :data:`SCHEMATHESIS_EXCEPTIONS` with their
    reasons), every phase including the stateful one over the document's OpenAPI links,
    ``max_examples`` per operation."""
    exe = Path(sys.executable).with_name("schemathesis")
    out = Outcome(
        "Schemathesis (OpenAPI fuzzing)",
        f"schemathesis --checks all, {max_examples} examples/operation, phases examples, coverage, "
        "fuzzing and stateful (OpenAPI links), once with a storefront key and once with an admin key, "
        f"against `benefits serve`; {len(SCHEMATHESIS_EXCEPTIONS)} check(s) off for one operation each, "
        "with the reason in the notes",
    )
    out.notes += [f"{m} {p}: {c} off: {r}" for (m, p, c), r in SCHEMATHESIS_EXCEPTIONS.items()]
    with private_stack(members=20) as s, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "schemathesis.toml"
        _schemathesis_config(config, s.members[:5], ["v1", "v2"])
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": SCHEMATHESIS_HOOKS,
            "BENEFITS_ST_MODEL_VERSIONS": "v1,v2",  # the good versions of private_stack's registry
            "BENEFITS_ST_MEMBER_TTL_SECONDS": str(s.settings.member_ttl_seconds),
            "BENEFITS_ST_EVENT_MAX_FUTURE_SKEW_SECONDS": str(s.settings.event_max_future_skew_seconds),
        }
        for scope, key in (("storefront", s.storefront_key), ("admin", s.admin_key)):
            t0 = time.perf_counter()
            # One worker: schemathesis' coverage phase with two threads hit a CPython 3.11 race in
            # ast.parse ("AST constructor recursion depth mismatch") here.
            proc = subprocess.run(
                [str(exe), "--config-file", str(config), "run", f"{s.base}/openapi.json",
                 "-H", f"X-API-Key: {key}", "--checks", "all", "--max-examples", str(max_examples),
                 "--seed", str(seed), "--workers", "1", "--no-color", "--generation-database", "none"],
                capture_output=True, text=True, cwd=tmp, env=env, timeout=600, check=False,
            )  # fmt: skip
            if output_dir is not None:
                (output_dir / f"schemathesis-{scope}.txt").write_text(proc.stdout + proc.stderr)
            tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
            cases = None
            for line in proc.stdout.splitlines():
                if "generated" in line and ("passed" in line or "found" in line):
                    cases = line.strip()
            stateful = _stateful(proc.stdout)
            out.numbers[scope] = {
                "exit_code": proc.returncode,
                "test_cases": cases,
                "stateful": stateful,
                "summary": tail.strip("= "),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            out.check(f"{scope} key: every check passes (no 5xx, conformance, positive/negative data, Allow)",
                      proc.returncode == 0)  # fmt: skip
            out.check(f"{scope} key: the stateful phase ran scenarios over OpenAPI links",
                      stateful.get("scenarios", 0) > 0 and stateful.get("links_covered", 0) > 0)  # fmt: skip
            if proc.returncode != 0:
                out.notes.append(f"{scope}: " + _failures(proc.stdout))
        out.check("API alive afterwards", s.api is not None and s.api.alive())
    return out


def _failures(stdout: str) -> str:
    """The FAILURES section of the CLI output (without tracebacks), bounded."""
    text = stdout.split("= FAILURES =", 1)[-1] if "= FAILURES =" in stdout else stdout
    keep = [ln for ln in text.splitlines() if ln.strip() and 'File "' not in ln and "^^^" not in ln]
    return "\n".join(keep)[-4000:]


#: (what, Settings keyword arguments, a fragment the error must contain)
BAD_SETTINGS: list[tuple[str, dict[str, Any], str]] = [
    (
        "prod with the dev API keys",
        {
            "environment": "prod",
            "redis_url": "redis://r:6379/0",
            "kafka_bootstrap": "k:9092",
            "member_hash_salt": "s" * 16,
        },
        "development API keys",
    ),
    (
        "prod with the dev salt",
        {
            "environment": "prod",
            "redis_url": "redis://r:6379/0",
            "kafka_bootstrap": "k:9092",
            "storefront_api_keys": ["p" * 24],
            "admin_api_keys": ["a" * 24],
        },
        "MEMBER_HASH_SALT",
    ),
    (
        "prod without Redis / broker",
        {
            "environment": "prod",
            "member_hash_salt": "s" * 16,
            "storefront_api_keys": ["p" * 24],
            "admin_api_keys": ["a" * 24],
        },
        "needs BENEFITS_REDIS_URL",
    ),
    ("bad topic name", {"events_topic": "member events!"}, "events_topic"),
    ("bad dead-letter topic name", {"dead_letter_topic": ""}, "dead_letter_topic"),
    ("negative member TTL", {"member_ttl_seconds": -1}, "member_ttl_seconds"),
    ("zero stats TTL", {"stats_ttl_seconds": 0}, "stats_ttl_seconds"),
    ("short API key", {"storefront_api_keys": ["short"]}, "at least 12 characters"),
    ("redis prefix with a colon", {"redis_prefix": "bn:x"}, "redis_prefix"),
    ("zero deadline", {"deadline_ms": 0}, "deadline_ms"),
    ("zero max_in_flight", {"max_in_flight": 0}, "max_in_flight"),
    ("tiny body limit", {"max_body_bytes": 10}, "max_body_bytes"),
    ("unknown setting (typo)", {"redis_ulr": "redis://x"}, "redis_ulr"),
    ("unknown log level", {"log_level": "LOUD"}, "log_level"),
]


def settings_refusals() -> list[dict[str, Any]]:
    """Each bad settings case: refused at construction, with the field or rule named in the message."""
    from pydantic import ValidationError

    rows = []
    for what, kwargs, fragment in BAD_SETTINGS:
        try:
            Settings(**kwargs)
        except ValidationError as exc:
            msg = str(exc)
            rows.append(
                {"case": what, "refused": True, "named": fragment in msg, "message": msg.splitlines()[1:3]}
            )
        else:
            rows.append({"case": what, "refused": False, "named": False, "message": ""})
    return rows


def serve_refuses(env: dict[str, str], timeout_s: float = 60.0) -> tuple[int | None, str]:
    """Run ``benefits serve`` with extra ``BENEFITS_*`` env; (exit code, output). None: still running."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("BENEFITS_")}
    base.update({"BENEFITS_ENVIRONMENT": "test", "BENEFITS_PORT": str(free_port()), **env})
    proc = subprocess.Popen(
        [sys.executable, "-m", "benefits.cli", "serve"],
        env=base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        return None, output.decode(errors="replace")
    return proc.returncode, output.decode(errors="replace")


def _offer(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"offer_id": "rel-new", "kind": "coupon", "subtype": "category", "title": "5 off",
                            "category": "baby", "value": 5.0, "threshold": 50.0, "cost": 3.0}  # fmt: skip
    base.update(kw)
    return base


#: (what, raw JSON body for POST /v1/admin/offers, a fragment the 422 message must contain)
BAD_OFFERS: list[tuple[str, bytes, str]] = [
    ("subtype not of its kind", orjson.dumps(_offer(subtype="free_shipping")), "subtype"),
    ("unknown category", orjson.dumps(_offer(category="spaceships")), "category"),
    ("negative value", orjson.dumps(_offer(value=-1)), "value"),
    ("negative inventory", orjson.dumps(_offer(inventory=-5)), "inventory"),
    ("budget without cost", orjson.dumps(_offer(budget=100.0, cost=0)), "positive cost"),
    (
        "campaign end before start",
        orjson.dumps(_offer(campaign_start_ts=2e9, campaign_end_ts=1e9)),
        "campaign_end_ts",
    ),
    ("campaign start without end", orjson.dumps(_offer(campaign_start_ts=2e9)), "go together"),
    (
        "validity window reversed",
        orjson.dumps(_offer(eligibility={"valid_from_ts": 2e9, "valid_to_ts": 1e9})),
        "valid_to_ts",
    ),
    ("unknown tier", orjson.dumps(_offer(eligibility={"tiers": ["platinum"]})), "tiers"),
    ("zero impressions cap", orjson.dumps(_offer(caps={"max_impressions_without_action": 0})), "caps"),
    ("unknown field", orjson.dumps(_offer(discount_pct=10)), "discount_pct"),
    ("bad offer id", orjson.dumps(_offer(offer_id="has space")), "offer_id"),
    ("NaN value", orjson.dumps(_offer()).replace(b'"value":5.0', b'"value":NaN'), "value"),
    (
        "NaN validity bound",
        orjson.dumps(_offer()).replace(b'"cost":3.0', b'"cost":3.0,"eligibility":{"valid_to_ts":NaN}'),
        "valid_to_ts",
    ),
]


def catalog_refusals(base: str, admin: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    with httpx.Client(base_url=base, headers={**admin, "Content-Type": "application/json"}, timeout=10) as c:
        for i, (what, body, fragment) in enumerate(BAD_OFFERS):
            r = c.post("/v1/admin/offers", content=body.replace(b'"rel-new"', f'"rel-bad-{i}"'.encode()))
            msg = (
                r.json().get("message", "")
                if r.headers.get("content-type", "").startswith("application/json")
                else r.text
            )
            rows.append(
                {"case": what, "status": r.status_code, "named": fragment in msg, "message": msg[:140]}
            )
        listed = {o["offer_id"] for o in c.get("/v1/admin/offers").json()["offers"]}
    for i, row in enumerate(rows):
        row["stored"] = f"rel-bad-{i}" in listed
    return rows


def bad_input() -> Outcome:
    out = Outcome(
        "Invalid settings and catalog rules",
        f"{len(BAD_SETTINGS)} bad Settings(...) cases; `benefits serve` with a bad env and with an invalid "
        f"catalog seed file; {len(BAD_OFFERS)} invalid offers POSTed to the admin API",
    )
    rows = settings_refusals()
    out.numbers["settings"] = rows
    out.check(
        "every bad setting refused, naming the field or rule", all(r["refused"] and r["named"] for r in rows)
    )
    code, text = serve_refuses({"BENEFITS_MEMBER_TTL_SECONDS": "-5"})
    out.numbers["serve_with_negative_ttl"] = {"exit_code": code, "names_field": "member_ttl_seconds" in text}
    out.check(
        "`benefits serve` with a negative TTL exits non-zero naming it",
        code not in (0, None) and "member_ttl_seconds" in text,
    )
    with private_stack(members=0, api=False) as s:
        seed = s.workdir / "bad-seed.json"
        seed.write_bytes(orjson.dumps([_offer(subtype="free_shipping")]))
        env = {k: v for k, v in st.settings_env(s.settings).items()}
        env["BENEFITS_CATALOG_SEED_PATH"] = str(seed)
        code, text = serve_refuses(env)
        out.numbers["serve_with_invalid_seed"] = {"exit_code": code, "names_field": "subtype" in text}
        out.check("`benefits serve` with an invalid catalog seed exits non-zero naming the rule",
                  code not in (0, None) and "subtype" in text)  # fmt: skip
        s.start_api()
        offers = catalog_refusals(s.base, s.admin)
    out.numbers["offers"] = offers
    out.check("every invalid offer refused with 422 naming the field or rule",
              all(r["status"] == 422 and r["named"] for r in offers))  # fmt: skip
    out.check("no invalid offer stored", not any(r["stored"] for r in offers))
    return out
