"""The technician's page speaks Simplified Chinese and English: both catalogues hold the same
keys with the same placeholders, every key the page uses is in them, and every value the
server names (device states, machine status, types, alarms…) has a message in both."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from drivers.base import DeviceState
from gateway.auth import Role
from gateway.equipment.availability import Level
from gateway.equipment.model import WEEKDAYS, MachineType, Rate, Status
from gateway.equipment.problems import TRANSLATED_CODES
from gateway.inference.engine import BUDGET_ALARM, ModelState
from gateway.readings import Quality

ROOT = Path(__file__).parents[2]
STATIC = ROOT / "gateway" / "web" / "static"
CATALOGUE = json.loads((STATIC / "messages.json").read_text(encoding="utf-8"))
LANGS = ("zh-CN", "en")
CJK = re.compile(r"[\u4e00-\u9fff]")


def _scripts() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in STATIC.glob("*.js")}


def test_both_languages_have_the_same_keys_and_placeholders() -> None:
    assert set(CATALOGUE) == set(LANGS)
    zh, en = CATALOGUE["zh-CN"], CATALOGUE["en"]
    assert set(zh) == set(en), set(zh) ^ set(en)
    for key in zh:
        assert zh[key].strip() and en[key].strip(), key
        assert set(re.findall(r"\{(\w+)\}", zh[key])) == set(re.findall(r"\{(\w+)\}", en[key])), key
    # Chinese really is Chinese where the English has words (ids, units and "EN" aside)
    worded = [k for k, v in en.items() if re.search(r"[a-z]{3,}", v) and not CJK.search(v)]
    untranslated = [k for k in worded if not CJK.search(zh[k])]
    assert not untranslated, untranslated


def test_every_key_the_page_uses_is_in_the_catalogue() -> None:
    keys = set(CATALOGUE["en"])
    namespaces = {k.split(".")[0] for k in keys}
    used: dict[str, str] = {}
    for name, text in _scripts().items():
        for line in text.splitlines():
            if "AUDIT_ACTIONS" in line:  # audit action names, not messages
                continue
            for literal in re.findall(r'"([a-z_]+\.[a-z0-9_]+)"', line):
                if literal.split(".")[0] in namespaces:
                    used[literal] = name
        # a key built at run time would escape this test: the page writes keys out in full
        assert not re.search(r"\bt\(\s*`", text), f"{name}: t() with a template string"
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    for literal in re.findall(r'data-i18n(?:-[a-z-]+)?="([^"]+)"', html):
        used[literal] = "index.html"
    missing = {k: where for k, where in used.items() if k not in keys}
    assert not missing, missing
    assert len(used) > 150  # the scan found the page's keys, not nothing


def test_values_the_server_names_have_messages() -> None:
    """`tv(prefix, value)` shows these; a missing one would show the raw English value."""
    manifests = [yaml.safe_load(p.read_text()) for p in (ROOT / "models").glob("*/manifest.yaml")]
    alarms = {BUDGET_ALARM}
    for m in manifests:
        text = json.dumps(m)
        alarms |= set(re.findall(r'"alarm": "([a-z_]+)"', text))
    families = {
        "device.": {s.value for s in DeviceState},
        "quality.": {q.name.lower() for q in Quality},
        "model.": {v for k, v in vars(ModelState).items() if k.isupper()},
        "status.": {s.value for s in Status},
        "type.": {t.value for t in MachineType},
        "available.": {level.value for level in Level},
        "role.": {str(r) for r in Role},
        "day.": set(WEEKDAYS),
        "per.": set(Rate.model_fields["per"].annotation.__args__),  # type: ignore[union-attr]
        "booking.": {"confirmed", "cancelled"},
        "alarm.": alarms,
    }
    used_prefixes = set()
    for text in _scripts().values():
        used_prefixes |= set(re.findall(r'tv\("([a-z_]+\.)"', text))
        used_prefixes |= set(re.findall(r'select\([A-Z_]+, [^,]+, "([a-z_]+\.)"', text))
    assert used_prefixes <= set(families) | {"uplink."}, used_prefixes - set(families)
    for lang in LANGS:
        for prefix, values in families.items():
            missing = sorted(v for v in values if prefix + v not in CATALOGUE[lang])
            assert not missing, (lang, prefix, missing)
    assert {"failure_predicted", "maintenance_due"} <= alarms


def test_the_page_defaults_to_chinese() -> None:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    assert '<html lang="zh-CN">' in html
    i18n = _scripts()["i18n.js"]
    assert 'const DEFAULT = "zh-CN"' in i18n and "localStorage" in i18n


def test_every_validation_problem_code_has_a_message_with_its_params() -> None:
    """The form shows the API's validation problems by code (`problem.<code>`, view_form.js
    `problemText`); a code without a message would fall back to English in a Chinese page,
    and a placeholder the API does not send would show as `{name}`."""
    for lang in LANGS:
        for code, params in TRANSLATED_CODES.items():
            text = CATALOGUE[lang].get(f"problem.{code}")
            assert text, (lang, code)
            assert set(re.findall(r"\{(\w+)\}", text)) <= set(params), (lang, code, text)
        assert set(re.findall(r"\{(\w+)\}", CATALOGUE[lang]["problem.got"])) == {"text", "got"}
    stray = {k for k in CATALOGUE["en"] if k.startswith("problem.")} - {
        f"problem.{c}" for c in TRANSLATED_CODES
    }
    assert stray == {"problem.got", "problem.list_sep"}, stray
    form = _scripts()["view_form.js"]
    assert "`problem.${problem.code}`" in form  # the one place the page builds these keys


def test_the_forms_choices_are_the_models() -> None:
    """The form offers machine types, weekdays and rate units from lists of its own (the page
    has no build step to generate them): they must be exactly what the API accepts, or a
    type added to the model could not be chosen and a removed one would be refused."""
    form = _scripts()["view_form.js"]

    def listed(name: str) -> list[str]:
        found = re.search(rf"const {name} = \[(.*?)\];", form, re.S)
        assert found, name
        return re.findall(r'"([a-z_]+)"', found.group(1))

    assert listed("TYPES") == [t.value for t in MachineType]
    assert listed("DAYS") == list(WEEKDAYS)
    assert listed("RATE_PER") == list(Rate.model_fields["per"].annotation.__args__)  # type: ignore[union-attr]
