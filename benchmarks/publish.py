"""Publish a benchmark's measured figures into a bundle: ``eval_metrics`` of ``configs/metadata.json``
and a marked block of ``docs/README.md``. Figures there are written by the benchmark that measured
them, never by hand (issue 17: calf_mri's metadata quoted a Dice of weights it no longer shipped).

    from publish import publish
    publish("calf_mri", "benchmarks/heldout_proxy.py", {"mean_dice_...": 0.903, ...},
            results="benchmarks/results/heldout_proxy.md", command="... --publish", readme=markdown)

* ``eval_metrics`` keeps figures of several sources side by side: ``eval_metrics["provenance"]``
  maps each source (the benchmark file) to its figures' names, result file, date, machine and
  command. Publishing again from the same source replaces exactly its own figures; the others'
  stay. A figure without a provenance entry (``unexplained_figures``) is dropped on publishing.
* Only the ``"eval_metrics"`` value of ``metadata.json`` is rewritten, in place in the text: the rest
  of the file (other engineers edit ``network_data_format`` in the same files) stays byte for byte.
* ``readme``: Markdown put between ``<!-- published by SOURCE: begin -->`` and ``<!-- ... end -->``
  in the bundle's ``docs/README.md`` (appended under "Published figures" the first time).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROVENANCE = "provenance"


def machine() -> str:
    """CPU model, logical CPUs, memory, torch threads, load average: which machine measured it."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [cpu, f"{os.cpu_count()} logical CPUs"]
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        parts.append(f"{kb / 1024 ** 2:.1f} GB")
    except (OSError, StopIteration, ValueError):
        pass
    try:
        import torch

        parts.append(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    except ImportError:
        pass
    parts.append(f"load average {os.getloadavg()[0]:.2f} at publishing")
    return ", ".join(parts)


def today() -> str:
    return datetime.date.today().isoformat()


def _value_span(text: str, key: str) -> tuple[int, int, str]:
    """Start/end offsets of the JSON value of top-level ``key`` in ``text`` and the key's indentation."""
    match = re.search(r'^([ \t]*)"' + re.escape(key) + r'"\s*:\s*', text, flags=re.MULTILINE)
    if match is None:
        raise KeyError(key)
    start = match.end()
    if text[start] != "{":
        raise ValueError(f"{key} is not an object")
    depth, i, in_string = 0, start, False
    while i < len(text):
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return start, i + 1, match.group(1)
        i += 1
    raise ValueError(f"unbalanced braces after {key}")


def splice_eval_metrics(text: str, eval_metrics: dict) -> str:
    """``text`` of a metadata.json with only the value of ``"eval_metrics"`` replaced."""
    document = json.loads(text)
    start, end, indent = _value_span(text, "eval_metrics")
    value = json.dumps(eval_metrics, indent=4, ensure_ascii=False).replace("\n", "\n" + indent)
    out = text[:start] + value + text[end:]
    after = json.loads(out)
    document["eval_metrics"] = eval_metrics
    assert after == document, "splicing eval_metrics changed something else"
    return out


def merged_eval_metrics(current: dict, source: str, figures: dict, record: dict) -> dict:
    """``current`` with ``source``'s previously published figures replaced by ``figures``; figures
    no source claims (written by hand) are dropped, with a printed note."""
    current = json.loads(json.dumps(current or {}))
    for name in unexplained_figures(current):
        print(f"publish: dropping {name}={current.pop(name)!r} from eval_metrics: no benchmark published it")
    provenance = current.pop(PROVENANCE, {})
    for name in provenance.get(source, {}).get("figures", []):
        current.pop(name, None)
    clash = {k for k in figures if k in current or k == PROVENANCE}
    if clash:
        owners = {k: [s for s, p in provenance.items() if k in p.get("figures", [])] for k in clash}
        raise ValueError(f"{source}: figure names already published by another source: {owners}")
    provenance[source] = {"figures": list(figures), **record}
    return {**current, **figures, PROVENANCE: provenance}


def unexplained_figures(eval_metrics: dict) -> list[str]:
    """Figures of ``eval_metrics`` that no provenance entry claims."""
    claimed = {n for p in eval_metrics.get(PROVENANCE, {}).values() for n in p.get("figures", [])}
    return sorted(k for k in eval_metrics if k != PROVENANCE and k not in claimed)


def replace_readme_block(text: str, source: str, markdown: str) -> str:
    begin, end = f"<!-- published by {source}: begin -->", f"<!-- published by {source}: end -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    return text.rstrip("\n") + f"\n\n## Published figures\n\n{block}\n"


def publish(bundle: str, source: str, figures: dict, results: str, command: str | None = None,
            readme: str | None = None, date: str | None = None, machine_text: str | None = None,
            bundles_dir: Path | None = None) -> dict:
    """Write ``figures`` (name -> number or {structure: number}) measured by ``source`` (a
    benchmarks/ file, repository-relative) into the bundle; returns the new ``eval_metrics``."""
    root = (bundles_dir or REPO / "bundles") / bundle
    record = {"results": results, "measured": date or today(), "machine": machine_text or machine()}
    if command:
        record["command"] = command
    meta_path = root / "configs" / "metadata.json"
    text = meta_path.read_text()
    eval_metrics = merged_eval_metrics(json.loads(text).get("eval_metrics", {}), source, figures, record)
    meta_path.write_text(splice_eval_metrics(text, eval_metrics))
    if readme is not None:
        stamp = f"*Measured {record['measured']} on {record['machine']}; `{command or source}`; results: `{results}`.*"
        readme_path = root / "docs" / "README.md"
        readme_path.write_text(replace_readme_block(readme_path.read_text(), source, readme.strip() + "\n\n" + stamp))
    return eval_metrics


def rounded(value, digits: int = 3):
    """Figures as published: floats rounded, dicts rounded value by value."""
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    return round(float(value), digits)
